"""The bridge's Kafka wrappers on a real broker: results and input offsets commit together, or not at all."""

import time

import pytest
from confluent_kafka import TopicPartition

from bridge.kafka.clients import ReadCommittedConsumer, TransactionalProducer
from scripts.kafka_io import group_offset, produce, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka, unique):
    names = {"input": f"in-{unique}", "output": f"out-{unique}"}
    kafka.create_topics({names["input"]: 1, names["output"]: 1})
    produce(kafka.bootstrap_servers, names["input"], [f"record-{i}".encode() for i in range(5)])
    return names


def consume_all(consumer, count):
    records = []
    for _ in range(60):
        records += consumer.poll_batch(count - len(records), 0.5)
        if len(records) >= count:
            return records
    raise AssertionError(f"only {len(records)} of {count} records arrived")


def transform_in_transaction(kafka, topics, unique):
    consumer = ReadCommittedConsumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"g-{unique}"},
                                     [topics["input"]])
    records = consume_all(consumer, 5)
    producer = TransactionalProducer({"bootstrap.servers": kafka.bootstrap_servers}, f"txn-{unique}")
    producer.init()
    producer.begin()
    for record in records:
        producer.produce(topics["output"], record.value().upper(), key=record.key())
    producer.send_offsets([TopicPartition(topics["input"], 0, records[-1].offset() + 1)], consumer.group_metadata())
    return consumer, producer, records


def committed_offset(consumer, topic):
    return consumer.committed([TopicPartition(topic, 0)])[(topic, 0)]


def test_a_committed_transaction_is_seen_by_read_committed_readers_and_moves_the_group_offset(kafka, topics, unique):
    consumer, producer, _ = transform_in_transaction(kafka, topics, unique)
    assert read_topic(kafka.bootstrap_servers, topics["output"], timeout=3) == []  # still open: invisible
    # The offsets are pending in the transaction; the group has committed nothing yet.
    assert group_offset(kafka.bootstrap_servers, f"g-{unique}", topics["input"]) < 0

    producer.commit()

    outputs = read_topic(kafka.bootstrap_servers, topics["output"])
    assert [m.value() for m in outputs] == [f"RECORD-{i}".encode() for i in range(5)]
    assert committed_offset(consumer, topics["input"]) == 5
    consumer.close()
    producer.close()


def test_an_aborted_transaction_is_invisible_and_leaves_the_group_offset_alone(kafka, topics, unique):
    consumer, producer, records = transform_in_transaction(kafka, topics, unique)
    assert producer.flush() == 0  # in the log, so the abort has something to hide (it would purge a queue)

    producer.abort()

    assert read_topic(kafka.bootstrap_servers, topics["output"]) == []
    # The records were written to the log, and only read_committed hides them.
    assert len(read_topic(kafka.bootstrap_servers, topics["output"], isolation="read_uncommitted", expect=5)) == 5
    assert committed_offset(consumer, topics["input"]) < 0

    # After an abort the consumer rewinds to the committed position and sees the same records again.
    consumer.seek(consumer.committed([TopicPartition(topics["input"], 0)]))
    again = consume_all(consumer, 5)
    assert [m.offset() for m in again] == [m.offset() for m in records]
    consumer.close()
    producer.close()


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(kafka, topics, unique):
    from bridge.errors import FatalKafkaError

    consumer, first, _ = transform_in_transaction(kafka, topics, unique)
    second = TransactionalProducer({"bootstrap.servers": kafka.bootstrap_servers}, f"txn-{unique}")
    second.init()  # aborts the first one's open transaction

    with pytest.raises(FatalKafkaError, match="fenced"):
        first.commit()
    assert read_topic(kafka.bootstrap_servers, topics["output"]) == []
    consumer.close()
    second.close()


def test_a_poll_returns_the_records_at_hand_without_waiting_for_a_full_batch(kafka, topics, unique):
    consumer = ReadCommittedConsumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"g-{unique}"},
                                     [topics["input"]])
    try:
        consume_all(consumer, 1)  # joined the group, fetching has begun
        started = time.monotonic()
        records = consumer.poll_batch(500, 20.0)
        while len(records) < 4 and time.monotonic() - started < 20:
            records += consumer.poll_batch(500, 20.0)
        waited = time.monotonic() - started
    finally:
        consumer.close()
    assert [record.value() for record in records] == [f"record-{i}".encode() for i in range(1, 5)]
    # 4 records of the 500 asked for: the poll returns them instead of waiting out its 20 s timeout.
    assert waited < 10, waited


def test_librdkafka_keeps_a_partition_paused_across_a_rebalance_that_takes_it_away_and_gives_it_back(kafka, topics,
                                                                                                     unique):
    """What the run loop's pause bookkeeping relies on (it sets the pause state again after every assignment):
    a partition paused, revoked and assigned again stays paused until resumed. (Kafka's Java consumer forgets the
    pause instead.)"""
    assigned = []
    config = {"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"g-{unique}", "session.timeout.ms": 6000}
    first = ReadCommittedConsumer(config, [topics["input"]], on_assign=assigned.append)
    consume_all(first, 1)
    first.seek({(topics["input"], 0): 0})
    first.pause(first.assignment())
    other = ReadCommittedConsumer(config, [topics["input"]])  # joins: an eager rebalance revokes everything
    deadline = time.monotonic() + 60
    while len(assigned) < 2 and time.monotonic() < deadline:
        assert first.poll_batch(10, 0.2) == []
        other.poll_batch(10, 0.2)  # reads the partition if the join gives it to the other
    assert len(assigned) == 2, "no rebalance"
    other.close()  # leaves: the partition comes back to the first (if the join gave it away)
    while (not first.assignment() or assigned[-1] == []) and time.monotonic() < deadline:
        assert first.poll_batch(10, 0.2) == []
    assert [tp.partition for tp in first.assignment()] == [0]
    settle = time.monotonic() + 3
    while time.monotonic() < settle:
        assert first.poll_batch(10, 0.2) == [], "the partition came back unpaused"
    first.resume(first.assignment())
    assert len(consume_all(first, 4)) >= 4
    first.close()
