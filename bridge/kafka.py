"""Thin wrappers over confluent-kafka for exactly-once work: a transactional producer and a
read_committed consumer that never commits on its own.

Transaction policy (when to commit, what to redo) lives in bridge.checkpoint; this module only turns
librdkafka's error flags into the bridge's exceptions: txn_requires_abort() -> TransactionAborted,
fatal() -> FatalKafkaError, retriable() -> retried here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from bridge.errors import BridgeError, ConfigError, FatalKafkaError, KafkaTransactionError, TransactionAborted

log = logging.getLogger(__name__)
T = TypeVar("T")

Headers = Sequence[tuple[str, bytes]]
PartitionKey = tuple[str, int]


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def classify(what: str, exc: KafkaException) -> KafkaTransactionError:
    """The bridge exception for a failed producer call: fatal, abort-required, or plain."""
    error = _kafka_error(exc)
    if error is None:
        return KafkaTransactionError(f"{what}: {exc}")
    if error.fatal():
        return FatalKafkaError(f"{what}: {error.str()} (fatal: another instance with the same "
                               "transactional.id may have fenced this one)")
    if error.txn_requires_abort():
        return TransactionAborted(f"{what}: {error.str()}")
    return KafkaTransactionError(f"{what}: {error.str()}")


def call_transactional(what: str, call: Callable[[], T], attempts: int = 5, backoff: float = 0.5,
                       sleep: Callable[[float], None] = time.sleep) -> T:
    """Run a producer transaction call, retrying retriable errors and classifying the rest."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except KafkaException as exc:
            error = _kafka_error(exc)
            retriable = error is not None and error.retriable() and not error.fatal() \
                and not error.txn_requires_abort()
            if not retriable or attempt == attempts:
                raise classify(what, exc) from exc
            log.warning("%s failed (%s); retrying", what, error.str())
            sleep(backoff * attempt)
    raise AssertionError("unreachable")


def _create(client: Callable[[dict], T], config: dict[str, Any]) -> T:
    """A confluent-kafka client; a configuration librdkafka refuses is a ConfigError."""
    try:
        return client(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid Kafka configuration: {exc.args[0].str() if _kafka_error(exc) else exc}") from None


class TransactionalProducer:
    """A confluent-kafka Producer with a transactional.id: every produce happens inside begin()..commit()."""

    def __init__(self, config: Mapping[str, Any], transactional_id: str, timeout: float = 30.0) -> None:
        self.transactional_id = transactional_id
        self.timeout = timeout
        self._producer = _create(Producer, {
            **config,
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
        })
        self.in_transaction = False

    def init(self) -> None:
        """Register the transactional.id, fencing older instances that used it; aborts their open work."""
        call_transactional("init_transactions", lambda: self._producer.init_transactions(self.timeout))

    def begin(self) -> None:
        call_transactional("begin_transaction", self._producer.begin_transaction)
        self.in_transaction = True

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: Headers | None = None, partition: int | None = None) -> None:
        """Queue one record in the open transaction; waits for room if librdkafka's queue is full.
        partition None: the default partitioner (by key)."""
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=list(headers or ()), **extra)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise classify("produce", exc) from exc

    def send_offsets(self, offsets: Sequence[TopicPartition], group_metadata: Any) -> None:
        """Add consumer offsets (the next offset to read, per partition) to the open transaction."""
        call_transactional("send_offsets_to_transaction",
                           lambda: self._producer.send_offsets_to_transaction(offsets, group_metadata, self.timeout))

    def commit(self) -> None:
        """Commit the open transaction. On TransactionAborted the caller must still call abort()."""
        call_transactional("commit_transaction", lambda: self._producer.commit_transaction(self.timeout))
        self.in_transaction = False

    def abort(self) -> None:
        call_transactional("abort_transaction", lambda: self._producer.abort_transaction(self.timeout))
        self.in_transaction = False

    def flush(self) -> int:
        """Wait until queued records reach the broker (still uncommitted); returns how many remain queued."""
        return self._producer.flush(self.timeout)

    def close(self) -> None:
        self._producer.flush(self.timeout)


class ReadCommittedConsumer:
    """A Consumer that reads only committed records and whose offsets move only through a transaction."""

    def __init__(self, config: Mapping[str, Any], topics: Sequence[str], *,
                 on_assign: Callable[[list[TopicPartition]], None] | None = None,
                 on_revoke: Callable[[list[TopicPartition]], None] | None = None,
                 on_lost: Callable[[list[TopicPartition]], None] | None = None) -> None:
        self._consumer = _create(Consumer, {
            "auto.offset.reset": "earliest",
            **config,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
        })
        callbacks: dict[str, Any] = {}
        if on_assign:
            callbacks["on_assign"] = lambda _consumer, partitions: on_assign(partitions)
        if on_revoke:
            callbacks["on_revoke"] = lambda _consumer, partitions: on_revoke(partitions)
        if on_lost:
            callbacks["on_lost"] = lambda _consumer, partitions: on_lost(partitions)
        self._consumer.subscribe(list(topics), **callbacks)

    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        """Up to max_records records. Transient consumer errors are logged (librdkafka recovers by itself);
        a fatal one raises BridgeError."""
        messages = self._consumer.consume(max_records, timeout)
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.fatal():
                raise BridgeError(f"Kafka consumer failed: {error.str()}")
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("Kafka consumer: %s", error.str())
        return records

    def partition_count(self, topic: str, timeout: float = 10.0) -> int | None:
        """Partitions of an existing topic, or None if the topic does not exist.
        (Asked through the consumer: a producer's metadata request may auto-create the topic.)"""
        metadata = self._consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return None
        return len(metadata.partitions)

    def assignment(self) -> list[TopicPartition]:
        return self._consumer.assignment()

    def committed(self, partitions: Sequence[TopicPartition], timeout: float = 10.0) -> dict[PartitionKey, int]:
        """The group's committed offset per partition (negative when none is committed)."""
        return {(tp.topic, tp.partition): tp.offset for tp in self._consumer.committed(list(partitions), timeout)}

    def seek(self, offsets: Mapping[PartitionKey, int]) -> None:
        """Move the read position of assigned partitions, e.g. back to the committed offsets after an abort."""
        for (topic, partition), offset in offsets.items():
            self._consumer.seek(TopicPartition(topic, partition, offset if offset >= 0 else OFFSET_BEGINNING))

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.pause(list(partitions))

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.resume(list(partitions))

    def group_metadata(self) -> Any:
        return self._consumer.consumer_group_metadata()

    def close(self) -> None:
        self._consumer.close()
