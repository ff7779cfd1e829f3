"""A dead letter read back from Kafka: what failed, and the original record it keeps (bridge.records' format).

The dead-letter topic is untrusted: anyone who may write to it may write anything. read_letter takes any bytes and
either returns a Letter or raises UnreadableLetter with a short reason; nothing else escapes it. A Letter whose
original cannot be restored (value cut, headers lost, a field malformed) carries the reason as `problem`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from bridge.records import REDRIVE_COUNT_HEADER, Header

_COUNT = re.compile(rb"[0-9]{1,9}")


class UnreadableLetter(ValueError):
    """The bytes are not a dead letter of the bridge's: not JSON, or no error stage and type."""


@dataclass(frozen=True)
class Letter:
    """A dead letter: where and how its record failed, and the original value and headers it keeps."""

    stage: str
    error_type: str
    value: bytes | None = None
    headers: tuple[Header, ...] = ()
    redrives: int = 0  # how often the original was redriven already (its REDRIVE_COUNT_HEADER)
    source_topic: str | None = None
    source_partition: int | None = None
    problem: str | None = None  # why the original cannot be sent back as it was; None if it can

    def redriven_headers(self) -> list[Header]:
        """The original headers with the redrive count one higher."""
        return [(name, value) for name, value in self.headers if name != REDRIVE_COUNT_HEADER] + [
            (REDRIVE_COUNT_HEADER, str(self.redrives + 1).encode("ascii"))]


def read_letter(data: bytes | None) -> Letter:
    """The dead letter in `data` (a dead-letter record's value); UnreadableLetter if it is not one."""
    body = _json_object(data)
    error = body.get("error")
    stage = error.get("stage") if isinstance(error, dict) else None
    error_type = error.get("type") if isinstance(error, dict) else None
    if not isinstance(stage, str) or not isinstance(error_type, str):
        raise UnreadableLetter("no error stage and type")
    topic, partition = _source(body.get("source"))
    letter = Letter(stage, error_type, source_topic=topic, source_partition=partition)
    try:
        value = _original(body)
        headers = _headers(body)
        redrives = _redrives(headers)
    except ValueError as exc:
        return replace(letter, problem=str(exc))
    return replace(letter, value=value, headers=headers, redrives=redrives)


def _json_object(data: bytes | None) -> dict[str, Any]:
    if not data:
        raise UnreadableLetter("empty")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError):  # JSONDecodeError is a ValueError
        raise UnreadableLetter("not JSON") from None
    except RecursionError:
        raise UnreadableLetter("not JSON (nested too deeply)") from None
    if not isinstance(body, dict):
        raise UnreadableLetter("not a JSON object")
    return body


def _source(source: Any) -> tuple[str | None, int | None]:
    """The input topic and partition the record came from, if the letter says so plausibly."""
    if not isinstance(source, dict):
        return None, None
    topic, partition = source.get("topic"), source.get("partition")
    if not isinstance(topic, str) or not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
        return None, None
    return topic, partition


def _original(body: dict[str, Any]) -> bytes | None:
    """The original value; ValueError if it was cut or is malformed."""
    if body.get("truncated") is not None:
        raise ValueError("value truncated")
    if "value" not in body:
        raise ValueError("no value")
    return _decoded(body["value"], "value")


def _decoded(field: Any, what: str) -> bytes | None:
    """null, text, or {"base64": ...} (bridge.records.original_value) as bytes; ValueError if malformed."""
    if field is None:
        return None
    if isinstance(field, str):
        try:
            return field.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape
            raise ValueError(f"{what} malformed") from None
    if isinstance(field, dict) and set(field) == {"base64"} and isinstance(field["base64"], str):
        try:
            return base64.b64decode(field["base64"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{what} malformed") from None
    raise ValueError(f"{what} malformed")


def _headers(body: dict[str, Any]) -> tuple[Header, ...]:
    """The original headers (none in a letter older than the field); ValueError if lost or malformed."""
    if body.get("headers_lost") is not None:
        raise ValueError("headers lost")
    entries = body.get("headers", [])
    if not isinstance(entries, list):
        raise ValueError("headers malformed")
    headers = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError("headers malformed")
        try:
            entry[0].encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("headers malformed") from None
        headers.append((entry[0], _decoded(entry[1], "headers")))
    return tuple(headers)


def _redrives(headers: tuple[Header, ...]) -> int:
    """The highest redrive count among the headers (0 without one); ValueError if one is not a small number."""
    counts = []
    for name, value in headers:
        if name == REDRIVE_COUNT_HEADER:
            if value is None or not _COUNT.fullmatch(value):
                raise ValueError("redrive count malformed")
            counts.append(int(value))
    return max(counts, default=0)
