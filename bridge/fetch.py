"""Download one image over HTTP(S) with hard limits on time, size and redirects.

Every failure is a FetchError with a one-line message naming the cause, so the record can go to the dead
letter topic with a reason a person can act on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from bridge.errors import FetchError

_SCHEMES = ("http", "https")
_CHUNK_SIZE = 64 * 1024

# (prefix, offset, format): file signatures of the formats the bridge accepts.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"WEBP", 8, "webp"),  # after b"RIFF" and a 4-byte length, checked below
    (b"BM", 0, "bmp"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
)


def sniff_image_type(data: bytes) -> str | None:
    """The image format named by the first bytes ("png", "jpeg", "gif", "webp", "bmp", "tiff"), or None."""
    for magic, offset, name in _MAGIC:
        if data[offset:offset + len(magic)] == magic and (name != "webp" or data[:4] == b"RIFF"):
            return name
    return None


@dataclass(frozen=True)
class FetchLimits:
    connect_timeout: float = 3.0  # seconds to open a connection
    read_timeout: float = 10.0  # seconds of silence from the server
    deadline: float = 15.0  # seconds for the whole fetch, including redirects and a slowly trickling body
    max_bytes: int = 10 * 2**20
    max_redirects: int = 5


class ImageFetcher:
    """Fetches image bytes through one pooled session; safe to call from pool_size threads at once."""

    def __init__(self, limits: FetchLimits = FetchLimits(), pool_size: int = 16,
                 session: requests.Session | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_maxsize=pool_size)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        session.max_redirects = limits.max_redirects
        self._session = session
        # No single socket wait may outlast the whole deadline.
        self._timeout = (min(limits.connect_timeout, limits.deadline), min(limits.read_timeout, limits.deadline))

    def fetch(self, url: str) -> bytes:
        """The body at url, checked to be an image within the limits; raises FetchError otherwise."""
        _check_url(url)
        deadline_at = self._clock() + self._limits.deadline

        def check_hop(response: requests.Response, *args: object, **kwargs: object) -> None:
            # Called by requests for every response, redirects included.
            if response.is_redirect:
                target = urljoin(response.url, response.headers["Location"])
                scheme = urlsplit(target).scheme
                if scheme.lower() not in _SCHEMES:
                    response.close()
                    raise _error(f"redirected to unsupported URL scheme {scheme!r} ({target}) from {url}")
            if self._clock() > deadline_at:
                response.close()
                raise self._deadline_error(url)

        try:
            response = self._session.get(url, stream=True, timeout=self._timeout, hooks={"response": check_hop})
            with response:
                self._check_headers(response, url)
                data = self._read_body(response, url, deadline_at)
        except requests.RequestException as exc:
            raise _error(self._describe(exc, url)) from exc

        if not data:
            raise _error(f"empty response from {url}")
        if sniff_image_type(data) is None:
            raise _error(f"not an image (unrecognised content) at {url}")
        return data

    def close(self) -> None:
        """Close pooled connections (only of a session this fetcher created)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_headers(self, response: requests.Response, url: str) -> None:
        status = response.status_code
        if not 200 <= status < 300:
            raise _error(f"HTTP {status} {response.reason or ''} from {url}")
        content_type = response.headers.get("Content-Type")
        if content_type:
            media_type = content_type.split(";")[0].strip().lower()
            if not (media_type.startswith("image/") or media_type == "application/octet-stream"):
                raise _error(f"not an image (content type {media_type}) at {url}")
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self._limits.max_bytes:
            raise _error(f"image larger than {self._limits.max_bytes} bytes (Content-Length {length}) at {url}")

    def _read_body(self, response: requests.Response, url: str, deadline_at: float) -> bytes:
        # The size cap holds while streaming: Content-Length may be absent, wrong, or of a compressed body.
        body = bytearray()
        for chunk in response.iter_content(chunk_size=_CHUNK_SIZE):
            body += chunk
            if len(body) > self._limits.max_bytes:
                raise _error(f"image larger than {self._limits.max_bytes} bytes at {url}")
            if self._clock() > deadline_at:
                raise self._deadline_error(url)
        return bytes(body)

    def _deadline_error(self, url: str) -> FetchError:
        return _error(f"timed out after {self._limits.deadline:g} s (the fetch deadline) fetching {url}")

    def _describe(self, exc: requests.RequestException, url: str) -> str:
        request_url = exc.request.url if exc.request is not None and exc.request.url else url
        host = urlsplit(request_url).hostname or request_url
        cause = _root_cause(exc)
        if isinstance(exc, requests.TooManyRedirects):
            return f"too many redirects (more than {self._limits.max_redirects}) from {url}"
        if isinstance(exc, requests.ConnectTimeout):
            return f"timed out after {self._timeout[0]:g} s connecting to {host}"
        # A read timeout while streaming the body arrives as a ConnectionError wrapping urllib3's error.
        if isinstance(exc, requests.ReadTimeout) or isinstance(cause, (ReadTimeoutError, TimeoutError)):
            return f"timed out after {self._timeout[1]:g} s waiting for {host}"
        if isinstance(exc, requests.exceptions.SSLError):
            return f"TLS error with host {host}: {_reason(cause)}"
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return f"connection to host {host} broke while reading {url}: {_reason(cause)}"
        if isinstance(exc, requests.ConnectionError):
            return f"cannot connect to host {host}: {_reason(cause)}"
        return f"cannot fetch {url}: {_reason(cause)}"


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise _error(f"invalid URL {url!r}: {exc}") from exc
    if not parts.scheme:
        raise _error(f"not a URL (no http:// or https://): {url!r}")
    if parts.scheme.lower() not in _SCHEMES:
        raise _error(f"unsupported URL scheme {parts.scheme!r} in {url!r}")
    if not host:
        raise _error(f"URL has no host: {url!r}")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error under requests' and urllib3's wrappers (e.g. ConnectionRefusedError)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        nxt = reason if isinstance(reason, BaseException) else inner or exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _error(message: str) -> FetchError:
    return FetchError(" ".join(message.split()))
