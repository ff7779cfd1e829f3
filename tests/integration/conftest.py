"""Fixtures for running the bridge as a real process against the session's broker, model server and HTTP server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from scripts.bridge_process import BridgeProcess
from scripts.kafka_io import read_topic


# The test image servers listen on 127.0.0.1, which the default address policy refuses: open it explicitly.
LOCAL_IMAGES = ("--fetch-allow", "127.0.0.1")


@dataclass
class BridgeTopics:
    input: str
    output: str
    dead_letters: str
    group: str

    def flags(self) -> list[str]:
        return ["--input-topic", self.input, "--output-topic", self.output,
                "--dead-letter-topic", self.dead_letters, "--group-id", self.group]


def new_topics(kafka, unique: str) -> BridgeTopics:
    """A bridge's three topics and group, named after `unique`, created on `kafka` (a broker or a cluster)."""
    names = BridgeTopics(f"images-{unique}", f"predictions-{unique}", f"dead-{unique}", f"bridge-{unique}")
    kafka.create_topics({names.input: 3, names.output: 3, names.dead_letters: 1})
    return names


@pytest.fixture
def topics(kafka, unique) -> BridgeTopics:
    return new_topics(kafka, unique)


@pytest.fixture
def start_bridge(kafka, model_server, topics, tmp_path) -> Iterator[Callable[..., BridgeProcess]]:
    """start_bridge(*extra_flags) -> a running bridge on this test's topics; every one is killed at teardown."""
    started: list[BridgeProcess] = []

    def start(*extra: str, model_address: str | None = None) -> BridgeProcess:
        flags = ["--bootstrap-servers", kafka.bootstrap_servers, "--model-server", model_address or model_server.address,
                 *topics.flags(), "--progress-interval-ms", "2000", "--metrics-port", "0", *LOCAL_IMAGES, *extra]
        bridge = BridgeProcess(tmp_path / f"bridge-{len(started)}.log", *flags).start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.kill()


def longest_stall_s(outputs, per_partition: bool = False) -> float:
    """The longest gap between the produce times of consecutive committed outputs, in seconds; per_partition: of
    consecutive outputs in one partition (one input partition's, for unkeyed inputs), the longest over all."""
    streams: dict[int, list[int]] = {}
    for message in outputs:
        streams.setdefault(message.partition() if per_partition else 0, []).append(message.timestamp()[1])
    gaps = [b - a for times in streams.values() for a, b in zip(sorted(times), sorted(times)[1:])]
    return max(gaps, default=0) / 1000


def read_outcomes(kafka, topics: BridgeTopics, expect: int, timeout: float = 120.0) -> tuple[list, list]:
    """(outputs, dead letters) as a read_committed reader sees them, once `expect` records in all have arrived."""
    outputs: list = []
    dead: list = []
    deadline = time.monotonic() + timeout
    read_for = 2.0
    while time.monotonic() < deadline:
        # Short reads first: while the bridge holds a transaction open, the end of the topic is not reachable yet.
        # Longer ones later: a read from the beginning of a large topic needs more than 2 s to reach every end.
        outputs = read_topic(kafka.bootstrap_servers, topics.output, timeout=read_for)
        dead = read_topic(kafka.bootstrap_servers, topics.dead_letters, timeout=2)
        if len(outputs) + len(dead) >= expect:
            break
        read_for = min(read_for + 2, 15.0)
        time.sleep(1)
    return outputs, dead


def values(messages) -> list[dict]:
    return [json.loads(m.value()) for m in messages]
