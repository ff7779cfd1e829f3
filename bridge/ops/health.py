"""The bridge's HTTP endpoints: /metrics for Prometheus, /livez and /readyz for an orchestrator.

- /livez answers 200 while the run loop keeps turning, paused or not, and while the bridge waits for the
  model server at start; 503 once the loop has not turned for `liveness_timeout` (it is stuck: restart it).
- /readyz answers 200 when the bridge can do its work: the model serves, the transactional producer is
  initialized, and the consumer is in its group (partitions assigned or being waited for). Otherwise 503 with
  {"ready": false, "reasons": [...]}: not a reason to restart, only to not count on this instance now.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class Health:
    """Liveness and readiness, as the run loop reports them. Thread-safe."""

    def __init__(self, liveness_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.liveness_timeout = liveness_timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._last_turn = clock()
        self._problems: dict[str, str] = {"model": "waiting for the model server", "kafka": "not started"}

    def beat(self) -> None:
        """The loop turned (or the bridge waited on purpose)."""
        with self._lock:
            self._last_turn = self.clock()

    def live(self) -> tuple[bool, str]:
        with self._lock:
            idle = self.clock() - self._last_turn
        if idle > self.liveness_timeout:
            return False, f"the run loop has not turned for {idle:.0f} s (limit {self.liveness_timeout:.0f} s)"
        return True, "ok"

    def problem(self, part: str, reason: str | None) -> None:
        """What keeps `part` (model, kafka) from being ready; None when it is."""
        with self._lock:
            if reason is None:
                self._problems.pop(part, None)
            else:
                self._problems[part] = reason

    def ready(self) -> tuple[bool, list[str]]:
        with self._lock:
            reasons = [f"{part}: {reason}" for part, reason in sorted(self._problems.items())]
        return not reasons, reasons


class HealthServer:
    """Serves /metrics, /livez and /readyz on a port, from a daemon thread."""

    def __init__(self, host: str, port: int, health: Health, registry: CollectorRegistry) -> None:
        handler = type("Handler", (_Handler,), {"health": health, "registry": registry})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("metrics on :%d/metrics, health on /livez and /readyz", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    health: Health
    registry: CollectorRegistry

    def log_message(self, *args: object) -> None:  # scrapes and probes every few seconds: not worth a line
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/livez":
            live, reason = self.health.live()
            self._send(200 if live else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
        elif path == "/readyz":
            ready, reasons = self.health.ready()
            body = json.dumps({"ready": ready, "reasons": reasons}).encode()
            self._send(200 if ready else 503, body, "application/json")
        else:
            self._send(404, b"not found: try /metrics, /livez or /readyz\n", "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
