"""How librdkafka's errors become the bridge's, and that no Kafka call blocks past its deadline (no broker)."""

import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from bridge.errors import (FatalKafkaError, KafkaCallHung, KafkaTransactionError, OutputError, ProducerUnusable,
                           TransactionAborted)
from bridge.kafka.clients import CallGuard, TransactionalProducer, call_transactional, classify


def kafka_exception(code=KafkaError._TIMED_OUT, fatal=False, retriable=False, txn_requires_abort=False):
    return KafkaException(KafkaError(code, "injected", fatal=fatal, retriable=retriable,
                                     txn_requires_abort=txn_requires_abort))


@pytest.mark.parametrize("flags, kind", [
    ({"fatal": True}, FatalKafkaError),
    ({"code": KafkaError._FENCED, "fatal": True}, FatalKafkaError),
    ({"txn_requires_abort": True}, TransactionAborted),
    ({"fatal": True, "txn_requires_abort": True}, FatalKafkaError),  # fatal wins
    ({"code": KafkaError._STATE}, TransactionAborted),  # what librdkafka answers after an abortable error
    ({"code": KafkaError._UNKNOWN_TOPIC}, KafkaTransactionError),
    ({"code": KafkaError.CONCURRENT_TRANSACTIONS}, TransactionAborted),  # once retrying has not helped
    ({"code": KafkaError.NOT_COORDINATOR}, TransactionAborted),
    ({"code": KafkaError.INVALID_TXN_STATE, "fatal": True}, ProducerUnusable),  # a new producer settles it
    # e.g. abort_transaction while a timed-out commit_transaction goes on in the background
    ({"code": KafkaError._CONFLICT}, ProducerUnusable),
])
def test_classify(flags, kind):
    error = classify("commit_transaction", kafka_exception(**flags))
    assert type(error) is kind and "commit_transaction" in str(error)


def test_retriable_errors_are_retried_until_the_call_succeeds():
    guard = CallGuard("test")
    answers = [kafka_exception(retriable=True), kafka_exception(retriable=True), "done"]

    def call(timeout):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert call_transactional("commit", call, timeout=5, guard=guard, sleep=lambda _: None) == "done"


def test_a_coordinator_busy_with_the_last_transaction_is_retried_though_librdkafka_does_not_flag_it():
    guard = CallGuard("test")
    answers = [kafka_exception(code=KafkaError.CONCURRENT_TRANSACTIONS), "done"]

    def call(timeout):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert call_transactional("send_offsets_to_transaction", call, timeout=5, guard=guard,
                              sleep=lambda _: None) == "done"


def test_retriable_errors_past_the_deadline_are_classified():
    guard = CallGuard("test")

    def call(timeout):
        raise kafka_exception(retriable=True)

    with pytest.raises(KafkaTransactionError) as failed:
        call_transactional("send_offsets_to_transaction", call, timeout=0.3, guard=guard, sleep=time.sleep)
    assert not isinstance(failed.value, ProducerUnusable)  # the transaction can still be aborted


def test_a_commit_still_timing_out_at_the_deadline_makes_the_producer_unusable():
    # librdkafka goes on committing in the background and refuses the abort: only a new producer settles it.
    guard = CallGuard("test")
    timeouts = []

    def call(timeout):
        timeouts.append(timeout)
        time.sleep(timeout)
        raise kafka_exception(code=KafkaError._TIMED_OUT, retriable=True)

    with pytest.raises(ProducerUnusable, match="commit_transaction still failing"):
        call_transactional("commit_transaction", call, timeout=0.3, guard=guard, sleep=time.sleep,
                           ends_transaction=True)
    assert timeouts and timeouts[0] == pytest.approx(0.3, abs=0.05)  # the whole deadline for librdkafka's own try


