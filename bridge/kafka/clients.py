"""Thin wrappers over confluent-kafka for exactly-once work: a transactional producer and a
read_committed consumer that never commits on its own.

Transaction policy (when to commit, what to redo) lives in bridge.kafka.checkpoint; this module turns librdkafka's
errors into the bridge's exceptions and keeps every call bounded in time:
    txn_requires_abort(), or the state error librdkafka answers after one      -> TransactionAborted
    the transaction coordinator moving or busy settling the last transaction   -> retried until the deadline, then
    (COORDINATOR_BUSY: librdkafka hands these up without the retriable flag)      TransactionAborted
    fatal()                                                                    -> FatalKafkaError
    fatal() INVALID_TXN_STATE (a new producer can settle it)                   -> ProducerUnusable
    commit or abort still failing retriably at the deadline, or librdkafka     -> ProducerUnusable
    refusing a call because an earlier one is still in progress (_CONFLICT):
    librdkafka goes on with it in the background and accepts nothing but the
    same call again, so only a new producer (which fences this one) settles it
    a call that has not returned within its deadline                           -> KafkaCallHung (a FatalKafkaError)
    retriable()                                                                -> retried until the deadline
    any other error of send_offsets_to_transaction or commit_transaction       -> TransactionAborted (a broker
                                                                                  gone mid-call; redoing is safe)
    any error of abort_transaction but a fence                                 -> ProducerUnusable
    a record larger than message.max.bytes                                     -> OutputError (that record's)
librdkafka is known to ignore the timeout of some transactional calls when the group coordinator goes away, so
each one runs on a worker thread and the caller waits for it no longer than its deadline (and stays responsive
to signals meanwhile). librdkafka's own log lines and errors go to the "bridge.librdkafka" logger.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from bridge.errors import (ConfigError, FatalKafkaError, KafkaCallHung, KafkaTransactionError, OutputError,
                           ProducerUnusable, TransactionAborted)

log = logging.getLogger(__name__)
librdkafka_log = logging.getLogger("bridge.librdkafka")
T = TypeVar("T")

Headers = Sequence[tuple[str, bytes]]
PartitionKey = tuple[str, int]
DeliveryCallback = Callable[[KafkaError | None, Message], None]
GRACE = 5.0  # seconds a call may take beyond the timeout it was given before it counts as hung
# The transaction coordinator moved (a broker lost) or has not finished the last transaction's markers. Kafka's own
# clients retry these; librdkafka hands them up from send_offsets_to_transaction without the retriable flag (seen
# on a three-node cluster with a broker killed or frozen).
COORDINATOR_BUSY = frozenset({KafkaError.CONCURRENT_TRANSACTIONS, KafkaError.NOT_COORDINATOR,
                              KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS})


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def classify(what: str, exc: KafkaException,
             otherwise: type[KafkaTransactionError] = KafkaTransactionError) -> KafkaTransactionError:
    """The bridge exception for a failed producer call: fatal, unusable, abort-required, or else `otherwise`."""
    error = _kafka_error(exc)
    if error is None:
        return otherwise(f"{what}: {exc}")
    if error.code() == KafkaError._CONFLICT:
        # e.g. abort_transaction after commit_transaction timed out: librdkafka still runs the commit.
        return ProducerUnusable(f"{what}: {error.str()}")
    if error.fatal() and error.code() == KafkaError.INVALID_TXN_STATE:
        # The coordinator and librdkafka disagree on the transaction (seen after a broker kill on a cluster):
        # only a new producer's init_transactions settles it. A fence is different: another instance holds the id.
        return ProducerUnusable(f"{what}: {error.str()}")
    if error.fatal():
        return FatalKafkaError(f"{what}: {error.str()} (fatal: another instance with the same "
                               "transactional.id may have fenced this one)")
    # After an abortable error librdkafka refuses new work with _STATE, without the abortable flag. A coordinator
    # that stays busy with the previous transaction: abort this one and redo it, which is always safe.
    if error.txn_requires_abort() or error.code() == KafkaError._STATE or error.code() in COORDINATOR_BUSY:
        return TransactionAborted(f"{what}: {error.str()}")
    return otherwise(f"{what}: {error.str()}")


def _retriable(error: KafkaError | None) -> bool:
    return (error is not None and not error.fatal() and not error.txn_requires_abort()
            and (error.retriable() or error.code() in COORDINATOR_BUSY))


class CallGuard:
    """Runs blocking client calls on a daemon thread each and waits for each no longer than its deadline. A call
    stuck in librdkafka for good leaves only its thread behind, which never holds up the process's exit."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, what: str, call: Callable[[], T], deadline: float, serve: Callable[[], object] | None = None) -> T:
        """call()'s value or exception; KafkaCallHung if it has not returned by the deadline (monotonic).

        serve: called about twice a second while waiting, e.g. to serve the client's log lines, errors and
        delivery reports on the calling thread, so they are not held back while the call blocks."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def work() -> None:
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

        threading.Thread(target=work, name=self.name, daemon=True).start()
        while True:
            try:
                return future.result(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                if time.monotonic() >= deadline:
                    # The thread stays stuck in librdkafka: this client is unusable from now on.
                    raise KafkaCallHung(f"{what} did not return within its deadline; Kafka is unreachable or "
                                        "its coordinator moved, and librdkafka cannot recover this client") from None
                if serve is not None:
                    serve()


def call_transactional(what: str, call: Callable[[float], T], timeout: float, guard: CallGuard,
                       sleep: Callable[[float], None] = time.sleep, serve: Callable[[], object] | None = None,
                       ends_transaction: bool = False,
                       otherwise: type[KafkaTransactionError] = KafkaTransactionError) -> T:
    """Run a producer transaction call (given the seconds it may take), retrying retriable errors, all within
    `timeout`; the rest are classified. The call runs under `guard`, so it cannot block past the deadline.

    ends_transaction: commit_transaction or abort_transaction. A retriable error from one of those (its own
    timeout, a coordinator away) means librdkafka goes on ending the transaction in the background and refuses
    any other call until it is called again: still failing at the deadline, the producer is ProducerUnusable.
    otherwise: the exception for an error classify() has no class for."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            return guard.run(what, lambda: call(max(remaining, 0.1)), deadline + GRACE, serve)
        except KafkaException as exc:
            error = _kafka_error(exc)
            if not _retriable(error) or time.monotonic() + attempt * 0.2 >= deadline:
                if ends_transaction and _retriable(error):
                    raise ProducerUnusable(f"{what} still failing after {timeout:g} s ({error.str()}); librdkafka "
                                           "accepts no other call until it completes") from exc
                raise classify(what, exc, otherwise) from exc
            log.warning("%s failed (%s); retrying", what, error.str())
            sleep(attempt * 0.2)


