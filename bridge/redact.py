"""URLs as they may be shown: in logs, dead-letter messages and headers, without the secrets they can carry."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PATH_QUERY_IN_TEXT = re.compile(r"(?<![^\s'\"(])(/[^\s'\"?#]*)[?#][^\s'\")]*")  # e.g. a request line's target


def redact_url(url: str) -> str:
    """The URL without user info, query string and fragment (presigned URLs carry their signature there).

    Text that is not a parsable URL loses everything up to its last '@' and from its first '?' or '#'.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return _cut(url)
    if not parts.scheme or host is None:
        return _cut(url)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    hidden = "?…" if parts.query or parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) + hidden


def _cut(text: str) -> str:
    if "@" in text:
        scheme, sep, _ = text.partition("://")
        text = (scheme + sep if sep else "") + "…@" + text.rsplit("@", 1)[1]
    for mark in ("?", "#"):
        if mark in text:
            text = text.split(mark, 1)[0] + "?…"
    return text


def redact_text(text: str) -> str:
    """The text with every URL in it redacted (redact_url), and the query string cut from every bare path."""
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    return _PATH_QUERY_IN_TEXT.sub(lambda match: match.group(1) + "?…", text)
