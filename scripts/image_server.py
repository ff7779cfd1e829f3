"""A real HTTP server on 127.0.0.1 serving test images, plus the misbehaving endpoints a fetcher must survive.

Routes:
    /<name>                           a registered file (add()) with its content type
    /status/<code>                    an empty answer with that HTTP status
    /slow/<seconds>/<name>            the file, after a delay
    /redirect/<n>/<name>              a chain of n redirects ending at the file
    /big/<bytes>                      that many bytes labelled image/png, streamed
    /trickle/<seconds>/<name>         the file's headers at once (real Content-Length), then its body
                                      one byte every <seconds>
    /slow-headers/<seconds>[/<name>]  status line and headers one byte every <seconds>, then the body at
                                      once (the file, or a bare PNG signature labelled image/png)
    /lying-length/<bytes>             Content-Length <bytes>, image/png, a few PNG bytes, then nothing more
                                      on an open connection until the client hangs up (at most 120 s)
    /redirect-to?url=<url>            302 to the percent-decoded <url>, verbatim (any host, or malformed)
    /loop/<n>                         302 to itself, forever (<n> only tells loops apart)
    /as/<content-type>/<name>         the file labelled with the percent-decoded <content-type>

Every request is counted by path (hits()). Slow routes end early when the server stops.
"""

from __future__ import annotations

import collections
import select
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LYING_LENGTH_HOLD_SECONDS = 120.0


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"  # keep-alive, so a pooled client reuses connections as with a real web server
    # Headers and body go out in two writes: with Nagle's algorithm on, the body waits for the client's delayed
    # ACK of the headers (40 ms on Linux) on every keep-alive request. Web servers set TCP_NODELAY too.
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.count(self.path)
        url = urlsplit(self.path)
        parts = url.path.lstrip("/").split("/")
        try:
            if parts[0] == "status":
                self._send(int(parts[1]), b"", "text/plain")
            elif parts[0] == "slow":
                if self._pause(float(parts[1])):
                    self._send_file("/".join(parts[2:]))
            elif parts[0] == "redirect":
                remaining = int(parts[1])
                target = "/".join(parts[2:])
                self._redirect(f"/redirect/{remaining - 1}/{target}" if remaining > 1 else f"/{target}")
            elif parts[0] == "big":
                self._send_big(int(parts[1]))
            elif parts[0] == "trickle":
                self._send_trickle(float(parts[1]), "/".join(parts[2:]))
            elif parts[0] == "slow-headers":
                self._send_slow_headers(float(parts[1]), "/".join(parts[2:]))
            elif parts[0] == "lying-length":
                self._send_lying_length(int(parts[1]))
            elif parts[0] == "redirect-to":
                targets = parse_qs(url.query).get("url")
                if targets:
                    self._redirect(targets[0])
                else:
                    self._send(400, b"missing ?url=", "text/plain")
            elif parts[0] == "loop":
                self._redirect(self.path)
            elif parts[0] == "as":
                entry = self.server.files.get("/".join(parts[2:]))
                if entry is None:
                    self._send(404, b"not found", "text/plain")
                else:
                    self._send(200, entry[0], unquote(parts[1]))
            else:
                self._send_file("/".join(parts))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up on purpose (size cap, timeout)

    def _pause(self, seconds: float) -> bool:
        """Sleep; False (and close the connection afterwards) if the server stopped meanwhile."""
        if self.server.stopping.wait(seconds):
            self.close_connection = True
            return False
        return True

    def _send_file(self, name: str) -> None:
        entry = self.server.files.get(name)
        if entry is None:
            self._send(404, b"not found", "text/plain")
        else:
            self._send(200, *entry)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_big(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Connection", "close")
        self.end_headers()  # no Content-Length: the client must cap the body while streaming
        self.close_connection = True
        chunk = PNG_SIGNATURE + bytes(65536 - 8)
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            self.wfile.write(piece)
            sent += len(piece)

    def _send_trickle(self, seconds_per_byte: float, name: str) -> None:
        entry = self.server.files.get(name)
        if entry is None:
            self._send(404, b"not found", "text/plain")
            return
        body, content_type = entry
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for index in range(len(body)):
            if not self._pause(seconds_per_byte):
                return
            self.wfile.write(body[index:index + 1])

    def _send_slow_headers(self, seconds_per_byte: float, name: str) -> None:
        entry = self.server.files.get(name) if name else (PNG_SIGNATURE, "image/png")
        if entry is None:
            self._send(404, b"not found", "text/plain")
            return
        body, content_type = entry
        head = (f"{self.protocol_version} 200 OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
        self.close_connection = True
        for index in range(len(head)):
            if not self._pause(seconds_per_byte):
                return
            self.wfile.write(head[index:index + 1])
        self.wfile.write(body)

    def _send_lying_length(self, claimed: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(claimed))
        self.end_headers()
        self.wfile.write(PNG_SIGNATURE + b"\x00\x00\x00\rIHDR")
        self.close_connection = True
        deadline = time.monotonic() + LYING_LENGTH_HOLD_SECONDS
        while not self.server.stopping.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            if readable and not self.connection.recv(4096):  # EOF: the client hung up
                return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 stalls bursts of concurrent fetches for a second

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, tuple[bytes, str]] = {}
        self.stopping = threading.Event()
        self.hits: collections.Counter[str] = collections.Counter()
        self.hits_lock = threading.Lock()

    def count(self, path: str) -> None:
        with self.hits_lock:
            self.hits[path] += 1


class ImageServer:
    """Start with start(), register files with add(), build URLs with url(); stop() shuts it down."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, name="image-server", daemon=True)

    def start(self) -> "ImageServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests and make slow handlers end their responses early."""
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, name: str, body: bytes, content_type: str) -> str:
        self._server.files[name] = (body, content_type)
        return self.url(name)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def hits(self, path_prefix: str = "") -> int:
        """Requests so far whose path (with query) starts with `path_prefix`; the leading "/" is optional."""
        prefix = "/" + path_prefix.lstrip("/")
        with self._server.hits_lock:
            return sum(count for path, count in self._server.hits.items() if path.startswith(prefix))

    def reset_hits(self) -> None:
        with self._server.hits_lock:
            self._server.hits.clear()
