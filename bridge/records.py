"""The bridge's messages: an input record, its parsed request, and the two outcomes (result or dead letter).

Formats (README "Messages"):
    input        a bare URL, or JSON {"url": "...", "id": "..."}; the key is passed through
    output       {"id", "url", "predictions": [{"label", "score"}], "model": {"name", "version", "signature"},
                  "source": {"topic", "partition", "offset"}, "latency_ms"}
    dead letter  {"error": {"stage", "type", "message"}, "source": {...}, "value": original (text, or base64)}
                 with headers tfs-bridge.error.stage / .type / .message, and the original key as its key.
                 What `tfs-bridge redrive` needs to send the original back (bridge.redrive), added when present:
                 "truncated": {"original_bytes", "kept_bytes"}   the value was cut (cannot be redriven)
                 "headers": [[name, value], ...]                 the original headers (value: text, base64 or
                                                                 null), redacted (redact_headers)
                 "headers_redacted": [name, ...]                 headers redaction dropped or changed
                 "headers_lost": reason                          the headers could not be kept (cannot be
                                                                 redriven): a name not UTF-8, or too large
                 Dead letters written before these fields existed have none: their value is redrivable, their
                 original headers unknown.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from bridge.errors import InvalidRecord, OutputError, RecordError
from bridge.redact import redact_text, redact_url

ERROR_HEADER_PREFIX = "tfs-bridge.error."
MAX_HEADER_MESSAGE = 500
# A dead letter must always fit in a Kafka record (message.max.bytes is 1 MB by default): an oversized input value
# is cut, and the dead letter says so, rather than blocking its partition.
MAX_DEAD_LETTER_VALUE = 64 * 1024
SHORT_DEAD_LETTER_VALUE = 1024
MAX_ID_CHARS = 1024
# librdkafka's default message.max.bytes; the producer refuses anything larger before sending it.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
_RECORD_OVERHEAD = 512  # record header, timestamps, lengths: generous, so the estimate never falls short
# How often `tfs-bridge redrive` has sent a record back to the input topic (ASCII decimal). The bridge keeps it
# with the other original headers in a dead letter, so the next redrive sees it.
REDRIVE_COUNT_HEADER = "tfs-bridge.redrive.count"
# A header named like one of these may carry a credential: a dead letter leaves it out ("auth" covers
# authorization, x-auth-token, oauth...).
SECRET_HEADER_NAME = re.compile(r"auth|cookie|token|secret|passw|pwd|api[-_.]?key|credential|signature|session",
                                re.IGNORECASE)

Header = tuple[str, bytes | None]


@dataclass(frozen=True)
class Record:
    """One consumed input record, detached from confluent-kafka's Message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None  # the record's Kafka timestamp, in seconds since the epoch
    headers: tuple[Header, ...] | None = ()  # None: the record has headers the client cannot read

    @classmethod
    def from_message(cls, message: Any) -> Record:
        kind, millis = message.timestamp()
        return cls(message.topic(), message.partition(), message.offset(), message.key(), message.value(),
                   millis / 1000 if kind != TIMESTAMP_NOT_AVAILABLE else None, _read_headers(message))

    def source(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True)
class ImageRequest:
    """What an input record asks for: classify the image at `url`, answering with `id`."""

    id: str
    url: str


def _read_headers(message: Any) -> tuple[Header, ...] | None:
    """The message's headers; None if confluent-kafka cannot read them (it raises SystemError for a header name
    that is not UTF-8). A message-like object without headers() has none."""
    read = getattr(message, "headers", None)
    if read is None:
        return ()
    try:
        return tuple((name, value) for name, value in read() or ())
    except Exception:  # noqa: BLE001 - outside the per-record isolation: unreadable headers must not stop the bridge
        return None


