"""Everything the bridge needs, on this machine without Docker: a real Kafka broker, the TF-Serving-compatible
model server with the digits model, the three topics, and an HTTP server of sample digit images.

Used by the demo (scripts/demo.py) and the benchmark (scripts/benchmark.py). Every process it starts is
stopped when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
    from serving.digits import digit_to_image, encode_image, load_split

    _, _, test_x, test_y = load_split()
    samples = DigitSamples(ImageServer().start())
    for index in range(min(count, len(test_x))):
        image = digit_to_image(test_x[index])
        if index % 2 == 0:
            url = samples.server.add(f"digits/{index}.png", encode_image(image, "PNG"), "image/png")
        else:
            url = samples.server.add(f"digits/{index}.jpg", encode_image(image, "JPEG"), "image/jpeg")
        samples.labels[url] = str(int(test_y[index]))
    return samples


@dataclass
class LocalStack:
    kafka: LocalKafka
    model_address: str
    digits: DigitSamples
    work_dir: Path

    def bridge_command(self, *flags: str) -> list[str]:
        return [sys.executable, "-m", "bridge", "run", "--bootstrap-servers", self.kafka.bootstrap_servers,
                "--model-server", self.model_address, *flags]

    @contextlib.contextmanager
    def bridge(self, *flags: str, log_name: str = "bridge.log") -> Iterator[subprocess.Popen]:
        """`tfs-bridge run` as a child process; SIGTERM (and wait) when the block ends."""
        with open(self.work_dir / log_name, "ab") as log:
            process = subprocess.Popen(self.bridge_command(*flags), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


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
