"""A real HTTP server on 127.0.0.1 serving test images, plus the misbehaving endpoints a fetcher must survive.

Routes:
    /<name>                  a registered file (add()) with its content type
    /status/<code>           an empty answer with that HTTP status
    /slow/<seconds>/<name>   the file, after a delay
    /redirect/<n>/<name>     a chain of n redirects ending at the file
    /big/<bytes>             that many bytes labelled image/png, streamed
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"  # keep-alive, so a pooled client reuses connections as with a real web server

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = self.path.lstrip("/").split("/")
        try:
            if parts[0] == "status":
                self._send(int(parts[1]), b"", "text/plain")
            elif parts[0] == "slow":
                time.sleep(float(parts[1]))
                self._send_file("/".join(parts[2:]))
            elif parts[0] == "redirect":
                remaining = int(parts[1])
                target = "/".join(parts[2:])
                location = f"/redirect/{remaining - 1}/{target}" if remaining > 1 else f"/{target}"
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif parts[0] == "big":
                self._send_big(int(parts[1]))
            else:
                self._send_file("/".join(parts))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on purpose (size cap, timeout)

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

    def _send_big(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Connection", "close")
        self.end_headers()  # no Content-Length: the client must cap the body while streaming
        self.close_connection = True
        chunk = b"\x89PNG\r\n\x1a\n" + bytes(65536 - 8)
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            self.wfile.write(piece)
            sent += len(piece)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 stalls bursts of concurrent fetches for a second
    files: dict[str, tuple[bytes, str]]


class ImageServer:
    """Start with start(), register files with add(), build URLs with url(); stop() shuts it down."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.files = {}
        self._thread = threading.Thread(target=self._server.serve_forever, name="image-server", daemon=True)

    def start(self) -> "ImageServer":
        self._thread.start()
        return self

    def stop(self) -> None:
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
