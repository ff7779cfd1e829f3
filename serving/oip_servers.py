"""Real Open Inference Protocol (KServe v2) model servers serving the digits model, as child processes:

    server = OipServerProcess("mlserver", models_dir / "digits/1/model.tflite", grpc_port, http_port)
    server.start()          # builds its venv the first time, then waits until ServerReady and both ModelReady
    ... connect to server.address (127.0.0.1:grpc_port), model "digits" or "digits-bytes" ...
    server.kill()           # SIGKILL: an outage
    server.start_again()    # the same ports
    server.stop()           # SIGTERM, then SIGKILL

Each server serves two models from the one .tflite file: "digits" (input `images` UINT8 [N, 32, 32, 3]) and
"digits-bytes" (input `image_bytes` BYTES [N], encoded image files that the server decodes with Pillow and resizes
to 32x32); both answer `scores` FP32 [N, 10] and `classes` BYTES [N, 10].

kind "mlserver": Seldon MLServer (serving/oip/mlserver: digits_runtime.DigitsRuntime and DigitsBytesRuntime,
settings written here); kind "kserve": KServe's Python model server (serving/oip/kserve/digits_model.py, both
models in one ModelServer). Each runs from its own venv, synced from serving/oip/<kind>/uv.lock by scripts/uv.sh
into $XDG_CACHE_HOME/tfs-bridge/oip-<kind>-<lock hash> (built once; a changed lock builds a new one). Both listen
on 127.0.0.1 only, in one process each.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from scripts.orphan_guard import guarded

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OIP_DIR = PROJECT_ROOT / "serving" / "oip"
UV = PROJECT_ROOT / "scripts" / "uv.sh"
KINDS = ("mlserver", "kserve")
MODEL_NAME = "digits"
BYTES_MODEL_NAME = "digits-bytes"
MODEL_NAMES = (MODEL_NAME, BYTES_MODEL_NAME)
MODEL_VERSION = "1"
HOST = "127.0.0.1"
SERVICE = "/inference.GRPCInferenceService"
# What ModelMetadata declares (MLServer reads it from model-settings.json; KServe's is in digits_model.py).
INPUTS = [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
BYTES_INPUTS = [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]  # digits-bytes's; same OUTPUTS
OUTPUTS = [{"name": "scores", "datatype": "FP32", "shape": [-1, 10]},
           {"name": "classes", "datatype": "BYTES", "shape": [-1, 10]}]


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/tfs-bridge (default ~/.cache/tfs-bridge), as scripts/kafka_local.py."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfs-bridge"


def venv_dir(kind: str) -> Path:
    """Where `kind`'s venv lives: one per content of its uv.lock."""
    lock = (OIP_DIR / kind / "uv.lock").read_bytes()
    return cache_dir() / f"oip-{kind}-{hashlib.sha256(lock).hexdigest()[:16]}"


def ensure_venv(kind: str, timeout: float = 900) -> Path:
    """`kind`'s venv, synced from its lock by `scripts/uv.sh sync --locked` unless done before (under a file lock,
    so concurrent callers build it once). Returns the venv dir."""
    if kind not in KINDS:
        raise ValueError(f"unknown OIP server kind {kind!r}; one of {KINDS}")
    venv = venv_dir(kind)
    done = venv / ".tfs-bridge-synced"
    if done.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.with_name(venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return venv
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["UV_PROJECT_ENVIRONMENT"] = str(venv)
        python = ["--python", sys.executable] if sys.version_info[:2] == (3, 11) else []
        cmd = [str(UV), "sync", "--locked", "--project", str(OIP_DIR / kind), *python]
        result = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {result.returncode}):\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        done.write_text(f"{time.time()}\n")
    return venv


