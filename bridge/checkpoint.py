"""One Kafka transaction's worth of processed records: their results, dead letters and input offsets.

Protocol (the order of confluent-kafka's eos_transactions example, plus the abort path it leaves out):
    1. begin the transaction at the first add()
    2. produce every outcome, in input offset order
    3. commit(): send the input positions (last offset + 1 per partition) with the consumer group metadata,
       then commit_transaction; results and offsets become visible together
    4. on TransactionAborted: abort, seek each partition back to the first offset of the transaction
       (= the group's committed offset), and let the loop redo the records
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from bridge.errors import TransactionAborted
from bridge.kafka import PartitionKey, ReadCommittedConsumer, TransactionalProducer
from bridge.records import DeadLetter, Outcome, Record, Result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputTopics:
    results: str
    dead_letters: str
    partitions: dict[str, int]  # partition count per output topic

    def partition_for(self, topic: str, record: Record) -> int | None:
        """Keyed records follow the default partitioner; unkeyed ones stay with their input partition's number,
        so one output partition holds each input partition's outputs in offset order."""
        if record.key is not None:
            return None
        return record.partition % self.partitions[topic]


class Checkpoint:
    def __init__(self, producer: TransactionalProducer, consumer: ReadCommittedConsumer,
                 topics: OutputTopics) -> None:
        self.producer = producer
        self.consumer = consumer
        self.topics = topics
        self._first: dict[PartitionKey, int] = {}  # where to rewind to on abort
        self._next: dict[PartitionKey, int] = {}  # the positions to commit
        self.pending = 0  # records in the open transaction

    def add(self, records: Sequence[Record], outcomes: Sequence[Outcome]) -> None:
        """Produce the outcomes of processed records in the open transaction (begun if needed)."""
        if not self.producer.in_transaction:
            self.producer.begin()
        for record, outcome in zip(records, outcomes, strict=True):
            self._produce(outcome)
            self.pending += 1
            key = (record.topic, record.partition)
            self._first.setdefault(key, record.offset)
            self._next[key] = max(self._next.get(key, 0), record.offset + 1)

    def _produce(self, outcome: Outcome) -> None:
        record = outcome.record
        if isinstance(outcome, Result):
            topic, headers = self.topics.results, None
        else:
            assert isinstance(outcome, DeadLetter)
            topic, headers = self.topics.dead_letters, outcome.headers()
        self.producer.produce(topic, outcome.value(), key=record.key, headers=headers,
                              partition=self.topics.partition_for(topic, record))

    def commit(self) -> bool:
        """Commit outputs and offsets together. False if the transaction had to be aborted (records rewound)."""
        if not self.producer.in_transaction:
            return True
        try:
            offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in self._next.items()]
            self.producer.send_offsets(offsets, self.consumer.group_metadata())
            self.producer.commit()
        except TransactionAborted as exc:
            log.warning("transaction aborted (%s); redoing %d records", exc, self.pending)
            self.abort()
            return False
        self._clear()
        return True

    def abort(self, keep_positions_of: Collection[PartitionKey] = (),
              also_rewind: Mapping[PartitionKey, int] | None = None) -> None:
        """Abort the open transaction and seek its partitions back so the records are read again.

        keep_positions_of: partitions not to seek (lost: the next owner starts from the committed offset).
        also_rewind: positions of records consumed after the transaction's (an unfinished batch); a partition
        in the transaction goes back to the transaction's first offset, which is earlier.
        """
        if self.producer.in_transaction:
            self.producer.abort()
        rewind = {**(also_rewind or {}), **self._first}
        rewind = {key: offset for key, offset in rewind.items() if key not in keep_positions_of}
        self.consumer.seek(rewind)
        self._clear()

    def _clear(self) -> None:
        self._first.clear()
        self._next.clear()
        self.pending = 0