def test_abortable_errors_are_not_retried():
    guard = CallGuard("test")
    calls = []

    def call(timeout):
        calls.append(timeout)
        raise kafka_exception(retriable=True, txn_requires_abort=True)

    with pytest.raises(TransactionAborted):
        call_transactional("send_offsets_to_transaction", call, timeout=5, guard=guard)
    assert len(calls) == 1


def test_a_call_that_ignores_its_timeout_is_fatal_after_the_deadline():
    guard = CallGuard("test")
    release = threading.Event()
    began = time.monotonic()
    with pytest.raises(KafkaCallHung, match="did not return within its deadline") as hung:
        guard.run("send_offsets_to_transaction", release.wait, deadline=time.monotonic() + 0.3)
    assert isinstance(hung.value, FatalKafkaError)  # not replaced by anyone: the bridge exits
    assert time.monotonic() - began < 2
    # The stuck call's thread is a daemon: it never holds up the process's exit.
    [stuck] = [t for t in threading.enumerate() if t.name == "test"]
    assert stuck.daemon
    release.set()


class FakeLibrdkafkaProducer:
    def __init__(self, refuse):
        self.refuse = refuse
        self.polls = 0

    def produce(self, topic, **kwargs):
        if isinstance(self.refuse, type) and issubclass(self.refuse, BaseException):
            raise self.refuse()
        raise self.refuse

    def poll(self, timeout):
        self.polls += 1


def producer_refusing(refuse, timeout=0.2):
    producer = TransactionalProducer.__new__(TransactionalProducer)
    producer.timeout = timeout
    producer._producer = FakeLibrdkafkaProducer(refuse)
    return producer


def test_a_full_queue_is_waited_for_within_the_deadline_then_aborts():
    producer = producer_refusing(BufferError, timeout=0.2)
    began = time.monotonic()
    with pytest.raises(TransactionAborted, match="queue stayed full"):
        producer.produce("out", b"v")
    assert 0.2 <= time.monotonic() - began < 1.0
    assert producer._producer.polls > 1  # it served delivery reports while waiting


def test_a_record_over_message_max_bytes_is_that_records_output_error():
    producer = producer_refusing(kafka_exception(code=KafkaError.MSG_SIZE_TOO_LARGE))
    with pytest.raises(OutputError, match="refused a record"):
        producer.produce("out", b"v" * 10)


def test_the_state_error_after_an_abortable_one_aborts_the_transaction():
    producer = producer_refusing(kafka_exception(code=KafkaError._STATE))
    with pytest.raises(TransactionAborted):
        producer.produce("out", b"v")


class FakeTransactions:
    """librdkafka's transactional calls, each failing with one error."""

    def __init__(self, error):
        self.error = error

    def send_offsets_to_transaction(self, offsets, metadata, timeout):
        raise self.error

    def commit_transaction(self, timeout):
        raise self.error

    def abort_transaction(self, timeout):
        raise self.error

    def poll(self, timeout):
        pass


def producer_failing(error):
    producer = TransactionalProducer.__new__(TransactionalProducer)
    producer.timeout = 0.5
    producer._producer = FakeTransactions(error)
    producer._guard = CallGuard("test")
    producer.in_transaction = True
    return producer


@pytest.mark.parametrize("call, error, kind", [
    # A broker gone mid-call (seen on a single broker restarting): abort and redo, rather than exit.
    (lambda p: p.send_offsets([], None), kafka_exception(code=KafkaError._TRANSPORT), TransactionAborted),
    (lambda p: p.commit(), kafka_exception(code=KafkaError._TRANSPORT), TransactionAborted),
    # The way out of a failed transaction failing too: a new producer's init_transactions aborts it instead.
    (lambda p: p.abort(), kafka_exception(code=KafkaError._TRANSPORT), ProducerUnusable),
    (lambda p: p.abort(), kafka_exception(code=KafkaError._STATE), ProducerUnusable),
    (lambda p: p.abort(), kafka_exception(code=KafkaError._CONFLICT), ProducerUnusable),
    # Fenced: another instance owns the transactional.id; a new producer would only fence it back.
    (lambda p: p.abort(), kafka_exception(code=KafkaError._FENCED, fatal=True), FatalKafkaError),
    (lambda p: p.commit(), kafka_exception(code=KafkaError._FENCED, fatal=True), FatalKafkaError),
])
def test_what_a_failed_transaction_call_leads_to(call, error, kind):
    producer = producer_failing(error)
    with pytest.raises(kind) as raised:
        call(producer)
    assert type(raised.value) is kind
    assert producer.in_transaction  # nothing settled: the loop decides


