"""The transaction's bookkeeping with fake Kafka clients: what is produced, committed, rewound and refused."""

import json

import pytest
from confluent_kafka import KafkaError

from bridge.kafka.checkpoint import Checkpoint, OutputTopics
from bridge.errors import OutputError, TransactionAborted
from bridge.records import OutputMessage, Record


class FakeMessage:
    def __init__(self, topic):
        self._topic = topic

    def topic(self):
        return self._topic


class FakeProducer:
    def __init__(self):
        self.in_transaction = False
        self.produced = []
        self.committed_offsets = []
        self.aborts = 0
        self.refuse_larger_than = None
        self.delivery_errors = {}  # topic -> KafkaError code reported for records sent there
        self.pending_reports = []
        self.commit_error = None

    def begin(self):
        self.in_transaction = True

    def produce(self, topic, value, key=None, headers=None, partition=None, on_delivery=None):
        if self.refuse_larger_than is not None and len(value) > self.refuse_larger_than:
            raise OutputError(f"Kafka refused a record of {len(value)} bytes")
        self.produced.append((topic, json.loads(value), partition))
        code = self.delivery_errors.get(topic)
        if code is not None:
            self.pending_reports.append((on_delivery, KafkaError(code, "refused"), FakeMessage(topic)))

    def serve_deliveries(self):
        for report, error, message in self.pending_reports:
            report(error, message)
        self.pending_reports.clear()

    def send_offsets(self, offsets, metadata):
        self.committed_offsets.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def commit(self):
        if self.commit_error:
            raise self.commit_error
        self.in_transaction = False

    def abort(self):
        self.aborts += 1
        self.in_transaction = False


class FakeConsumer:
    def __init__(self):
        self.seeks = []

    def group_metadata(self):
        return "metadata"

    def seek(self, offsets):
        self.seeks.append(dict(offsets))


def result(record, size=10):
    return OutputMessage(record, True, json.dumps({"id": "x" * size}).encode())


def records(partition, offsets):
    return [Record("in", partition, offset, None, b"v") for offset in offsets]


@pytest.fixture
def parts():
    producer, consumer = FakeProducer(), FakeConsumer()
    return producer, consumer, Checkpoint(producer, consumer, OutputTopics("out", "dlq", {"out": 3, "dlq": 1}))


def test_commits_the_positions_it_is_given_with_the_produced_outcomes(parts):
    producer, _, checkpoint = parts
    batch = records(0, [4, 5, 6]) + records(2, [10])
    checkpoint.produce([result(r) for r in batch])
    assert checkpoint.pending == 4 and producer.in_transaction
    checkpoint.commit({("in", 0): 7, ("in", 2): 11})
    assert producer.committed_offsets == [{("in", 0): 7, ("in", 2): 11}]
    assert checkpoint.pending == 0 and not producer.in_transaction
    assert [partition for _, _, partition in producer.produced] == [0, 0, 0, 2]


def test_nothing_to_produce_opens_no_transaction(parts):
    producer, _, checkpoint = parts
    checkpoint.produce([])
    checkpoint.commit({})
    assert not producer.in_transaction and producer.committed_offsets == []


def test_an_aborted_commit_goes_up_for_the_loop_to_rewind(parts):
    producer, _, checkpoint = parts
    producer.commit_error = TransactionAborted("commit_transaction: abortable")
    checkpoint.produce([result(r) for r in records(1, [3, 4])])
    with pytest.raises(TransactionAborted):
        checkpoint.commit({("in", 1): 5})
    checkpoint.abort()
    assert producer.aborts == 1 and checkpoint.pending == 0


def test_a_record_the_producer_refuses_becomes_its_small_dead_letter(parts):
    producer, _, checkpoint = parts
    producer.refuse_larger_than = 5000
    batch = records(0, [0, 1])
    checkpoint.produce([result(batch[0], size=100_000), result(batch[1])])
    (topic0, letter, _), (topic1, _, _) = producer.produced
    assert (topic0, topic1) == ("dlq", "out")
    assert letter["error"]["stage"] == "output" and "refused" in letter["error"]["message"]


def test_a_result_the_broker_refused_is_a_dead_letter_when_the_transaction_is_redone(parts):
    producer, _, checkpoint = parts
    producer.delivery_errors["out"] = KafkaError.MSG_SIZE_TOO_LARGE
    batch = records(0, [8])
    with pytest.raises(TransactionAborted, match="could not be delivered"):
        checkpoint.produce([result(batch[0])])
    checkpoint.abort()

    producer.delivery_errors.clear()
    checkpoint.produce([result(batch[0])])  # the redo
    checkpoint.commit({("in", 0): 9})
    topic, letter, _ = producer.produced[-1]
    assert topic == "dlq" and letter["error"]["type"] == "OutputError"
    assert checkpoint.refused == {}  # used once


def test_a_replaced_producers_failed_deliveries_do_not_count_against_the_new_transaction(parts):
    stuck, _, checkpoint = parts
    stuck.delivery_errors["out"] = KafkaError._FENCED  # its report comes only after it was replaced
    serve_late, stuck.serve_deliveries = stuck.serve_deliveries, lambda: None
    checkpoint.produce([result(r) for r in records(0, [0])])
    fresh = FakeProducer()
    checkpoint.replace_producer(fresh)
    assert checkpoint.pending == 0 and checkpoint.producer is fresh
    checkpoint.produce([result(r) for r in records(0, [0])])
    serve_late()  # the fenced producer's report arrives now
    checkpoint.produce([result(r) for r in records(0, [1])])  # would raise if it counted
    checkpoint.commit({("in", 0): 2})
    assert fresh.committed_offsets == [{("in", 0): 2}]


def test_reports_of_records_an_abort_purged_do_not_count_against_the_next_transaction(parts):
    producer, _, checkpoint = parts
    producer.delivery_errors["out"] = KafkaError._PURGE_QUEUE  # librdkafka reports these after abort_transaction
    serve_late, producer.serve_deliveries = producer.serve_deliveries, lambda: None
    checkpoint.produce([result(r) for r in records(0, [0, 1])])
    checkpoint.abort()
    producer.delivery_errors.clear()
    producer.serve_deliveries = serve_late
    checkpoint.produce([result(r) for r in records(0, [0, 1])])  # the redo serves the purged reports: no abort
    checkpoint.commit({("in", 0): 2})
    assert producer.committed_offsets == [{("in", 0): 2}] and producer.aborts == 1
