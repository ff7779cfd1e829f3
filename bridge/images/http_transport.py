"""The HTTP transport under the fetcher: connections go only where the fetcher decided, and no socket outlives
its fetch's deadline.

- FetchScope: one fetch's deadline, the address its next new connection must go to, and the sockets it uses.
- PinnedAdapter: a requests adapter whose urllib3 connections connect to the scope's checked address instead of
  resolving the host again (so DNS rebinding cannot swap it); TLS still sends SNI and verifies the certificate for
  the host name. A connection opened outside a scope is refused.
- SocketReaper: one thread that shuts down the sockets of every scope whose deadline has passed. A server that
  trickles its headers or body a byte at a time then fails the blocked read at once, whatever the timeouts say.
- DeadlineAdapter: a pooling requests adapter whose sockets are under the calling thread's scope, without pinning
  (the REST model backend: an address the user chose).
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

_current = threading.local()


@dataclass(eq=False)
class FetchScope:
    deadline: float  # time.monotonic() at which the scope's sockets are shut down
    host: str = ""  # the URL host the address was checked for
    address: str | None = None  # where a new connection to `host` must go
    expired: bool = False  # set by the reaper when it shut the sockets down
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shut(sock)
            elif sock not in self._sockets:
                self._sockets.append(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        # On the raw socket: an SSLSocket's own shutdown() also tears down its TLS state under the reader.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class SocketReaper:
    """Expires fetch scopes at their deadlines, from one daemon thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, name: str = "fetch-deadlines") -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, FetchScope]] = []
        self._order = itertools.count()
        self._open: set[FetchScope] = set()
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def open(self, deadline: float) -> FetchScope:
        """A scope for the calling thread's fetch, expired at `deadline` (time.monotonic())."""
        scope = FetchScope(deadline)
        with self._wake:
            self._open.add(scope)
            heapq.heappush(self._heap, (deadline, next(self._order), scope))
            self._wake.notify()
        _current.scope = scope
        return scope

    def close(self, scope: FetchScope) -> None:
        """The fetch is over: its sockets (back in the pool, or closed) are no longer watched."""
        _current.scope = None
        with self._wake:
            self._open.discard(scope)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][2] not in self._open:
                    heapq.heappop(self._heap)  # closed in time
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, _, scope = self._heap[0]
                wait = deadline - self._clock()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._open.discard(scope)
            scope.expire()


def root_cause(exc: BaseException) -> BaseException:
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


def failure_reason(exc: BaseException) -> str:
    """A few words for a connection failure: the OS's reason, or the error's type."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__  # not str(exc): urllib3 puts the connection object and URL in its messages


def current_scope() -> FetchScope | None:
    return getattr(_current, "scope", None)


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


class _Watched:
    """Mixin for urllib3 connections: the socket is watched by the scope of the request that uses it."""

    _raw_socket: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        self._watch(sock)
        return sock

    def _watch(self, sock: socket.socket) -> None:
        self._raw_socket = sock
        scope = current_scope()
        if scope is not None:
            scope.watch(sock)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        # A reused keep-alive connection was opened by an earlier request: put it under this one's deadline too.
        scope = current_scope()
        if scope is not None and self._raw_socket is not None:
            scope.watch(self._raw_socket)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _Pinned(_Watched):
    """Mixin for urllib3 connections: connect to the scope's checked address; watch the socket for the scope."""

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        scope = current_scope()
        if scope is None or scope.address is None or scope.host != _normal_host(self.host):
            raise NewConnectionError(self, "refusing a connection the fetcher did not check")  # type: ignore[arg-type]
        try:
            sock = socket.create_connection((scope.address, self.port), self.timeout,
                                            source_address=self.source_address)
            for option in self.socket_options or ():
                sock.setsockopt(*option)
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connecting to {self.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"failed to connect: {exc}") from exc  # type: ignore[arg-type]
        self._watch(sock)
        return sock


class PinnedHTTPConnection(_Pinned, HTTPConnection):
    pass


class PinnedHTTPSConnection(_Pinned, HTTPSConnection):
    pass


class PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


class _ScopedAdapter(HTTPAdapter):
    """A pooling requests adapter whose pools make the connections of `pools` (by URL scheme)."""

    pools: dict[str, type[HTTPConnectionPool]] = {}

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self.pools)


class PinnedAdapter(_ScopedAdapter):
    """A pooling requests adapter whose connections are pinned to the current scope's checked address."""

    pools = {"http": PinnedHTTPConnectionPool, "https": PinnedHTTPSConnectionPool}


class WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


class DeadlineAdapter(_ScopedAdapter):
    """A pooling requests adapter whose sockets are shut down when the calling thread's scope expires."""

    pools = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}
