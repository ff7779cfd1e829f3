"""Exactly once on a three-node Kafka cluster as production runs it (replication factor 3, min.insync.replicas 2 for
the topics, the offsets topic and the transaction log), with a broker killed, frozen or cut off while records flow.

Each test sends digits through two bridges in one group (real processes, on the session's model server and image
server), injects its fault into one node at a time, and checks what a read_committed reader sees: every input exactly
once. It also measures how long the stream, and each partition of it, stood still (the longest gap between the
produce times of consecutive committed outputs), asserts both stayed within the session timeout plus the deadline of
a Kafka call, and that neither bridge exited. The records are sent once both bridges hold partitions, and the
fault begins once outputs flow; the test checks outputs were still being committed after it began.
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

RECORDS = 3000  # at least twice as long a stream as it takes a cold cluster to show the first 100 outputs
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


def holding_partitions(bridges: list[BridgeProcess], timeout: float = 90.0) -> None:
    """Until each bridge holds partitions: its last rebalance line is an assignment of some."""
    deadline = time.monotonic() + timeout
    while True:
        last = [re.findall(r"bridge_loop (assigned|revoked|lost) (\S+)", bridge.log())[-1:] for bridge in bridges]
        if all(events and events[0][0] == "assigned" and events[0][1] != "nothing" for events in last):
            return
        assert time.monotonic() < deadline, f"not every bridge holds partitions after {timeout} s: {last}"
        time.sleep(0.2)


def flowing(cluster, topics, image_server, held_out) -> tuple[dict[str, int], float]:
    """Send the records to the bridges, which hold their partitions already; once outputs come, (id -> true label,
    the time the fault may begin)."""
    truth = send_digits(cluster, topics, image_server, held_out, RECORDS)
    wait_for_outputs(cluster, topics, 100)
    return truth, time.time()


def finish(cluster, topics, truth, bridges, fault_began: float, what: str, record_property) -> None:
    """Check exactly once, that the fault began mid-stream, that no bridge exited, and that neither the stream nor
    any partition of it stood still longer than a lost session and one Kafka call's deadline; record and print the
    longest stalls."""
    outputs, dead = read_outcomes(cluster, topics, expect=len(truth), timeout=240)
    assert_exactly_once(outputs, dead, truth)
    last_output = max(message.timestamp()[1] for message in outputs) / 1000
    assert last_output > fault_began, "every output was committed before the fault began"
    for bridge in bridges:
        assert bridge.process.poll() is None, f"the bridge exited:\n{bridge.log()[-3000:]}"
    stall, partition_stall = longest_stall_s(outputs), longest_stall_s(outputs, per_partition=True)
    record_property("longest_stall_s", stall)
    record_property("longest_partition_stall_s", partition_stall)
    print(f"{what}: longest stall {stall:.1f} s, of one partition {partition_stall:.1f} s")
    assert stall < SESSION_TIMEOUT_S + KAFKA_TIMEOUT_S, f"the stream stood still for {stall:.1f} s"
    assert partition_stall < SESSION_TIMEOUT_S + KAFKA_TIMEOUT_S, f"a partition stood still for {partition_stall:.1f} s"


def test_each_broker_killed_in_turn_and_restarted_on_its_data(cluster, cluster_topics, model_server, image_server,
                                                              held_out, bridges, tmp_path, record_property):
    fully_replicated(cluster)
    bridges += start_two_bridges(cluster, cluster_topics, model_server, tmp_path)
    holding_partitions(bridges)
    truth, began = flowing(cluster, cluster_topics, image_server, held_out)
    for node in cluster.nodes:
        node.kill()
        time.sleep(5)
        node.start_again()
        fully_replicated(cluster)
    finish(cluster, cluster_topics, truth, bridges, began, "kill each broker", record_property)


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
    bridges += start_two_bridges(cluster, cluster_topics, model_server, tmp_path)
    holding_partitions(bridges)  # so that bridge a is committing when its coordinator freezes
    if fault == "freeze-coordinator":  # asked before the records flow: the tool takes seconds to start
        node = cluster.transaction_coordinator(re.search(r"transactional\.id (\S+)", bridges[0].log()).group(1))
    else:
        node = cluster.nodes[0 if fault == "freeze" else 1]
    begin, end = (node.cut, remove_cut_rules) if fault == "cut" else (node.freeze, node.thaw)
    truth, began = flowing(cluster, cluster_topics, image_server, held_out)
    try:
        begin()
        time.sleep(FAULT_S)
    finally:
        end()
    finish(cluster, cluster_topics, truth, bridges, began, f"{fault} a broker for {FAULT_S} s", record_property)