def committed_offsets(consumer: Consumer, partitions: Sequence[TopicPartition], timeout: float,
                      sleep: Callable[[float], None] = time.sleep) -> dict[PartitionKey, int]:
    """A consumer's group's committed offset per partition (negative when none is committed), asked again while the
    group coordinator moves or loads (a broker lost) until `timeout`; the KafkaException past it, or at once for any
    other error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = consumer.committed(list(partitions), max(0.1, deadline - time.monotonic()))
            return {(tp.topic, tp.partition): tp.offset for tp in answer}
        except KafkaException as exc:
            error = _kafka_error(exc)
            if not _retriable(error) or time.monotonic() + 0.2 >= deadline:
                raise
            log.warning("reading the group's committed offsets failed (%s); asking again", error.str())
            sleep(0.2)


def _create(client: Callable[[dict], T], config: dict[str, Any]) -> T:
    """A confluent-kafka client logging through the bridge; a configuration librdkafka refuses is a ConfigError."""
    try:
        return client({"logger": librdkafka_log, "error_cb": _log_client_error, **config})
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid Kafka configuration: {exc.args[0].str() if _kafka_error(exc) else exc}") from None


def _log_client_error(error: KafkaError) -> None:
    # Transport errors (broker down, all brokers down) are what librdkafka recovers from by itself.
    level = logging.ERROR if error.fatal() else logging.WARNING
    librdkafka_log.log(level, "client error: %s", error.str())


class TransactionalProducer:
    """A confluent-kafka Producer with a transactional.id: every produce happens inside begin()..commit().

    timeout: the deadline of each transaction call, and how long produce() waits for room in a full queue."""

    def __init__(self, config: Mapping[str, Any], transactional_id: str, timeout: float = 30.0) -> None:
        self.transactional_id = transactional_id
        self.timeout = timeout
        self._producer = _create(Producer, {
            **config,
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
        })
        self._guard = CallGuard("kafka-txn")
        self.in_transaction = False

    def _transactional(self, what: str, call: Callable[[float], T], ends_transaction: bool = False,
                       otherwise: type[KafkaTransactionError] = KafkaTransactionError) -> T:
        return call_transactional(what, call, self.timeout, self._guard, serve=self.serve_deliveries,
                                  ends_transaction=ends_transaction, otherwise=otherwise)

    def init(self) -> None:
        """Register the transactional.id, fencing older instances that used it; aborts their open work."""
        self._transactional("init_transactions", self._producer.init_transactions)

    def begin(self) -> None:
        self._transactional("begin_transaction", lambda _timeout: self._producer.begin_transaction())
        self.in_transaction = True

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: Headers | None = None, partition: int | None = None,
                on_delivery: DeliveryCallback | None = None) -> None:
        """Queue one record in the open transaction, waiting up to `timeout` for room if librdkafka's queue is
        full (then TransactionAborted). partition None: the default partitioner (by key).
        OutputError if librdkafka refuses this record alone (larger than message.max.bytes)."""
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        if on_delivery is not None:
            extra["on_delivery"] = on_delivery
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=list(headers or ()), **extra)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise TransactionAborted(f"produce: librdkafka's queue stayed full for {self.timeout:g} s")
                self._producer.poll(0.05)
            except KafkaException as exc:
                error = _kafka_error(exc)
                if error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise OutputError(f"Kafka refused a record of {len(value or b'')} bytes: {error.str()}") from None
                raise classify("produce", exc) from exc

    def serve_deliveries(self) -> None:
        """Serve librdkafka's callbacks on this thread: delivery reports, errors and log lines."""
        self._producer.poll(0)

    def send_offsets(self, offsets: Sequence[TopicPartition], group_metadata: Any) -> None:
        """Add consumer offsets (the next offset to read, per partition) to the open transaction."""
        self._transactional("send_offsets_to_transaction",
                            lambda timeout: self._producer.send_offsets_to_transaction(offsets, group_metadata,
                                                                                       timeout),
                            otherwise=TransactionAborted)

    def commit(self) -> None:
        """Commit the open transaction. On TransactionAborted the caller must still call abort()."""
        self._transactional("commit_transaction", self._producer.commit_transaction, ends_transaction=True,
                            otherwise=TransactionAborted)
        self.in_transaction = False

    def abort(self) -> None:
        """Abort the open transaction. ProducerUnusable if that fails: a new producer's init aborts it instead."""
        try:
            self._transactional("abort_transaction", self._producer.abort_transaction, ends_transaction=True)
        except FatalKafkaError:
            raise
        except KafkaTransactionError as exc:
            raise ProducerUnusable(str(exc)) from exc
        self.in_transaction = False

    def flush(self) -> int:
        """Wait until queued records reach the broker (still uncommitted); returns how many remain queued."""
        return self._guard.run("flush", lambda: self._producer.flush(self.timeout),
                               time.monotonic() + self.timeout + GRACE)

    def close(self) -> None:
        """Deliver what is queued (within the deadline)."""
        self.flush()