def redact_headers(headers: Iterable[Header]) -> tuple[list[Header], list[str]]:
    """The headers as a dead letter may show them, and the names of those dropped or changed: a header named like
    a secret (SECRET_HEADER_NAME) is dropped; a UTF-8 value loses what redact_text removes (URLs' user info and
    query strings); a binary or null value is kept as it is."""
    kept: list[Header] = []
    redacted: list[str] = []
    for name, value in headers:
        if SECRET_HEADER_NAME.search(name):
            redacted.append(name)
            continue
        if value is not None:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None and redact_text(text) != text:
                value = redact_text(text).encode("utf-8")
                redacted.append(name)
        kept.append((name, value))
    return kept, redacted


def parse_request(record: Record) -> ImageRequest:
    """Read a bare URL or JSON {"url", "id"} from the record value; InvalidRecord if it is neither."""
    if not record.value:
        raise InvalidRecord("empty value: expected a URL or JSON {\"url\": ...}")
    try:
        text = record.value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRecord("value is not UTF-8 text: expected a URL or JSON {\"url\": ...}") from None
    default_id = f"{record.topic}-{record.partition}-{record.offset}"
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRecord(f"invalid JSON: {exc}") from None
        except RecursionError:
            raise InvalidRecord("invalid JSON: nested too deeply") from None
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.strip():
            raise InvalidRecord("JSON value has no \"url\" string")
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, (str, int, float, bool)):
            raise InvalidRecord("JSON \"id\" must be a string or a number")
        request = ImageRequest(str(request_id) if request_id is not None else default_id, url.strip())
    else:
        request = ImageRequest(default_id, text)
    if len(request.id) > MAX_ID_CHARS:
        raise InvalidRecord(f"\"id\" is longer than {MAX_ID_CHARS} characters")
    if not _looks_like_url(request.url):
        raise InvalidRecord(f"not a URL: {_shorten(redact_url(request.url))}")
    return request


def _looks_like_url(text: str) -> bool:
    if any(c.isspace() or ord(c) < 0x20 for c in text):
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a malformed port or host
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket: http://[::1/cat.png
        return False
    return bool(parts.scheme) and bool(host)


@dataclass(frozen=True)
class ClassScore:
    """One of an image's best classes."""

    label: str
    score: float


@dataclass(frozen=True)
class Result:
    """A classified record, ready to be written to the output topic."""

    record: Record
    request: ImageRequest
    predictions: list[ClassScore]
    model_name: str
    model_version: int
    signature_name: str
    latency_ms: float

    def value(self) -> bytes:
        return json.dumps({
            "id": self.request.id,
            "url": self.request.url,
            "predictions": [{"label": p.label, "score": round(p.score, 6)} for p in self.predictions],
            "model": {"name": self.model_name, "version": self.model_version, "signature": self.signature_name},
            "source": self.record.source(),
            "latency_ms": round(self.latency_ms, 1),
        }).encode()


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be classified, with the reason; written to the dead-letter topic."""

    record: Record
    stage: str
    error_type: str
    message: str

    @classmethod
    def from_error(cls, record: Record, error: RecordError) -> DeadLetter:
        return cls(record, error.stage, error.error_type, redact_text(" ".join(str(error).split())))

    def value(self, keep_bytes: int = MAX_DEAD_LETTER_VALUE) -> bytes:
        """The dead letter's JSON; the original value is cut to keep_bytes (the letter says so)."""
        original = self.record.value
        letter: dict[str, Any] = {
            "error": {"stage": self.stage, "type": self.error_type, "message": self.message[:keep_bytes]},
            "source": self.record.source(),
            "value": original_value(original[:keep_bytes] if original else original),
        }
        if original is not None and len(original) > keep_bytes:
            letter["truncated"] = {"original_bytes": len(original), "kept_bytes": keep_bytes}
        letter.update(_kept_headers(self.record.headers, keep_bytes))
        return json.dumps(letter).encode()

    def headers(self) -> list[tuple[str, bytes]]:
        # "replace": a message may carry lone surrogates from a JSON value, which UTF-8 cannot encode.
        return [
            (ERROR_HEADER_PREFIX + "stage", self.stage.encode("utf-8", "replace")),
            (ERROR_HEADER_PREFIX + "type", self.error_type.encode("utf-8", "replace")),
            (ERROR_HEADER_PREFIX + "message", self.message[:MAX_HEADER_MESSAGE].encode("utf-8", "replace")),
        ]


