"""Real Open Inference Protocol (KServe v2) model servers serving the digits model (and optionally other image
classifiers), as child processes:

    server = OipServerProcess("mlserver", models_dir / "digits/1/model.tflite", grpc_port, http_port,
                              extra_models={"mobilenet": other_dir / "mobilenet/1/model.tflite"})  # optional
    server.start()          # builds its venv the first time, then waits until ServerReady and every ModelReady
    ... connect to server.address (127.0.0.1:grpc_port), model "digits", "digits-bytes" or "mobilenet" ...
    server.kill()           # SIGKILL: an outage
    server.start_again()    # the same ports
    server.stop()           # SIGTERM, then SIGKILL

Each server serves two models from the one .tflite file: "digits" (input `images` UINT8 [N, 32, 32, 3]) and
"digits-bytes" (input `image_bytes` BYTES [N], encoded image files that the server decodes with Pillow and resizes
to 32x32); both answer `scores` FP32 [N, 10] and `classes` BYTES [N, 10]. Each of `extra_models` (name -> .tflite)
is served as a pixel model beside them: its input (name, datatype, shape [-1, H, W, 3]) and all its outputs are
those of the file's serving_default signature, which the server reads when it loads the model and which
ModelMetadata declares (e.g. for MobileNetV2: `images` UINT8 [-1, 224, 224, 3] -> `scores` FP32 [-1, 1000],
`classes` BYTES [-1, 1000], `top_class` BYTES [-1]).

kind "mlserver": Seldon MLServer (serving/oip/mlserver: digits_runtime.DigitsRuntime, DigitsBytesRuntime and
ImageRuntime for extra models; settings written here, one model-settings.json per model, declaring no inputs or
outputs: the runtime reads them from the file); kind "kserve": KServe's Python model server
(serving/oip/kserve/digits_model.py, all models in one ModelServer, extra ones as `--extra_model NAME=PATH`).
Each runs from its own venv, synced from serving/oip/<kind>/uv.lock by scripts/uv.sh into
$XDG_CACHE_HOME/tfs-bridge/oip-<kind>-<lock hash> (built once; a changed lock builds a new one). Both listen on
127.0.0.1 only, in one process each.
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
from collections.abc import Mapping
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
# The largest gRPC message either server takes or sends. Their defaults (MLServer 4 MiB, KServe 8 MiB) refuse the
# bridge's batch of 32 MobileNetV2 images (4.8 MB) with RESOURCE_EXHAUSTED.
GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE = "/inference.GRPCInferenceService"
# Each model's runtime class in serving/oip/mlserver/digits_runtime.py (extra models: EXTRA_RUNTIME).
RUNTIMES = {MODEL_NAME: "DigitsRuntime", BYTES_MODEL_NAME: "DigitsBytesRuntime"}
EXTRA_RUNTIME = "ImageRuntime"


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
    length, size = bytearray(), len(encoded)
    while True:  # a varint
        length.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            return b"\x0a" + bytes(length) + encoded


def _extra_models(extra_models: Mapping[str, str | os.PathLike] | None) -> dict[str, Path]:
    models = {str(name): Path(path).resolve() for name, path in (extra_models or {}).items()}
    for name in models:
        if name in MODEL_NAMES:
            raise ValueError(f"extra model name {name!r} is taken: {MODEL_NAMES} are always served")
        # One folder per model for MLServer, NAME=PATH on kserve's command line.
        if not name or name.startswith((".", "-")) or any(c in name for c in "/\\=") or name != name.strip():
            raise ValueError(f"bad extra model name {name!r}")
    return models


class OipServerProcess:
    """One OIP server (`kind`: "mlserver" or "kserve") serving models "digits" and "digits-bytes" from
    `model_file` (a .tflite), and each of `extra_models` (name -> .tflite) as a pixel model, with gRPC on
    127.0.0.1:`grpc_port` and HTTP on 127.0.0.1:`http_port`, in its own process group.

    Its settings and log (`log_file`) live in `work_dir` (default: a new temp dir, removed by close())."""

    def __init__(self, kind: str, model_file: str | os.PathLike, grpc_port: int, http_port: int,
                 extra_models: Mapping[str, str | os.PathLike] | None = None, startup_timeout: float = 180,
                 work_dir: str | os.PathLike | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown OIP server kind {kind!r}; one of {KINDS}")
        self.kind = kind
        self.model_file = Path(model_file).resolve()
        self.extra_models = _extra_models(extra_models)
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.startup_timeout = startup_timeout
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"oip-{kind}-"))
        self.log_file = self.work_dir / f"{kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every model it serves: "digits", "digits-bytes", then the extra models."""
        return (*MODEL_NAMES, *self.extra_models)

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
        """Build the venv if needed, start the server and wait until gRPC ServerReady and ModelReady of every model
        (model_names) answer true (raises RuntimeError if it exits first, TimeoutError after startup_timeout)."""
        if self.running:
            raise RuntimeError(f"{self.kind} already running")
        for model_file in (self.model_file, *self.extra_models.values()):
            if not model_file.is_file():
                raise FileNotFoundError(model_file)
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
            extra = [arg for name, path in self.extra_models.items() for arg in ("--extra_model", f"{name}={path}")]
            return [str(venv / "bin" / "python"), str(OIP_DIR / "kserve" / "digits_model.py"),
                    "--model_file", str(self.model_file), *extra, "--grpc_port", str(self.grpc_port),
                    "--http_port", str(self.http_port), "--workers", "1",
                    "--grpc_max_receive_message_length", str(GRPC_MAX_MESSAGE_BYTES),
                    "--grpc_max_send_message_length", str(GRPC_MAX_MESSAGE_BYTES)]
        settings_dir = self.work_dir / "mlserver"
        settings = {
            "debug": False, "host": HOST, "grpc_port": self.grpc_port, "http_port": self.http_port,
            "parallel_workers": 0,  # inference in the server's own process: one process to kill
            "metrics_endpoint": None,  # no metrics server (it would listen on its own port)
            "grpc_max_message_length": GRPC_MAX_MESSAGE_BYTES,
            "environments_dir": str(self.work_dir / "envs"), "metrics_dir": str(self.work_dir / "metrics"),
        }
        settings_dir.mkdir(parents=True, exist_ok=True)
        (settings_dir / "settings.json").write_text(json.dumps(settings, indent=2))
        # One folder per model; MLServer loads every model-settings.json under settings_dir (a folder left from an
        # earlier start with other extra models would be loaded too).
        for stale in settings_dir.iterdir():
            if stale.is_dir() and stale.name not in self.model_names:
                shutil.rmtree(stale)
        models = [(MODEL_NAME, RUNTIMES[MODEL_NAME], self.model_file),
                  (BYTES_MODEL_NAME, RUNTIMES[BYTES_MODEL_NAME], self.model_file),
                  *((name, EXTRA_RUNTIME, path) for name, path in self.extra_models.items())]
        for name, implementation, model_file in models:
            model_settings = {
                "name": name, "implementation": f"digits_runtime.{implementation}", "platform": "litert",
                "versions": [MODEL_VERSION],  # ModelMetadata's `versions`
                # No inputs or outputs: the runtime reads them from the file and ModelMetadata answers those.
                "parameters": {"uri": str(model_file), "version": MODEL_VERSION},
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
                                    for name in self.model_names)):
                        return
                except grpc.RpcError:
                    pass  # not listening yet, or a model not registered yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.kind} not ready after {self.startup_timeout}s "
                                       f"(log {self.log_file}):\n{self.log_tail()}")
                time.sleep(0.2)
