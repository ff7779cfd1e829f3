"""The test OpenTelemetry Collector (scripts/otelcol.sh: OTLP receiver, file exporter) as a process: started on a
free port of 127.0.0.1, the spans it receives read back from its file as OTLP JSON.

    with OtelCollector(workdir) as collector:      # builds the collector first if needed (scripts/otelcol.sh)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
        ...
        spans = collector.spans()                  # every span so far: {"traceId", "spanId", "parentSpanId", ...}
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from scripts.kafka_local import free_port
from scripts.orphan_guard import guarded

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {path}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"""


def collector_path() -> Path:
    done = subprocess.run([str(ROOT / "scripts" / "otelcol.sh"), "--path"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/otelcol.sh could not build the collector:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip())


class OtelCollector:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.spans_file = workdir / "spans.jsonl"
        self.log_path = workdir / "otelcol.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> OtelCollector:
        binary = collector_path()
        config = self.workdir / "otelcol.yaml"
        config.write_text(CONFIG.format(port=self.port, path=self.spans_file))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(guarded([str(binary), "--config", str(config)]), stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the collector exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the collector did not listen on 127.0.0.1:{self.port} within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def spans(self) -> list[dict]:
        """Every span written so far, each with its resource's service.name added as "service"."""
        if not self.spans_file.exists():
            return []
        found = []
        for line in self.spans_file.read_text().splitlines():
            if not line.strip():
                continue
            for resource_spans in json.loads(line).get("resourceSpans", []):
                service = {a["key"]: a["value"].get("stringValue")
                           for a in resource_spans.get("resource", {}).get("attributes", [])}.get("service.name")
                for scope in resource_spans.get("scopeSpans", []):
                    found.extend({**span, "service": service} for span in scope.get("spans", []))
        return found

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> OtelCollector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
