"""Run the model export and the model server as subprocesses (no TensorFlow import here).

    models = export_models(tmp_path / "models")            # -> tmp_path/models
    server = ModelServerProcess(models, port=0)             # 0: the server picks a free port
    server.start()                                          # waits for the "ready on" line
    ... connect to server.address ...
    ModelServerProcess(models, rest_port=0)                 # TF Serving's REST API too, at .rest_url
    server.inject_fault("UNAVAILABLE")                      # every Predict answers UNAVAILABLE
    server.inject_fault(None)                               # back to normal
    server.stop()
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Sequence

import grpc

from scripts.orphan_guard import guarded

PROJECT_ROOT = Path(__file__).resolve().parent.parent
READY_RE = re.compile(r"^ready on (?P<host>\S+):(?P<port>\d+)"
                      r"(?: rest (?P<rest_host>\S+):(?P<rest_port>\d+))? models: (?P<models>.*)$")


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def export_models(output_dir: str | os.PathLike, model: str = "digits", version: int = 1,
                  extra_args: Sequence[str] = (), timeout: float = 600) -> Path:
    """Run `python -m serving.export_model`; returns output_dir (the model base dir)."""
    output_dir = Path(output_dir)
    cmd = [sys.executable, "-m", "serving.export_model", "--output-dir", str(output_dir),
           "--model", model, "--version", str(version), *extra_args]
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, env=_subprocess_env(), capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"export of {model} failed (exit {result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return output_dir


class ModelServerProcess:
    """`python -m serving.model_server` as a child process, started with --fault-file `fault_file`.

    fault_file defaults to a fresh path in the system temp dir; it exists only while a fault is injected.
    rest_port: also serve TF Serving's REST API there (0 picks a free port); None: no REST API.
    """

    def __init__(self, model_base_dir: str | os.PathLike, port: int = 0,
                 extra_args: Sequence[str] = (), host: str = "127.0.0.1",
                 startup_timeout: float = 120, fault_file: str | os.PathLike | None = None,
                 rest_port: int | None = None) -> None:
        self.model_base_dir = Path(model_base_dir)
        self.fault_file = Path(fault_file) if fault_file is not None else (
            Path(tempfile.gettempdir()) / f"model-server-fault-{uuid.uuid4().hex}")
        self.requested_port = port
        self.port = port
        self.rest_port = rest_port
        self.host = host
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.ready_line = ""
        self._proc: subprocess.Popen[str] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=60)
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        """host:port for grpc.insecure_channel (valid once started)."""
        return f"{self.host}:{self.port}"

    @property
    def rest_url(self) -> str | None:
        """http://host:port of the REST API (valid once started); None without one."""
        return None if self.rest_port is None else f"http://{self.host}:{self.rest_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stderr_tail(self) -> str:
        return "".join(self._stderr_tail)

    def start(self) -> "ModelServerProcess":
        """Start the server and wait until it prints its ready line (raises on death/timeout).

        On restart the previously bound ports (gRPC and REST) are reused, so clients can reconnect.
        """
        if self.running:
            raise RuntimeError("model server already running")
        rest = [] if self.rest_port is None else ["--rest-port", str(self.rest_port)]
        cmd = [sys.executable, "-m", "serving.model_server", "--model-base-dir",
               str(self.model_base_dir), "--host", self.host, "--port", str(self.port), *rest,
               "--fault-file", str(self.fault_file), *self.extra_args]
        self._stderr_tail.clear()
        self._proc = subprocess.Popen(guarded(cmd), cwd=PROJECT_ROOT, env=_subprocess_env(), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self._proc, ready), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

        deadline = time.monotonic() + self.startup_timeout
        while not ready.wait(0.1):
            if self._proc.poll() is not None:
                self._join_readers()
                raise RuntimeError(f"model server exited with {self._proc.returncode} before "
                                   f"becoming ready:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"model server not ready after {self.startup_timeout}s:\n"
                                   f"{self.stderr_tail()}")
        return self

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._join_readers()
        return proc.returncode

    def inject_fault(self, code: str | None, hang: bool = False) -> None:
        """Make every Predict answer gRPC status `code` (a StatusCode name), from its next call on.

        hang: wait until the client's deadline first. None removes the fault file: normal answers.
        """
        if code is None:
            self.fault_file.unlink(missing_ok=True)
            return
        if code not in grpc.StatusCode.__members__ or code == "OK":
            raise ValueError(f"not a gRPC error code name: {code!r}")
        staged = self.fault_file.with_name(self.fault_file.name + ".tmp")
        staged.write_text(f"{code} hang\n" if hang else f"{code}\n")
        staged.replace(self.fault_file)  # atomic: the server never reads a half-written file

    def restart(self) -> "ModelServerProcess":
        self.stop()
        return self.start()

    def __enter__(self) -> "ModelServerProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ output readers

    def _read_stdout(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = READY_RE.match(line.strip())
            if match and not ready.is_set():
                self.port = int(match["port"])
                if match["rest_port"]:
                    self.rest_port = int(match["rest_port"])
                self.ready_line = line.strip()
                ready.set()

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._stderr_tail.append(line)

    def _join_readers(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)
