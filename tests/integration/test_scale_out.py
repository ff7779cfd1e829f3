"""Three bridges in one consumer group over 6 partitions, while 5,000 records flow: one joins, one is killed
with SIGKILL and comes back under its name, one leaves. read_committed outputs hold every input exactly once, and
each instance counts the rebalances it went through. Under both group protocols: classic (eager rebalances) and
consumer (KIP-848, incremental); each run reports how long the stream stood still at most."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from confluent_kafka import Consumer, KafkaException, TopicPartition

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from scripts.kafka_io import produce, read_topic
from scripts.kafka_local import free_port
from tests.integration.conftest import LOCAL_IMAGES, BridgeTopics, longest_stall_s, values
from tests.integration.test_observability import get, samples, value

pytestmark = pytest.mark.integration

PARTITIONS = 6
RECORDS = 5000


def send(kafka, topics, image_server, held_out) -> dict[str, str]:
    truth, lines = {}, {p: [] for p in range(PARTITIONS)}
    for n in range(RECORDS):
        image = held_out[n % len(held_out)]
        truth[str(n)] = image.label
        lines[n % PARTITIONS].append(f'{{"url": "{image_server.url(image.name)}", "id": "{n}"}}')
    for partition, batch in lines.items():
        produce(kafka.bootstrap_servers, topics.input, batch, partition=partition)
    return truth


def committed_so_far(offsets: Consumer, topics) -> int:
    """Input records the group has committed, over all partitions, pending transactions included (asked by a
    consumer that never joins the group; read_uncommitted, so the broker answers without waiting for them);
    0 while the broker's group coordinator is not ready yet."""
    partitions = [TopicPartition(topics.input, p) for p in range(PARTITIONS)]
    try:
        return sum(max(0, tp.offset) for tp in offsets.committed(partitions, timeout=10))
    except KafkaException:
        return 0


def wait_for_more(offsets: Consumer, topics, than: int, by: int = 200, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = committed_so_far(offsets, topics)
        if seen >= than + by:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"fewer than {than + by} records committed after {timeout:.0f} s")


def rebalances(port: int) -> dict[str, float]:
    series = samples(get(port, "/metrics")[1])
    return {kind: value(series, "tfs_bridge_rebalances_total", kind=kind) for kind in ("assigned", "revoked", "lost")}


def short_sessions(kafka, group: str) -> None:
    """A consumer-protocol group's session timeout is the broker's: set this group's to 6 s, as an operator would
    (kafka-configs --entity-type groups)."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[
        ConfigEntry("consumer.session.timeout.ms", "6000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("consumer.heartbeat.interval.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_instances_joining_dying_and_leaving_mid_stream_keep_every_record_exactly_once(
        protocol, kafka, unique, image_server, held_out, model_server, tmp_path, record_property):
    from scripts.bridge_process import BridgeProcess

    topics = BridgeTopics(f"images-{unique}", f"predictions-{unique}", f"dead-{unique}", f"bridge-{unique}")
    kafka.create_topics({topics.input: PARTITIONS, topics.output: PARTITIONS, topics.dead_letters: 1})
    session = ("--kafka-config", "session.timeout.ms=6000")
    if protocol == "consumer":
        short_sessions(kafka, topics.group)
        # A static member SIGKILLed and back within its session is refused under KIP-848 (UNRELEASED_INSTANCE_ID)
        # until the session ends; a dynamic one joins at once, and the transactional.id still fences the dead one.
        session = ("--group-protocol", "consumer", "--no-static-membership")
    truth = send(kafka, topics, image_server, held_out)
    ports = {name: free_port() for name in ("a", "b", "c")}
    started: list[BridgeProcess] = []

    def start(name: str, *more: str) -> BridgeProcess:
        # A short session: a static member that stops (killed, or leaving) keeps its partitions until it ends.
        bridge = BridgeProcess(
            tmp_path / f"bridge-{name}-{len(started)}.log", "--bootstrap-servers", kafka.bootstrap_servers,
            "--model-server", model_server.address, *topics.flags(), *LOCAL_IMAGES, "--instance-name", name,
            "--max-batch-size", "4", "--max-in-flight", "1", "--metrics-port", str(ports[name]),
            "--metrics-host", "127.0.0.1", *session, *more).start()
        started.append(bridge)
        return bridge

    offsets = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": topics.group,
                        "isolation.level": "read_uncommitted", "enable.auto.commit": False})
    try:
        a, b = start("a"), start("b")
        seen = wait_for_more(offsets, topics, 0)
        c = start("c")  # joins: a rebalance
        c.wait_for_log(f"assigned {topics.input}[")
        seen = wait_for_more(offsets, topics, seen)
        b.process.send_signal(signal.SIGKILL)  # dies mid-transaction
        b.process.wait()
        time.sleep(2)
        b = start("b")  # comes back under its name: fences its dead predecessor, gets its partitions back
        seen = wait_for_more(offsets, topics, seen)
        a_rebalances = rebalances(ports["a"])
        assert c.terminate() == 0  # leaves: its partitions move once its session ends
        assert seen < RECORDS, "the stream ended before the last change: not mid-stream"

        # One long read: short reads of six partitions can end before every partition has been fetched.
        outputs = read_topic(kafka.bootstrap_servers, topics.output, expect=RECORDS, timeout=120)
        dead = read_topic(kafka.bootstrap_servers, topics.dead_letters, timeout=10)
        ids = Counter(o["id"] for o in values(outputs))
        assert not dead, values(dead)[:3]
        assert [i for i, n in ids.items() if n > 1] == []
        assert set(ids) == set(truth)

        stall, partition_stall = longest_stall_s(outputs), longest_stall_s(outputs, per_partition=True)
        record_property("longest_stall_s", stall)
        record_property("longest_partition_stall_s", partition_stall)
        print(f"{protocol} group protocol: longest stall {stall:.1f} s, of one partition {partition_stall:.1f} s")

        # Every change of members was a rebalance (classic: all partitions revoked, then assigned; consumer: only
        # those that move), counted on /metrics and logged: c leaving moved partitions to a again.
        final = rebalances(ports["a"])
        assert final["assigned"] > a_rebalances["assigned"] and final["revoked"] >= 1 and final["lost"] == 0
        assert rebalances(ports["b"])["assigned"] >= 1
        assert a.log().count("revoked ") == final["revoked"] and a.log().count("assigned ") == final["assigned"]
        assert a.terminate() == 0 and b.terminate() == 0
    finally:
        offsets.close()
        for bridge in started:
            bridge.kill()
