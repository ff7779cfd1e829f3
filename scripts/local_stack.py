"""Everything the bridge needs, on this machine without Docker: a real Kafka broker, the TF-Serving-compatible
model server with the digits model (and optionally others), the three topics, and an HTTP server of sample digit
images (and optionally one of synthetic photos).

Used by the demo (scripts/demo.py) and the benchmark (scripts/benchmark.py). Every process it starts is
stopped when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.bridge_process import BridgeProcess
from scripts.image_server import ImageServer
from scripts.kafka_local import DEFAULT_PORT, LocalKafka, cache_dir, free_port, port_open
from scripts.photos import photo_jpegs

ROOT = Path(__file__).resolve().parent.parent
TOPICS = {"input": "ImageInputTopic", "output": "ImageOutputTopic", "dead_letters": "ImageDeadLetterTopic"}


def serving_digest() -> str:
    """A short hash of serving/*.py: exports are cached per version of the export code."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "serving").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def exported_model(model: str) -> Path:
    """A model base dir holding only `model` (<dir>/<model>/1/), exported once per version of serving/ and cached."""
    from serving.process import export_models

    target = cache_dir() / "models" / f"{model}-{serving_digest()}"
    if not (target / model / "1" / "saved_model.pb").exists():
        staging = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:6]}")
        export_models(staging, model=model)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def exported_models(models: Sequence[str] = ("digits",)) -> Path:
    """A model base dir holding `models` in TF Serving's layout (<dir>/<model>/1/), each exported and cached
    on its own by exported_model; for several models, a dir of symlinks into their caches."""
    names = list(dict.fromkeys(models))
    if not names:
        raise ValueError("no models requested")
    dirs = [exported_model(name) for name in names]
    if len(dirs) == 1:
        return dirs[0]
    target = cache_dir() / "models" / "+".join(sorted(d.name for d in dirs))
    if not all((target / name).is_dir() for name in names):
        staging = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:6]}")
        staging.mkdir(parents=True)
        for name, model_dir in zip(names, dirs):  # relative links: the cache dir can move
            (staging / name).symlink_to(Path("..") / model_dir.name / name, target_is_directory=True)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


@dataclass
class DigitSamples:
    """Held-out digits served over HTTP: url -> true label."""

    server: ImageServer
    labels: dict[str, str] = field(default_factory=dict)


def serve_digits(count: int) -> DigitSamples:
    from serving.digits import held_out_images

    samples = DigitSamples(ImageServer().start())
    for image in held_out_images(count):
        samples.labels[samples.server.add(image.name, image.body, image.content_type)] = image.label
    return samples


def serve_photos(server: ImageServer, count: int, seed: int = 0) -> list[str]:
    """Add `count` synthetic 640x480 photo JPEGs (scripts/photos.py) to `server` as photos/NNNN.jpg; their URLs."""
    return [server.add(f"photos/{index:04d}.jpg", body, "image/jpeg")
            for index, body in enumerate(photo_jpegs(count, seed=seed))]


BACKENDS = ("grpc", "rest", "embedded", "oip")


@dataclass
class LocalStack:
    kafka: LocalKafka
    model_address: str  # the model server's gRPC API
    digits: DigitSamples
    work_dir: Path
    photos: list[str] = field(default_factory=list)  # URLs of synthetic photos (local_stack(photos=N))
    model_pid: int | None = None  # the model server's process (for CPU and memory figures)
    rest_url: str = ""  # the model server's TF Serving REST API
    models_dir: Path | None = None  # the exported models (<dir>/<model>/1/{saved_model.pb,model.tflite})
    model_server: Any = None  # its serving.process.ModelServerProcess (to stop and start it)
    oip_server: Any = None  # an Open Inference Protocol server (serving.oip_servers.OipServerProcess), if started

    def model_server_flag(self, backend: str, model: str = "digits") -> str:
        """--model-server for a backend of BACKENDS: the gRPC address, the REST URL, the model's .tflite, or the
        Open Inference Protocol server's oip:// address."""
        if backend == "rest":
            return self.rest_url
        if backend == "embedded":
            assert self.models_dir is not None
            return str(self.models_dir / model / "1" / "model.tflite")
        if backend == "oip":
            assert self.oip_server is not None, "local_stack(oip=True) starts it"
            return f"oip://{self.oip_server.address}"
        return self.model_address

    def server_pid(self, backend: str) -> int | None:
        """The process serving the model for `backend` (the OIP server's for oip, TF Serving's stand-in else)."""
        return self.oip_server.pid if backend == "oip" else self.model_pid

    @contextlib.contextmanager
    def bridge(self, *flags: str, log_name: str = "bridge.log", root: Path = ROOT,
               allow_local_images: bool = True, backend: str = "grpc", model: str = "digits",
               env: dict[str, str] | None = None) -> Iterator[BridgeProcess]:
        """`tfs-bridge run` on this stack as a child process; stopped with SIGTERM when the block ends.

        allow_local_images: open the address policy for 127.0.0.1, where the sample images are served.
        root: the checkout whose bridge runs (for comparisons with an older commit).
        backend: which of BACKENDS the bridge uses for `model`. env: more environment for the bridge."""
        local = ("--fetch-allow", "127.0.0.1") if allow_local_images else ()
        # No metrics port unless asked for: a stack may run several bridges (an older commit knows no such flag).
        quiet = ("--metrics-port", "0") if root == ROOT else ()
        bridge = BridgeProcess(self.work_dir / log_name, "--bootstrap-servers", self.kafka.bootstrap_servers,
                               "--model-server", self.model_server_flag(backend, model), *local, *quiet, *flags,
                               env=env, root=root).start()
        try:
            yield bridge
        finally:
            if bridge.process is not None and bridge.process.poll() is None:
                bridge.terminate()


@contextlib.contextmanager
def local_stack(partitions: int = 3, digits: int = 100, kafka_port: int | None = None,
                models: Sequence[str] = ("digits",), photos: int = 0, oip: bool = False) -> Iterator[LocalStack]:
    """Start broker, model server (serving `models`) and image servers; create the default topics; stop everything
    afterwards. photos > 0 also serves that many synthetic photos on a second image server (LocalStack.photos).
    oip: also Seldon MLServer serving `models` over the Open Inference Protocol (LocalStack.oip_server)."""
    from serving.oip_servers import OipServerProcess
    from serving.process import ModelServerProcess

    work_dir = Path(tempfile.mkdtemp(prefix="tfs-bridge-"))
    port = kafka_port or (DEFAULT_PORT if not port_open(DEFAULT_PORT) else free_port())
    kafka = LocalKafka(work_dir / "kafka", port=port)
    models_dir = exported_models(models)
    model_server = ModelServerProcess(models_dir, free_port(), rest_port=free_port())
    samples = None
    photo_server = None
    oip_server = None
    if oip:
        tflite = {model: models_dir / model / "1" / "model.tflite" for model in models}
        oip_server = OipServerProcess("mlserver", tflite["digits"], free_port(), free_port(),
                                      extra_models={m: path for m, path in tflite.items() if m != "digits"})
    try:
        kafka.start()
        model_server.start()
        if oip_server is not None:
            oip_server.start()
        kafka.create_topics({topic: partitions for topic in TOPICS.values()})
        samples = serve_digits(digits)
        photo_urls: list[str] = []
        if photos > 0:
            photo_server = ImageServer().start()
            photo_urls = serve_photos(photo_server, photos)
        yield LocalStack(kafka, model_server.address, samples, work_dir, photo_urls, model_server.pid,
                         model_server.rest_url or "", models_dir, model_server, oip_server)
    finally:
        if oip_server is not None:
            oip_server.stop()
        if photo_server is not None:
            photo_server.stop()
        if samples is not None:
            samples.server.stop()
        model_server.stop()
        kafka.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
