"""The bridge's messages: an input record, its parsed request, and the two outcomes (result or dead letter).

Formats (README "Messages"):
    input        a bare URL, or JSON {"url": "...", "id": "..."}; the key is passed through
    output       {"id", "url", "predictions": [{"label", "score"}], "model": {"name", "version", "signature"},
                  "source": {"topic", "partition", "offset"}, "latency_ms"}
    dead letter  {"error": {"stage", "type", "message"}, "source": {...}, "value": original (text, or base64)}
                 with headers tfs-bridge.error.stage / .type / .message
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bridge.errors import InvalidRecord, RecordError

ERROR_HEADER_PREFIX = "tfs-bridge.error."
MAX_HEADER_MESSAGE = 500
# A dead letter must always fit in a Kafka record (message.max.bytes is 1 MB by default): an oversized input value
# is cut, and the dead letter says so, rather than blocking its partition.
MAX_DEAD_LETTER_VALUE = 64 * 1024


@dataclass(frozen=True)
class Record:
    """One consumed input record, detached from confluent-kafka's Message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def from_message(cls, message: Any) -> Record:
        return cls(message.topic(), message.partition(), message.offset(), message.key(), message.value())

    def source(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True)
class ImageRequest:
    """What an input record asks for: classify the image at `url`, answering with `id`."""

    id: str
    url: str


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
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.strip():
            raise InvalidRecord("JSON value has no \"url\" string")
        request_id = body.get("id")
        request = ImageRequest(str(request_id) if request_id is not None else default_id, url.strip())
    else:
        request = ImageRequest(default_id, text)
    parts = urlsplit(request.url)
    if not parts.scheme or not parts.netloc or any(c.isspace() for c in request.url):
        raise InvalidRecord(f"not a URL: {_shorten(request.url)}")
    return request


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


@dataclass(frozen=True)
class Result:
    """A classified record, ready to be written to the output topic."""

    record: Record
    request: ImageRequest
    predictions: list[Prediction]
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
        return cls(record, error.stage, error.error_type, str(error))

    def value(self) -> bytes:
        original = self.record.value
        letter: dict[str, Any] = {
            "error": {"stage": self.stage, "type": self.error_type, "message": self.message[:MAX_DEAD_LETTER_VALUE]},
            "source": self.record.source(),
            "value": original_value(original[:MAX_DEAD_LETTER_VALUE] if original else original),
        }
        if original is not None and len(original) > MAX_DEAD_LETTER_VALUE:
            letter["truncated"] = {"original_bytes": len(original), "kept_bytes": MAX_DEAD_LETTER_VALUE}
        return json.dumps(letter).encode()

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (ERROR_HEADER_PREFIX + "stage", self.stage.encode()),
            (ERROR_HEADER_PREFIX + "type", self.error_type.encode()),
            (ERROR_HEADER_PREFIX + "message", self.message[:MAX_HEADER_MESSAGE].encode()),
        ]


Outcome = Result | DeadLetter


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
