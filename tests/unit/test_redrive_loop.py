"""The redrive's bookkeeping of partitions with a fake consumer and producer (no Kafka)."""

import threading
import time

import pytest
from confluent_kafka import TopicPartition

from bridge.config import Settings
from bridge.errors import FetchError
from bridge.records import DeadLetter, Record
from bridge.redrive import runner
from bridge.redrive.options import RedriveOptions
from bridge.redrive.runner import Outcome, Redrive
from bridge.redrive.selection import Selection
from bridge.redrive.topics import TopicView

DLQ = "dlq"
MARKER = None  # a transaction's commit marker: it takes an offset, and no poll returns it


class FakeMessage:
    def __init__(self, partition, offset):
        self._partition, self._offset = partition, offset
        record = Record("in", partition, offset, b"k", f"http://h/{partition}-{offset}.png".encode())
        self._value = DeadLetter.from_error(record, FetchError("HTTP 503")).value()

    def topic(self):
        return DLQ

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return b"k"

    def value(self):
        return self._value

    def timestamp(self):
        return 1, 1_700_000_000_000


class LibrdkafkaLikeConsumer:
    """Partitions as librdkafka keeps them: a position only once fetching began, commit markers stepped over,
    and a pause that outlives the partition's assignment."""

    def __init__(self, logs):
        self.logs = logs  # partition -> its records: True for a dead letter, MARKER for a commit marker
        self.owned = []
        self.fetching = {}  # partition -> the next offset to fetch, once fetching began
        self.paused_partitions = set()
        self.stalled = set()  # partitions whose fetches bring nothing yet
        self.group_offsets = {}

    def assign(self, partitions):
        self.owned = list(partitions)

    def unassign(self):
        self.owned, self.fetching = [], {}  # the pause flags stay, as in librdkafka

    def poll_batch(self, max_records, timeout):
        batch = []
        for partition in self.owned:
            if partition in self.paused_partitions or partition in self.stalled:
                continue
            offset = self.fetching.setdefault(partition, max(self.group_offsets.get(partition, 0), 0))
            while offset < len(self.logs[partition]) and len(batch) < max_records:
                if self.logs[partition][offset] is not MARKER:
                    batch.append(FakeMessage(partition, offset))
                offset += 1
            self.fetching[partition] = offset
        return batch

    def committed(self, partitions, timeout=10.0):
        return {(tp.topic, tp.partition): self.group_offsets.get(tp.partition, -1001) for tp in partitions}

    def positions(self):
        return {(DLQ, p): offset for p, offset in self.fetching.items() if p in self.owned}

    def pause(self, partitions):
        self.paused_partitions.update(tp.partition for tp in partitions)

    def resume(self, partitions):
        self.paused_partitions.difference_update(tp.partition for tp in partitions)

    def seek(self, offsets):
        for (_topic, partition), offset in offsets.items():
            self.fetching[partition] = offset

    def group_metadata(self):
        return "metadata"


class FakeProducer:
    def __init__(self, config, transactional_id, timeout):
        self.in_transaction = False
        self.sent = []
        self.committed_offsets = []

    def begin(self):
        self.in_transaction = True

    def produce(self, topic, value, key=None, headers=None, partition=None):
        self.sent.append(value)

    def send_offsets(self, offsets, metadata):
        self.committed_offsets.append({tp.partition: tp.offset for tp in offsets})

    def commit(self):
        self.in_transaction = False


@pytest.fixture
def make_redrive(monkeypatch):
    monkeypatch.setattr(runner, "TransactionalProducer", FakeProducer)

    def make(logs, transaction_records):
        view = TopicView(ends={(DLQ, p): len(log) for p, log in logs.items()},
                         lows={(DLQ, p): 0 for p in logs}, input_partitions=len(logs), group_offsets={})
        options = RedriveOptions(Selection(), transaction_records=transaction_records)
        settings = Settings(dead_letter_topic=DLQ, input_topic="in", progress_interval_ms=0)
        redrive = Redrive(settings, options, "g-redrive", view, stop=threading.Event())
        consumer = LibrdkafkaLikeConsumer(logs)
        redrive.consumer = consumer
        return redrive, consumer
    return make


def rebalance(redrive, consumer, taken, given):
    """An eager rebalance, as librdkafka serves it inside a poll: revoke, then assign."""
    redrive._on_revoke([TopicPartition(DLQ, p) for p in taken])
    consumer.unassign()
    consumer.assign(given)
    redrive._on_assign([TopicPartition(DLQ, p) for p in given])


def test_a_partition_finished_and_paused_before_a_rebalance_is_read_again_when_it_comes_back(make_redrive):
    """Partition 0 reaches its end (its commit marker) in a poll that read nothing, so its committed offset stays
    before the marker; an eager rebalance takes both partitions and gives them back: librdkafka still has 0 paused,
    and the redrive must resume it or it never reaches its end."""
    redrive, consumer = make_redrive({0: [True, True, MARKER], 1: [True, True]}, transaction_records=2)
    rebalance(redrive, consumer, taken=[], given=[0, 1])
    consumer.stalled = {1}
    redrive._start_new_partitions()
    redrive._handle(consumer.poll_batch(2, 0))  # the two dead letters of 0, committed at offset 2
    redrive._handle(consumer.poll_batch(2, 0))  # the marker alone: 0 is at its end, nothing to commit
    assert redrive.producer.committed_offsets == [{0: 2}]
    assert redrive.partitions[(DLQ, 0)].paused and 0 in consumer.paused_partitions
    consumer.group_offsets = {0: 2}
    rebalance(redrive, consumer, taken=[0, 1], given=[0, 1])
    consumer.stalled = set()
    assert redrive._loop(time.monotonic() + 2) is Outcome.END
    assert redrive.tally.read == 4 and len(redrive.producer.sent) == 4
