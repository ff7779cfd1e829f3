"""Plain Kafka reads and writes for tests: what a user with kcat or kafka-console-consumer would see."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition


def produce(bootstrap: str, topic: str, values: Iterable[bytes | str], key: bytes | None = None,
            partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in values:
        kwargs = {"key": key, "value": value}
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
    assert producer.flush(30) == 0, "records were not delivered"


def read_topic(bootstrap: str, topic: str, *, isolation: str = "read_committed", timeout: float = 30.0,
               expect: int | None = None) -> list[Message]:
    """Every record of a topic from the beginning, without a consumer group.

    Reads until each partition's position reaches its end (the high watermark, which for read_committed
    means past every finished transaction), or until `expect` records arrived, or until timeout.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "isolation.level": isolation, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assigned = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        consumer.assign(assigned)
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    records.append(message)
            if expect is not None:
                if len(records) >= expect:
                    break
            elif _at_end(consumer, assigned):
                break
        return records
    finally:
        consumer.close()


def _at_end(consumer: Consumer, partitions: list[TopicPartition]) -> bool:
    positions = consumer.position([TopicPartition(tp.topic, tp.partition) for tp in partitions])
    for tp in positions:
        _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
        if tp.offset < 0 and high > 0 or tp.offset >= 0 and tp.offset < high:
            return False
    return True


def group_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    """The group's committed offset as an admin sees it (no waiting for pending transactions); -1001 if none."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, partition)])
    result = admin.list_consumer_group_offsets([request], require_stable=False)[group].result(10)
    return result.topic_partitions[0].offset
