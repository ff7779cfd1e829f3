"""What a redrive learns from Kafka's admin API before reading: the dead-letter topic's partitions and where each
ends as of now, the input topic's partition count, and (for a dry run) where the redrive group stands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from bridge.config import Settings
from bridge.errors import BridgeError, ConfigError
from bridge.kafka.clients import PartitionKey, committed_offsets, librdkafka_log


@dataclass(frozen=True)
class TopicView:
    ends: dict[PartitionKey, int]  # per dead-letter partition: its end for a read_committed reader, at the start
    lows: dict[PartitionKey, int]  # per dead-letter partition: its first offset
    input_partitions: int
    group_offsets: dict[PartitionKey, int]  # the redrive group's committed offsets (negative: none); if asked


def look(settings: Settings, timeout: float, group: str | None = None) -> TopicView:
    """The view of the topics (and of `group`'s offsets on the dead-letter topic, if given), each call within
    `timeout` seconds. ConfigError if a topic does not exist; BridgeError if Kafka does not answer."""
    where = f"Kafka at {settings.bootstrap_servers}"
    try:
        admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "logger": librdkafka_log,
                             **settings.kafka_config})
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid Kafka configuration: {exc}") from None
    try:
        metadata = admin.list_topics(timeout=timeout)
        counts = {}
        for topic in (settings.dead_letter_topic, settings.input_topic):
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                raise ConfigError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}; create it first")
            counts[topic] = len(found.partitions)
        partitions = [TopicPartition(settings.dead_letter_topic, p) for p in range(counts[settings.dead_letter_topic])]
        ends = _offsets(admin, partitions, OffsetSpec.latest(), timeout)
        lows = _offsets(admin, partitions, OffsetSpec.earliest(), timeout)
        offsets = _group_offsets(settings, group, partitions, timeout) if group is not None else {}
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        raise BridgeError(f"{where}: {error.str() if hasattr(error, 'str') else error}") from None
    except TimeoutError:
        raise BridgeError(f"{where}: no answer within {timeout:g} s") from None
    return TopicView(ends, lows, counts[settings.input_topic], offsets)


def _offsets(admin: AdminClient, partitions: list[TopicPartition], spec: Any,
             timeout: float) -> dict[PartitionKey, int]:
    """Each partition's offset at `spec`, as a read_committed reader sees it (the latest: the last stable offset,
    before any transaction still open)."""
    answers = admin.list_offsets({tp: spec for tp in partitions}, isolation_level=IsolationLevel.READ_COMMITTED,
                                 request_timeout=timeout)
    return {(tp.topic, tp.partition): future.result(timeout).offset for tp, future in answers.items()}


def _group_offsets(settings: Settings, group: str, partitions: list[TopicPartition],
                   timeout: float) -> dict[PartitionKey, int]:
    """The group's committed offsets, asked by a consumer of the group that does not join it. Not the admin API:
    librdkafka's ListConsumerGroupOffsets crashes the process when the coordinator answers NOT_COORDINATOR
    (librdkafka#5040). read_uncommitted, so as not to wait for offsets of a transaction still open: after a killed
    redrive, that one is aborted by the next (its init), never committed."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "logger": librdkafka_log,
                         **settings.kafka_config, "group.id": group, "enable.auto.commit": False,
                         "isolation.level": "read_uncommitted"})
    try:
        return committed_offsets(consumer, partitions, timeout)  # asked again while the coordinator moves or loads
    finally:
        consumer.close()