class FakeMessageError:
    def __init__(self, error):
        self._error = error

    def error(self):
        return self._error


class FakeLibrdkafkaConsumer:
    def __init__(self, messages):
        self.messages = messages

    def consume(self, count, timeout):
        taken, self.messages = self.messages[:count], self.messages[count:]
        return taken


def consumer_receiving(*errors):
    from bridge.kafka.clients import ReadCommittedConsumer

    consumer = ReadCommittedConsumer.__new__(ReadCommittedConsumer)
    consumer._consumer = FakeLibrdkafkaConsumer([FakeMessageError(e) for e in errors])
    return consumer


def test_a_fatal_consumer_error_stops_the_loop_rather_than_leave_it_reading_nothing():
    # How librdkafka hands a fatal group error (e.g. KIP-848's UNRELEASED_INSTANCE_ID) to poll: code _FATAL,
    # without the fatal flag. Logged and ignored, the consumer would never be assigned anything again.
    fatal = KafkaError(KafkaError._FATAL, "Fatal error: Broker: The instance ID is still used by another member")
    with pytest.raises(FatalKafkaError, match="instance ID is still used"):
        consumer_receiving(fatal).poll_batch(10, 0.1)


def test_transient_consumer_errors_are_only_logged():
    transient = KafkaError(KafkaError._TRANSPORT, "broker down")
    assert consumer_receiving(transient, KafkaError(KafkaError._PARTITION_EOF, "eof")).poll_batch(10, 0.1) == []


class CoordinatorMoving:
    """A consumer whose group coordinator is lost: committed() fails `failures` times, then answers."""

    def __init__(self, failures, code=KafkaError.NOT_COORDINATOR):
        self.failures, self.code, self.calls = failures, code, 0

    def committed(self, partitions, timeout):
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(self.code, "Failed to get committed offsets: Broker: Not coordinator"))
        return [TopicPartition(tp.topic, tp.partition, 42) for tp in partitions]


def consumer_over(librdkafka_consumer):
    from bridge.kafka.clients import ReadCommittedConsumer

    consumer = ReadCommittedConsumer.__new__(ReadCommittedConsumer)
    consumer._consumer = librdkafka_consumer
    return consumer


def test_the_group_offsets_are_asked_again_while_the_group_coordinator_moves():
    # Seen on a cluster: the broker frozen was the group coordinator too; the new producer had started, and the
    # bridge exited on NOT_COORDINATOR where a second later the new coordinator would have answered.
    moving = CoordinatorMoving(failures=3)
    offsets = consumer_over(moving).committed([TopicPartition("in", 0)], timeout=5, sleep=lambda _: None)
    assert offsets == {("in", 0): 42} and moving.calls == 4


def test_group_offsets_unknown_past_the_deadline_or_refused_outright_are_fatal():
    with pytest.raises(FatalKafkaError, match="Not coordinator"):
        consumer_over(CoordinatorMoving(failures=10**6)).committed([TopicPartition("in", 0)], timeout=0.3)
    refused = CoordinatorMoving(failures=1, code=KafkaError.GROUP_AUTHORIZATION_FAILED)
    with pytest.raises(FatalKafkaError):
        consumer_over(refused).committed([TopicPartition("in", 0)], timeout=5, sleep=lambda _: None)
    assert refused.calls == 1
