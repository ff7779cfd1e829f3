"""Exactly once on a three-node Kafka cluster as production runs it (replication factor 3, min.insync.replicas 2 for
the topics, the offsets topic and the transaction log), with a broker killed, frozen or cut off while records flow.

Each test sends digits through two bridges in one group (real processes, on the session's model server and image
server), injects its fault into one node at a time, and checks what a read_committed reader sees: every input exactly
once. It also measures how long the stream stood still (the longest gap between the produce times of consecutive
committed outputs), asserts it stayed within the session timeout plus the deadline of a Kafka call, and that neither
bridge exited.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.bridge_process import BridgeProcess
from scripts.kafka_cluster import LocalKafkaCluster, remove_cut_rules
from scripts.kafka_io import read_topic
from tests.integration.conftest import LOCAL_IMAGES, BridgeTopics, longest_stall_s, new_topics, read_outcomes
from tests.integration.test_bridge import assert_exactly_once, send_digits, wait_for_outputs

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

RECORDS = 1500
FAULT_S = 20  # longer than a broker's session with the controller (9 s): leaders move
KAFKA_TIMEOUT_S = 10  # the deadline of each Kafka call
SESSION_TIMEOUT_S = 45  # librdkafka's default session.timeout.ms, which the bridge keeps
# Slow enough that every fault lands mid-stream.
BRIDGE_FLAGS = ("--max-batch-size", "8", "--max-in-flight", "1", "--kafka-timeout-ms", str(KAFKA_TIMEOUT_S * 1000),
                "--metrics-port", "0", *LOCAL_IMAGES)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    running = LocalKafkaCluster(tmp_path_factory.mktemp("cluster"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def cluster_topics(cluster, unique) -> BridgeTopics:
    return new_topics(cluster, unique)


@pytest.fixture
def bridges() -> Iterator[list[BridgeProcess]]:
    """Bridges started with bridges.append(start(...)); killed at teardown."""
    started: list[BridgeProcess] = []
    yield started
    for bridge in started:
        bridge.kill()


def start_two_bridges(cluster, topics, model_server, logs: Path) -> list[BridgeProcess]:
    """Two bridges in one group, instances a and b."""
    return [BridgeProcess(logs / f"bridge-{name}.log", "--bootstrap-servers", cluster.bootstrap_servers,
                          "--model-server", model_server.address, "--instance-name", name, *topics.flags(),
                          *BRIDGE_FLAGS).start()
            for name in ("a", "b")]


def fully_replicated(cluster, timeout: float = 120.0) -> None:
    """Until every partition of every topic, internal ones included, has its three replicas in sync."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=10).topics.values()
        lagging = [f"{t.topic}[{p.id}]" for t in topics for p in t.partitions.values() if len(p.isrs) < 3]
        if not lagging:
            return
        assert time.monotonic() < deadline, f"under-replicated after {timeout} s: {lagging[:10]}"
        time.sleep(1)


def finish(cluster, topics, truth, bridges) -> float:
    """Check exactly once, that no bridge exited and that the stream never stood still longer than a lost session
    and one Kafka call's deadline; the longest stall."""
    outputs, dead = read_outcomes(cluster, topics, expect=len(truth), timeout=240)
    assert_exactly_once(outputs, dead, truth)
    for bridge in bridges:
        assert bridge.process.poll() is None, f"the bridge exited:\n{bridge.log()[-3000:]}"
    stall = longest_stall_s(outputs)
    assert stall < SESSION_TIMEOUT_S + KAFKA_TIMEOUT_S, f"the stream stood still for {stall:.1f} s"
    return stall


def test_each_broker_killed_in_turn_and_restarted_on_its_data(cluster, cluster_topics, model_server, image_server,
                                                              held_out, bridges, tmp_path, record_property):
    fully_replicated(cluster)
    truth = send_digits(cluster, cluster_topics, image_server, held_out, RECORDS)
    bridges += start_two_bridges(cluster, cluster_topics, model_server, tmp_path)
    wait_for_outputs(cluster, cluster_topics, 100)
    for node in cluster.nodes:
        node.kill()
        time.sleep(5)
        node.start_again()
        fully_replicated(cluster)
    stall = finish(cluster, cluster_topics, truth, bridges)
    record_property("longest_stall_s", stall)
    print(f"kill each broker: longest stall {stall:.1f} s")


@pytest.mark.parametrize("fault", ["freeze", "cut", "freeze-coordinator"])
def test_a_broker_frozen_or_cut_off_past_its_session_then_back(fault, cluster, cluster_topics, model_server,
                                                                image_server, held_out, bridges, tmp_path,
                                                                record_property):
    """freeze: SIGSTOP, the broker hangs with its connections open. cut: every packet to its client and
    inter-broker listener dropped while its controller listener keeps it in the quorum. freeze-coordinator: the
    broker coordinating bridge a's transactions frozen, so its send_offsets_to_transaction or
    commit_transaction does not return. Each ends after FAULT_S, however the test goes. Two bridges in one group
    throughout."""
    fully_replicated(cluster)
    truth = send_digits(cluster, cluster_topics, image_server, held_out, RECORDS)
    bridges += start_two_bridges(cluster, cluster_topics, model_server, tmp_path)
    wait_for_outputs(cluster, cluster_topics, 100)
    if fault == "freeze-coordinator":
        node = cluster.transaction_coordinator(re.search(r"transactional\.id (\S+)", bridges[0].log()).group(1))
    else:
        node = cluster.nodes[0 if fault == "freeze" else 1]
    begin, end = (node.cut, remove_cut_rules) if fault == "cut" else (node.freeze, node.thaw)
    try:
        begin()
        time.sleep(FAULT_S)
    finally:
        end()
    stall = finish(cluster, cluster_topics, truth, bridges)
    record_property("longest_stall_s", stall)
    print(f"{fault} a broker for {FAULT_S} s: longest stall {stall:.1f} s")
