"""One Kafka transaction's worth of processed records: their results, dead letters and input offsets.

Protocol (the order of confluent-kafka's eos_transactions example, plus the abort path it leaves out):
    1. begin the transaction at the first produce()
    2. produce every outcome, each input partition's in offset order
    3. commit(positions): send the input positions (the offset after the last produced record, per partition)
       with the consumer group metadata, then commit_transaction; results and offsets become visible together
    4. on TransactionAborted: abort(); the run loop seeks the partitions back to the last committed positions
       (bridge.loop.window) and redoes the records
    5. on ProducerUnusable (a call stuck in librdkafka, or a state only a new producer settles): the run loop hands
       over a new producer (replace_producer);
       whether the stuck transaction committed is known only to the broker, so the loop rewinds to the group's
       committed offsets as the broker reports them

A record Kafka refuses on its own (larger than the producer's or the topic's limit) becomes a small dead letter
instead: at once when the producer refuses it, and on the redo when the broker's delivery report refused it
(`refused` remembers it across the abort).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, TopicPartition

from bridge.errors import OutputError, TransactionAborted
from bridge.kafka.clients import DeliveryCallback, PartitionKey, ReadCommittedConsumer, TransactionalProducer
from bridge.records import DeadLetter, OutputMessage, Record, encode_short_dead_letter

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
        self.produced: list[OutputMessage] = []  # what the open transaction holds, as sent
        self._undelivered = 0  # delivery reports with an error, in the open transaction
        # Records whose result the broker refused, by (topic, partition, offset): dead letters when redone.
        self.refused: dict[tuple[str, int, int], str] = {}

    def produce(self, messages: Sequence[OutputMessage]) -> None:
        """Produce encoded outcomes in the open transaction (begun if needed). TransactionAborted if the
        producer needs an abort, or a record of the transaction was not delivered."""
        if not messages:
            return
        if not self.producer.in_transaction:
            self.producer.begin()
        for message in messages:
            self._produce(message)
        self.producer.serve_deliveries()
        if self._undelivered:
            raise TransactionAborted(f"{self._undelivered} record(s) of the transaction could not be delivered")

    @property
    def pending(self) -> int:
        """Records in the open transaction."""
        return len(self.produced)

    def _produce(self, message: OutputMessage) -> None:
        coordinates = _coordinates(message.record)
        if coordinates in self.refused:
            message = self._refused_letter(message, self.refused.pop(coordinates))
        try:
            self._send(message)
        except OutputError as error:  # the producer refused this record alone: its dead letter instead
            message = self._refused_letter(message, str(error))
            self._send(message)
        self.produced.append(message)

    def _send(self, message: OutputMessage) -> None:
        record = message.record
        topic = self.topics.results if message.is_result else self.topics.dead_letters
        self.producer.produce(topic, message.value, key=record.key, headers=message.headers,
                              partition=self.topics.partition_for(topic, record),
                              on_delivery=self._delivery_report(record))

    def _refused_letter(self, refused: OutputMessage, reason: str) -> OutputMessage:
        return encode_short_dead_letter(DeadLetter.from_error(refused.record, OutputError(reason)), refused.trace)

    def _delivery_report(self, record: Record) -> DeliveryCallback:
        sender = self.producer

        def report(error: KafkaError | None, message: Message) -> None:
            if error is None or sender is not self.producer or error.code() in _PURGED:
                return  # delivered, or a report about a transaction already given up: not the open one
            self._undelivered += 1
            log.warning("record for %s[%d]@%d not delivered to %s: %s", record.topic, record.partition,
                        record.offset, message.topic(), error.str())
            if error.code() in _REFUSED_RECORD and message.topic() == self.topics.results:
                self.refused[_coordinates(record)] = f"Kafka refused the result: {error.str()}"
        return report

    def commit(self, positions: Mapping[PartitionKey, int]) -> list[OutputMessage]:
        """Commit the produced outcomes with the input positions; returns the messages committed.
        TransactionAborted: the caller aborts and rewinds."""
        if not self.producer.in_transaction:
            return []
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
        self.producer.send_offsets(offsets, self.consumer.group_metadata())
        self.producer.commit()
        self.producer.serve_deliveries()
        committed = self.produced
        self._clear()
        return committed

    def abort(self) -> None:
        """Abort the open transaction, if any; its outcomes never become visible."""
        if self.producer.in_transaction:
            self.producer.abort()
        self._clear()

    def replace_producer(self, producer: TransactionalProducer) -> None:
        """Go on with a new producer, its transactions fresh (the stuck one's fate is the broker's to settle)."""
        self.producer = producer
        self._clear()

    def _clear(self) -> None:
        self.produced = []
        self._undelivered = 0


# What an abort does to the records it drops; their reports may arrive after the next transaction has begun.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
# Delivery errors that are about the record itself, not the broker's state: redoing it cannot succeed.
_REFUSED_RECORD = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD})


def _coordinates(record: Record) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset
