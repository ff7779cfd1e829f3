"""Log lines: one per event, as text (default) or as one JSON object each; URLs redacted in both.

Whichever library logged it (the bridge, urllib3, librdkafka through bridge.librdkafka), no user info or
query string reaches a log line. A traceback is folded onto its line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from bridge.redact import redact_text


class OneLineFormatter(logging.Formatter):
    """time level logger message, with any traceback folded onto the same line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record).replace("\n", " | "))


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message"[, "exception"]}: time in UTC, ISO 8601 with milliseconds."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        if record.exc_info:
            line["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at `level` as `log_format` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else OneLineFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("urllib3").setLevel(max(logging.getLevelName(level), logging.INFO))  # no per-request lines