def _raw_grpc_bool(channel: grpc.Channel, method: str, request: bytes, timeout: float) -> bool:
    """Call an OIP readiness method with a hand-encoded request; True if its one bool field (1) is true.

    No protos needed: ServerReadyRequest is empty, ModelReadyRequest is {1: name, 2: version}, and both
    responses are {1: bool}, which a true value encodes as b"\\x08\\x01"."""
    call = channel.unary_unary(f"{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
    return call(request, timeout=timeout) == b"\x08\x01"


def _model_ready_request(name: str) -> bytes:
    encoded = name.encode()
    return b"\x0a" + bytes([len(encoded)]) + encoded


class OipServerProcess:
    """One OIP server (`kind`: "mlserver" or "kserve") serving models "digits" and "digits-bytes" from
    `model_file` (a .tflite), with gRPC on 127.0.0.1:`grpc_port` and HTTP on 127.0.0.1:`http_port`, in its own
    process group.

    Its settings and log (`log_file`) live in `work_dir` (default: a new temp dir, removed by close())."""

    def __init__(self, kind: str, model_file: str | os.PathLike, grpc_port: int, http_port: int,
                 startup_timeout: float = 180, work_dir: str | os.PathLike | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown OIP server kind {kind!r}; one of {KINDS}")
        self.kind = kind
        self.model_file = Path(model_file).resolve()
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.startup_timeout = startup_timeout
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"oip-{kind}-"))
        self.log_file = self.work_dir / f"{kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def address(self) -> str:
        """host:port of the gRPC API, for grpc.insecure_channel."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_file, errors="replace") as log:
                return "".join(collections.deque(log, maxlen=lines))
        except FileNotFoundError:
            return ""

    def start(self) -> "OipServerProcess":
        """Build the venv if needed, start the server and wait until gRPC ServerReady, ModelReady("digits") and
        ModelReady("digits-bytes") answer true (raises RuntimeError if it exits first, TimeoutError after
        startup_timeout)."""
        if self.running:
            raise RuntimeError(f"{self.kind} already running")
        if not self.model_file.is_file():
            raise FileNotFoundError(self.model_file)
        venv = ensure_venv(self.kind)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        cmd = self._command(venv)
        env = {k: v for k, v in os.environ.items()
               if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("MLSERVER_")}
        env.update(PYTHONPATH=str(OIP_DIR / self.kind), PYTHONUNBUFFERED="1")
        with open(self.log_file, "ab") as log:
            log.write(f"---- {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            # start_new_session: its own process group, so stop() and kill() reach everything it starts;
            # guarded: it also ends when the thread that started it does.
            self._proc = subprocess.Popen(guarded(cmd), cwd=self.work_dir, env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._started_once = True
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def start_again(self) -> "OipServerProcess":
        """Start the stopped or killed server again, on the same ports."""
        if not self._started_once:
            raise RuntimeError("start_again before start")
        return self.start()

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM to its process group, SIGKILL after `timeout`; returns the server's exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # also whatever it started and left behind
        return proc.wait()

    def kill(self) -> int | None:
        """SIGKILL to its process group, at once; returns the server's exit code."""
        proc = self._proc
        if proc is None:
            return None
        self._signal_group(signal.SIGKILL)
        return proc.wait()

    def close(self) -> None:
        """stop(), then remove the work dir if this object made it."""
        self.stop()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "OipServerProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)  # the child leads its own group (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def _command(self, venv: Path) -> list[str]:
        if self.kind == "kserve":
            return [str(venv / "bin" / "python"), str(OIP_DIR / "kserve" / "digits_model.py"),
                    "--model_file", str(self.model_file), "--grpc_port", str(self.grpc_port),
                    "--http_port", str(self.http_port), "--workers", "1"]
        settings_dir = self.work_dir / "mlserver"
        settings = {
            "debug": False, "host": HOST, "grpc_port": self.grpc_port, "http_port": self.http_port,
            "parallel_workers": 0,  # inference in the server's own process: one process to kill
            "metrics_endpoint": None,  # no metrics server (it would listen on its own port)
            "environments_dir": str(self.work_dir / "envs"), "metrics_dir": str(self.work_dir / "metrics"),
        }
        settings_dir.mkdir(parents=True, exist_ok=True)
        (settings_dir / "settings.json").write_text(json.dumps(settings, indent=2))
        # One folder per model; MLServer loads every model-settings.json under settings_dir.
        for name, implementation, inputs in ((MODEL_NAME, "DigitsRuntime", INPUTS),
                                             (BYTES_MODEL_NAME, "DigitsBytesRuntime", BYTES_INPUTS)):
            model_settings = {
                "name": name, "implementation": f"digits_runtime.{implementation}", "platform": "litert",
                "versions": [MODEL_VERSION],  # ModelMetadata's `versions`
                "inputs": inputs, "outputs": OUTPUTS,
                "parameters": {"uri": str(self.model_file), "version": MODEL_VERSION},
            }
            (settings_dir / name).mkdir(exist_ok=True)
            (settings_dir / name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        return [str(venv / "bin" / "mlserver"), "start", str(settings_dir)]

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        # No HTTP proxy from the environment for a loopback address.
        with grpc.insecure_channel(self.address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} exited with {self._proc.returncode} before becoming ready "
                                       f"(log {self.log_file}):\n{self.log_tail()}")
                try:
                    if (_raw_grpc_bool(channel, "ServerReady", b"", 2)
                            and all(_raw_grpc_bool(channel, "ModelReady", _model_ready_request(name), 2)
                                    for name in MODEL_NAMES)):
                        return
                except grpc.RpcError:
                    pass  # not listening yet, or a model not registered yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.kind} not ready after {self.startup_timeout}s "
                                       f"(log {self.log_file}):\n{self.log_tail()}")
                time.sleep(0.2)
