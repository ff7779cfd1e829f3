"""Session fixtures for the integration tests: a real Kafka broker, the TF-Serving-compatible model server on
real TensorFlow, and a real HTTP server of test images. Each starts on first use and is stopped at the end.

The test process itself never imports TensorFlow (the bridge's protos share its symbol names): the model
export and the model server run as subprocesses.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.image_server import ImageServer
from scripts.kafka_local import LocalKafka, free_port
from scripts.local_stack import exported_models
from serving.digits import DigitImage, held_out_images
from serving.process import ModelServerProcess


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The digits SavedModel in TF Serving's layout (<dir>/digits/1/), exported once per version of serving/."""
    return exported_models()


@pytest.fixture(scope="session")
def model_server(models_dir: Path) -> Iterator[ModelServerProcess]:
    server = ModelServerProcess(models_dir, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), port=free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def held_out() -> list[DigitImage]:
    return held_out_images()


@pytest.fixture(scope="session")
def image_server(held_out: list[DigitImage]) -> Iterator[ImageServer]:
    server = ImageServer().start()
    for image in held_out:
        server.add(image.name, image.body, image.content_type)
    server.add("notes.txt", b"not an image", "text/plain")
    yield server
    server.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names, so tests sharing the broker never collide."""
    return uuid.uuid4().hex[:8]
