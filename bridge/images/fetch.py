"""Download one image over HTTP(S), safely: only to addresses the address policy allows, within a wall-clock
deadline, a byte cap and a redirect limit.

Each hop (the URL, then every redirect) is parsed, its host resolved once, every resolved address checked by the
policy, and the connection made to the checked address (bridge.images.http_transport). The deadline covers resolution,
connecting, redirects, headers and body together, however slowly the bytes come. Every failure is a FetchError
with a one-line message naming the cause, with credentials and query strings removed; a refused address is a
FetchBlocked whose message is the same whether or not anything listens there. .netrc files and proxy
variables are never read: a proxy would resolve hosts itself, out of the policy's reach.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from urllib3.exceptions import ReadTimeoutError

from bridge.images.address_policy import AddressPolicy, IPAddress, parse_host_address
from bridge.errors import FetchBlocked, FetchError
from bridge.images.http_transport import FetchScope, PinnedAdapter, SocketReaper, failure_reason, root_cause
from bridge.redact import redact_url

_SCHEMES = ("http", "https")
_CHUNK_SIZE = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)
_HEADERS = {"User-Agent": "tfs-bridge", "Accept": "image/*"}

# (prefix, offset, format): file signatures of the formats the bridge accepts. Not TIFF: see preprocess.FORMATS.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"WEBP", 8, "webp"),  # after b"RIFF" and a 4-byte length, checked below
    (b"BM", 0, "bmp"),
)

Resolver = Callable[[str, int], Sequence[IPAddress]]


def sniff_image_type(data: bytes) -> str | None:
    """The image format named by the first bytes ("png", "jpeg", "gif", "webp", "bmp"), or None."""
    for magic, offset, name in _MAGIC:
        if data[offset:offset + len(magic)] == magic and (name != "webp" or data[:4] == b"RIFF"):
            return name
    return None


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for host (IPv4 and IPv6, zone ids dropped)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


@dataclass(frozen=True)
class FetchLimits:
    connect_timeout: float = 3.0  # seconds to open a connection
    read_timeout: float = 10.0  # seconds of silence from the server
    deadline: float = 15.0  # seconds for the whole fetch: resolving, redirects, headers and a trickling body
    max_bytes: int = 10 * 2**20
    max_redirects: int = 5


class ImageFetcher:
    """Fetches image bytes through one pooled session; safe to call from pool_size threads at once."""

    def __init__(self, limits: FetchLimits = FetchLimits(), policy: AddressPolicy = AddressPolicy(),
                 pool_size: int = 16, session: requests.Session | None = None,
                 resolver: Resolver = system_resolver) -> None:
        """session: for tests, a session whose transport never opens a socket; it then gets no pinning."""
        self._limits = limits
        self._policy = policy
        self._resolver = resolver
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = PinnedAdapter(pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        session.trust_env = False  # no .netrc credentials, no proxies from the environment
        self._session = session
        self._reaper = SocketReaper()
        self._resolving = concurrent.futures.ThreadPoolExecutor(pool_size, thread_name_prefix="resolve")

    def fetch(self, url: str) -> bytes:
        """The body at url, checked to be an image within the limits; raises FetchError otherwise."""
        scope = self._reaper.open(time.monotonic() + self._limits.deadline)
        try:
            data = self._follow(url, scope)
        finally:
            self._reaper.close(scope)
        if scope.expired:  # the reaper cut the connection: what was read may be a truncated answer
            raise self._deadline_error(url)
        if not data:
            raise _error(f"empty response from {redact_url(url)}")
        if sniff_image_type(data) is None:
            raise _error(f"not an image (unrecognised content) at {redact_url(url)}")
        return data

    def close(self) -> None:
        """Close pooled connections (only of a session this fetcher created)."""
        self._resolving.shutdown(wait=False, cancel_futures=True)
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _follow(self, url: str, scope: FetchScope) -> bytes:
        target = url
        for _hop in range(self._limits.max_redirects + 1):
            host, port = _host_and_port(target)
            scope.host, scope.address = host, str(self._checked_address(host, port, url, scope))
            try:
                response = self._session.get(target, stream=True, allow_redirects=False, headers=_HEADERS,
                                             timeout=self._timeouts(scope))
                with response:
                    if response.status_code in _REDIRECTS and response.headers.get("Location"):
                        target = _redirect_target(target, response.headers["Location"])
                        continue
                    self._check_headers(response, url)
                    return self._read_body(response, url, scope)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                if scope.expired or time.monotonic() >= scope.deadline:
                    raise self._deadline_error(url) from None
                raise _error(self._describe(exc, target)) from None
            except ValueError:  # requests parses a redirect's Location even when it does not follow it
                raise _error(f"redirected to an invalid URL from {redact_url(target)}") from None
        raise _error(f"too many redirects (more than {self._limits.max_redirects}) from {redact_url(url)}")

    def _checked_address(self, host: str, port: int, url: str, scope: FetchScope) -> IPAddress:
        """The address to connect to for host: every address it resolves to must be allowed by the policy."""
        literal = parse_host_address(host)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            future = self._resolving.submit(self._resolver, host, port)
            try:
                addresses = future.result(timeout=max(0.0, scope.deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                raise self._deadline_error(url) from None
            except (OSError, ValueError):
                raise _error(f"cannot resolve host {host}") from None
        if not addresses:
            raise _error(f"cannot resolve host {host}")
        for address in addresses:
            if not self._policy.check(host, address).allowed:
                # The same words whatever the address and whether anything listens there: nothing to probe with.
                raise FetchBlocked(f"blocked: {host} is not an address the bridge may fetch from "
                                   "(see --fetch-allow)")
        return addresses[0]

    def _timeouts(self, scope: FetchScope) -> tuple[float, float]:
        remaining = max(0.01, scope.deadline - time.monotonic())
        return min(self._limits.connect_timeout, remaining), min(self._limits.read_timeout, remaining)

    def _check_headers(self, response: requests.Response, url: str) -> None:
        status = response.status_code
        if not 200 <= status < 300:
            raise _error(f"HTTP {status} {response.reason or ''} from {redact_url(url)}")
        content_type = response.headers.get("Content-Type")
        if content_type:
            media_type = content_type.split(";")[0].strip().lower()
            if not (media_type.startswith("image/") or media_type == "application/octet-stream"):
                raise _error(f"not an image (content type {media_type[:60]}) at {redact_url(url)}")
        length = response.headers.get("Content-Length", "").strip()
        if length.isdigit() and int(length) > self._limits.max_bytes:
            raise _error(f"image larger than {self._limits.max_bytes} bytes (Content-Length {length}) at "
                         f"{redact_url(url)}")

    def _read_body(self, response: requests.Response, url: str, scope: FetchScope) -> bytes:
        # The size cap holds while streaming: Content-Length may be absent, wrong, or of a compressed body.
        body = bytearray()
        for chunk in response.iter_content(chunk_size=_CHUNK_SIZE):
            body += chunk
            if len(body) > self._limits.max_bytes:
                raise _error(f"image larger than {self._limits.max_bytes} bytes at {redact_url(url)}")
            if time.monotonic() >= scope.deadline:
                raise self._deadline_error(url)
        return bytes(body)

    def _deadline_error(self, url: str) -> FetchError:
        return _error(f"timed out after {self._limits.deadline:g} s (the fetch deadline) fetching {redact_url(url)}")

    def _describe(self, exc: BaseException, url: str) -> str:
        host = urlsplit(url).hostname or "the host"
        cause = root_cause(exc)
        if isinstance(exc, requests.ConnectTimeout):
            return f"timed out after {self._limits.connect_timeout:g} s connecting to {host}"
        # A read timeout while streaming the body arrives as a ConnectionError wrapping urllib3's error.
        if isinstance(exc, requests.ReadTimeout) or isinstance(cause, (ReadTimeoutError, TimeoutError)):
            return f"timed out after {self._limits.read_timeout:g} s waiting for {host}"
        if isinstance(exc, requests.exceptions.SSLError):
            return f"TLS error with host {host}: {failure_reason(cause)}"
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return f"connection to host {host} broke while reading {redact_url(url)}"
        if isinstance(exc, requests.ConnectionError):
            return f"cannot connect to host {host}: {failure_reason(cause)}"
        return f"cannot fetch {redact_url(url)}: {failure_reason(cause)}"


def _host_and_port(url: str) -> tuple[str, int]:
    """The URL's host (lower case, no brackets) and port, after checking scheme and host; FetchError if not."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise _error(f"invalid URL {shown!r}: {exc}") from None
    if not parts.scheme:
        raise _error(f"not a URL (no http:// or https://): {shown!r}")
    if parts.scheme.lower() not in _SCHEMES:
        raise _error(f"unsupported URL scheme {parts.scheme[:20]!r} in {shown!r}")
    if not host:
        raise _error(f"URL has no host: {shown!r}")
    return host.rstrip("."), port or (443 if parts.scheme.lower() == "https" else 80)


def _redirect_target(current: str, location: str) -> str:
    try:
        target = urljoin(current, location.strip())
        scheme = urlsplit(target).scheme
    except ValueError:
        raise _error(f"redirected to an invalid URL from {redact_url(current)}") from None
    if scheme.lower() not in _SCHEMES:
        raise _error(f"redirected to unsupported URL scheme {scheme[:20]!r} from {redact_url(current)}")
    return target


def _error(message: str) -> FetchError:
    return FetchError(" ".join(message.split()))