class ReadCommittedConsumer:
    """A Consumer that reads only committed records and whose offsets move only through a transaction."""

    def __init__(self, config: Mapping[str, Any], topics: Sequence[str], *,
                 on_assign: Callable[[list[TopicPartition]], None] | None = None,
                 on_revoke: Callable[[list[TopicPartition]], None] | None = None,
                 on_lost: Callable[[list[TopicPartition]], None] | None = None, close_timeout: float = 30.0) -> None:
        self.close_timeout = close_timeout
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
        """Up to max_records records, as soon as there is one (or none after timeout). Transient consumer errors
        are logged (librdkafka recovers by itself); a fatal one (e.g. another member with the same
        group.instance.id) raises FatalKafkaError."""
        # consume(n, timeout) waits until it has all n or the timeout passes, even with records at hand: wait
        # for the first, then take what else is already fetched without waiting.
        messages = self._consumer.consume(1, timeout)
        if messages and max_records > 1:
            messages += self._consumer.consume(max_records - 1, 0)
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.fatal() or error.code() == KafkaError._FATAL:  # the latter: how a fatal error reaches poll
                raise FatalKafkaError(f"Kafka consumer failed: {error.str()}")
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

    def committed(self, partitions: Sequence[TopicPartition], timeout: float = 10.0,
                  sleep: Callable[[float], None] = time.sleep) -> dict[PartitionKey, int]:
        """The group's committed offset per partition (negative when none is committed). A group coordinator that
        moved or is loading (a broker lost) is asked again until `timeout`; FatalKafkaError if the broker has not
        answered by then: not knowing where to resume, the bridge must not guess."""
        try:
            return committed_offsets(self._consumer, partitions, timeout, sleep)
        except KafkaException as exc:
            raise FatalKafkaError(f"cannot read the group's committed offsets: {exc}") from None

    def positions(self) -> dict[PartitionKey, int]:
        """The read position of each assigned partition that has one (no network call)."""
        return {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(self.assignment())
                if tp.offset >= 0}

    def high_watermarks(self) -> dict[PartitionKey, int]:
        """The high watermark of each assigned partition, as of the last fetch (no network call)."""
        marks = {}
        for tp in self.assignment():
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                marks[(tp.topic, tp.partition)] = high
        return marks

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
        """Leave the group (running the revoke callback) within close_timeout; FatalKafkaError if it hangs."""
        CallGuard("kafka-close").run("closing the consumer", self._consumer.close,
                                     time.monotonic() + self.close_timeout)
