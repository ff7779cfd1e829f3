"""Everything the bridge needs, on this machine without Docker: a real Kafka broker, the TF-Serving-compatible
model server with the digits model, the three topics, and an HTTP server of sample digit images.

Used by the demo (scripts/demo.py) and the benchmark (scripts/benchmark.py). Every process it starts is
stopped when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scripts.bridge_process import BridgeProcess
from scripts.image_server import ImageServer
from scripts.kafka_local import DEFAULT_PORT, LocalKafka, cache_dir, free_port, port_open

ROOT = Path(__file__).resolve().parent.parent
TOPICS = {"input": "ImageInputTopic", "output": "ImageOutputTopic", "dead_letters": "ImageDeadLetterTopic"}


def exported_models() -> Path:
    """The digits model in TF Serving's layout, exported once per version of serving/ and cached."""
    from serving.process import export_models

    digest = hashlib.sha256()
    for path in sorted((ROOT / "serving").glob("*.py")):
        digest.update(path.read_bytes())
    target = cache_dir() / "models" / digest.hexdigest()[:16]
    if not (target / "digits" / "1" / "saved_model.pb").exists():
        staging = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:6]}")
        export_models(staging, model="digits")
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


@dataclass
class LocalStack:
    kafka: LocalKafka
    model_address: str
    digits: DigitSamples
    work_dir: Path

    @contextlib.contextmanager
    def bridge(self, *flags: str, log_name: str = "bridge.log", root: Path = ROOT,
               allow_local_images: bool = True) -> Iterator[BridgeProcess]:
        """`tfs-bridge run` on this stack as a child process; stopped with SIGTERM when the block ends.

        allow_local_images: open the address policy for 127.0.0.1, where the sample images are served.
        root: the checkout whose bridge runs (for comparisons with an older commit)."""
        local = ("--fetch-allow", "127.0.0.1") if allow_local_images else ()
        bridge = BridgeProcess(self.work_dir / log_name, "--bootstrap-servers", self.kafka.bootstrap_servers,
                               "--model-server", self.model_address, *local, *flags, root=root).start()
        try:
            yield bridge
        finally:
            if bridge.process is not None and bridge.process.poll() is None:
                bridge.terminate()


@contextlib.contextmanager
def local_stack(partitions: int = 3, digits: int = 100, kafka_port: int | None = None) -> Iterator[LocalStack]:
    """Start broker, model server and image server; create the default topics; stop everything afterwards."""
    from serving.process import ModelServerProcess

    work_dir = Path(tempfile.mkdtemp(prefix="tfs-bridge-"))
    port = kafka_port or (DEFAULT_PORT if not port_open(DEFAULT_PORT) else free_port())
    kafka = LocalKafka(work_dir / "kafka", port=port)
    model_server = ModelServerProcess(exported_models(), free_port())
    samples = None
    try:
        kafka.start()
        model_server.start()
        kafka.create_topics({topic: partitions for topic in TOPICS.values()})
        samples = serve_digits(digits)
        yield LocalStack(kafka, model_server.address, samples, work_dir)
    finally:
        if samples is not None:
            samples.server.stop()
        model_server.stop()
        kafka.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