def _kept_headers(headers: tuple[Header, ...] | None, keep_bytes: int) -> dict[str, Any]:
    """The dead letter's fields for the original headers: redacted, or why they are lost (more than keep_bytes of
    JSON, or unreadable); none for a record without headers."""
    if headers is None:
        return {"headers_lost": "the Kafka client cannot read them (a header name not UTF-8)"}
    if not headers:
        return {}
    kept, redacted = redact_headers(headers)
    encoded = [[name, original_value(value)] for name, value in kept]
    size = len(json.dumps(encoded))
    if size > keep_bytes:
        return {"headers_lost": f"{size} bytes of headers, more than the {keep_bytes} kept"}
    return {"headers": encoded, **({"headers_redacted": redacted} if redacted else {})}


Outcome = Result | DeadLetter


@dataclass(frozen=True)
class OutputMessage:
    """An outcome encoded for Kafka: the bytes to produce, and whether it is a result or a dead letter."""

    record: Record
    is_result: bool
    value: bytes
    headers: list[tuple[str, bytes]] | None = None
    failure: tuple[str, str] | None = None  # a dead letter's (stage, type)
    # The record's span (bridge.ops.tracing.RecordTrace) when tracing is on; its context is in `headers`.
    trace: Any = None

    def size(self) -> int:
        """An upper bound of its size as one Kafka record, as message.max.bytes counts it."""
        headers = sum(len(name) + len(value) for name, value in self.headers or ())
        return len(self.value) + len(self.record.key or b"") + headers + _RECORD_OVERHEAD


def encode(outcome: Outcome, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, trace: Any = None) -> OutputMessage:
    """The outcome as a Kafka record of at most max_bytes; a result that does not fit becomes a dead letter.
    trace: the record's span (bridge.ops.tracing.RecordTrace), its context written into the headers."""
    if isinstance(outcome, Result):
        message = OutputMessage(outcome.record, True, outcome.value(), _trace_headers(trace) or None, trace=trace)
        if message.size() <= max_bytes:
            return message
        outcome = DeadLetter.from_error(outcome.record, OutputError(
            f"result of {len(message.value)} bytes is larger than the largest Kafka message ({max_bytes} bytes)"))
    return encode_dead_letter(outcome, max_bytes, trace)


def encode_dead_letter(letter: DeadLetter, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                       trace: Any = None) -> OutputMessage:
    """The dead letter as a Kafka record, its original value cut further when even the usual cut is too large."""
    message = OutputMessage(letter.record, False, letter.value(), letter.headers() + _trace_headers(trace),
                            (letter.stage, letter.error_type), trace)
    return message if message.size() <= max_bytes else encode_short_dead_letter(letter, trace)


def encode_short_dead_letter(letter: DeadLetter, trace: Any = None) -> OutputMessage:
    """The dead letter in its smallest form: the original value cut to 1 KiB."""
    return OutputMessage(letter.record, False, letter.value(keep_bytes=SHORT_DEAD_LETTER_VALUE),
                         letter.headers() + _trace_headers(trace), (letter.stage, letter.error_type), trace)


def _trace_headers(trace: Any) -> list[tuple[str, bytes]]:
    """The record span's W3C trace context (traceparent, tracestate) as Kafka headers; none without tracing."""
    return list(trace.headers) if trace is not None else []


def original_value(value: bytes | None) -> str | dict[str, str] | None:
    """The input value as text, or {"base64": ...} when it is not UTF-8."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
