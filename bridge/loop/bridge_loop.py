"""The run loop: owns Kafka, and never stops polling.

Each turn: poll; put the records in the in-flight window (bridge.loop.window) and hand them to the pipeline's
stages; take the outcomes that have finished; produce each partition's contiguous finished prefix, in offset
order, into the open transaction; every --commit-interval-ms, commit it with the frontier offsets. Records
still in flight are not in the transaction. A full window pauses the partitions until it drains; slow work
never holds up poll(), so it cannot cost the group membership.

What stops or pauses the loop is a SystemFailure, and only that (bridge.errors):
    ModelUnusable        commit what is produced, forget the rest of the window and seek back to the frontier,
                         pause the partitions, keep polling; resume once the model is AVAILABLE with the same
                         signature and a real Predict succeeds (PauseState)
    ModelGone            exit 1: the signature changed, or the pause outlasted --max-pause-ms
    TransactionAborted   abort, forget the window, seek back to the last committed frontier, redo
    ProducerUnusable     a producer call past its deadline (KafkaCallHung), or a transaction state only a new
                         producer settles: forget the window, pause the partitions, keep polling,
                         and start a new producer with the same transactional.id, trying its init_transactions each
                         turn (it fences the stuck one, and returns once the broker has settled the stuck
                         transaction, committed or aborted); then seek back to the offsets the group has committed
                         as the broker reports them, resume, redo. Exit 1 after MAX_REPLACEMENTS in a row without a
                         commit, or if the new producer has not started within --max-pause-ms
    any other Kafka one  exit 1 (fatal, fenced)

On revoke, the produced prefix is committed and the revoked partitions' work in flight is dropped (the next
owner redoes it from the committed frontier); on lost, the transaction is aborted and their state forgotten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from collections.abc import Callable

from confluent_kafka import TopicPartition

from bridge.config import Settings
from bridge.errors import (ConfigError, FatalKafkaError, KafkaTransactionError, ModelUnusable, ProducerUnusable,
                           TransactionAborted, one_line)
from bridge.kafka.checkpoint import Checkpoint, OutputTopics
from bridge.kafka.clients import PartitionKey, ReadCommittedConsumer, TransactionalProducer
from bridge.loop.pause import PauseState
from bridge.loop.pipeline import Failure, Pipeline
from bridge.loop.stop_signal import StopSignal
from bridge.loop.window import InFlightWindow
from bridge.ops.health import Health
from bridge.ops.metrics import Progress
from bridge.records import Record

log = logging.getLogger(__name__)


class BridgeLoop:
    def __init__(self, settings: Settings, consumer_factory: Callable[..., ReadCommittedConsumer],
                 producer: TransactionalProducer, pipeline: Pipeline, stop: StopSignal,
                 health: Health | None = None,
                 replace_producer: Callable[[], TransactionalProducer] | None = None) -> None:
        """producer: initialized (init_transactions done). replace_producer: a new producer with the same
        transactional.id, not yet initialized; None: an unusable producer stops the loop."""
        self.settings = settings
        self.producer = producer
        self.replace_producer = replace_producer
        self.replacements = 0  # producers replaced since the last commit
        self.abandoned: list[TransactionalProducer] = []  # stuck ones: kept, as destroying them could block
        self.producer_started = True  # False from a replacement until its init_transactions succeeds
        self._producer_down_since = 0.0
        self._next_start_attempt = 0.0
        self.pipeline = pipeline
        self.stop = stop
        self.pause = PauseState(settings.seconds("resume_check_interval_ms"), settings.seconds("max_pause_ms"))
        self.window = InFlightWindow(settings.window_records, settings.window_bytes)
        self.broken = False  # set when an error escapes run(): close() must then abort, not commit
        self.metrics = pipeline.metrics
        self.tracing = pipeline.tracing
        self.metrics.window_records.set_function(lambda: self.window.records)
        self.progress = Progress(self.metrics, settings.seconds("progress_interval_ms"))
        self.health = health or Health(settings.seconds("liveness_timeout_ms"))
        self._lag_due = 0.0
        self.consumer = consumer_factory(on_assign=self._on_assign, on_revoke=self._on_revoke,
                                         on_lost=self._on_lost)
        self.checkpoint = Checkpoint(producer, self.consumer, self._output_topics())
        self.commit_interval = settings.seconds("commit_interval_ms")
        self._input_paused = False
        self._pause_stale = False  # partitions were assigned since the pause state was last applied
        self._revoked_in_poll: set[PartitionKey] = set()  # revoked or lost during the current poll
        self._last_commit = time.monotonic()

    def _output_topics(self) -> OutputTopics:
        settings = self.settings
        partitions = {}
        for topic in (settings.input_topic, settings.output_topic, settings.dead_letter_topic):
            count = self.consumer.partition_count(topic)
            if count is None:
                raise ConfigError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}; create it first")
            partitions[topic] = count
        return OutputTopics(settings.output_topic, settings.dead_letter_topic, partitions)

    def run(self) -> None:
        try:
            self._run()
        except BaseException:
            self.broken = True
            raise

    def _run(self) -> None:
        log.info("consuming %s as group %s, transactional.id %s", self.settings.input_topic,
                 self.settings.group_id, self.producer.transactional_id)
        while not self.stop.is_set():
            self._turn()
        self._finish()

    def _turn(self) -> None:
        self.health.beat()
        _test_hook_block()
        busy = self.window.records > 0
        room = max(1, min(POLL_BATCH, self.window.max_records - self.window.records))
        self._revoked_in_poll = set()
        messages = self.consumer.poll_batch(room, POLL_BUSY if busy else POLL_IDLE)
        if self._revoked_in_poll:
            messages = self._after_rebalance(messages)
        self.metrics.records_consumed.inc(len(messages))
        self._admit([Record.from_message(m) for m in messages])
        self._take_completions()
        self._produce_ready()
        if self.pause.paused:
            self._check_model()
        if not self.producer_started:
            self._start_producer()
        self._apply_pause()
        if self.checkpoint.pending and time.monotonic() - self._last_commit >= self.commit_interval:
            self._commit()
        self._update_lag()
        self.progress.maybe_log()

    def _after_rebalance(self, messages: list) -> list:
        """A rebalance ran inside this poll. Records of the partitions it revoked may have been handed over
        before it: they belong to the old assignment, and admitted now they would open the partition's window
        past the work the revoke dropped (a gap: a loss). Drop them all, and read the partitions that are ours
        again from their committed positions."""
        kept = [m for m in messages if (m.topic(), m.partition()) not in self._revoked_in_poll]
        owned_again = [tp for tp in self.consumer.assignment() if (tp.topic, tp.partition) in self._revoked_in_poll]
        if owned_again:
            self.consumer.seek(self.consumer.committed(owned_again, timeout=self.settings.seconds("kafka_timeout_ms")))
        return kept

    def _admit(self, records: list[Record]) -> None:
        if self._input_paused and records:
            # From a partition assigned while input is paused: read them again after resuming.
            self.consumer.seek(_first_offsets(records))
            self.consumer.pause(self.consumer.assignment())
            return
        for record in records:
            self.pipeline.submit(record, self.window.admit(record))

    def _take_completions(self) -> None:
        completions = self.pipeline.completions
        while True:
            try:
                done = completions.get_nowait()
            except queue.Empty:
                return
            if isinstance(done, Failure):
                self._model_failed(done)
                continue
            # A result too large for Kafka is a dead letter now; either carries the record's trace context.
            message = self.pipeline.encode(done.outcome, done.trace)
            self.window.finish(done.record, done.tag, message)

    def _produce_ready(self) -> None:
        if not self.producer_started:
            return  # the window was forgotten: what finishes now is redone after the producer starts
        ready = self.window.ready()
        try:
            self.checkpoint.produce(ready)
        except TransactionAborted as exc:
            log.warning("transaction aborted while producing (%s); redoing from the committed offsets", exc)
            self._abort_and_rewind()
        except ProducerUnusable as exc:
            self._replace_producer(exc)

    def _commit(self) -> None:
        if not self.producer_started:
            return
        pending = self.checkpoint.pending
        # The interval runs from one commit's start to the next: a result waits at most the interval plus one
        # commit, not the interval plus two.
        self._last_commit = time.monotonic()
        try:
            with self.tracing.commit(self.checkpoint.produced):  # ends the records' spans once committed
                committed = self.checkpoint.commit(self.window.frontier())
        except TransactionAborted as exc:
            log.warning("transaction aborted (%s); redoing %d records", exc, pending)
            self._abort_and_rewind()
        except ProducerUnusable as exc:
            self._replace_producer(exc)
        else:
            self.replacements = 0
            self.window.committed()
            took = time.monotonic() - self._last_commit
            if committed:
                self.metrics.committed(committed)
                self.metrics.stage_seconds.labels("commit").observe(took)
            log.debug("committed %d records in %.1f ms", pending, took * 1000)

    def _abort_and_rewind(self) -> None:
        self.metrics.transactions.labels("aborted").inc()
        self.tracing.abandon(self.checkpoint.produced, "transaction aborted: the record is redone")
        try:
            self.checkpoint.abort()
        except ProducerUnusable as exc:
            self._replace_producer(exc)
            return
        self.consumer.seek(self.window.restart())

    def _replace_producer(self, unusable: ProducerUnusable) -> None:
        """Forget the window and pause input until a new producer has started (_start_producer)."""
        self.replacements += 1
        if self.replace_producer is None or self.replacements > MAX_REPLACEMENTS:
            raise unusable
        log.warning("%s: replacing the producer (%d in a row); input pauses until the new one has started",
                    one_line(unusable), self.replacements)
        self.metrics.transactions.labels("abandoned").inc()
        self.abandoned.append(self.producer)
        self.tracing.abandon(self.checkpoint.produced, "producer replaced: the record is redone")
        self.window.restart()
        self.producer = self.replace_producer()
        self.checkpoint.replace_producer(self.producer)
        if self.producer_started:
            self._producer_down_since = time.monotonic()
        self.producer_started = False
        self._next_start_attempt = 0.0
        self.health.problem("kafka", f"replacing an unusable producer: {one_line(unusable)}")
        self._start_producer()  # at once: usually the broker has settled the stuck transaction already
        self._apply_pause()  # until it has started, nothing read can be committed

    def _start_producer(self) -> None:
        """Try the new producer's init_transactions (about once a second). It returns once the broker has settled
        the stuck producer's transaction; then read the group's offsets from the broker, which now say whether
        that transaction committed, and redo from there."""
        now = time.monotonic()
        if now < self._next_start_attempt:
            return
        self._next_start_attempt = now + START_RETRY_INTERVAL
        try:
            self.producer.init()
        except ProducerUnusable as exc:
            self._replace_producer(exc)
            return
        except FatalKafkaError:
            raise
        except KafkaTransactionError as exc:
            down_for = time.monotonic() - self._producer_down_since
            if down_for > self.settings.seconds("max_pause_ms"):
                raise FatalKafkaError(f"no new producer could start in {down_for:.0f} s (--max-pause-ms): {exc}")
            log.info("the new producer cannot start yet (%s); input stays paused", one_line(exc))
            return
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.seek(self.consumer.committed(assigned, timeout=self.settings.seconds("kafka_timeout_ms")))
        self.window.restart()  # anything admitted meanwhile (a new assignment) is read again from there too
        self.producer_started = True
        self.health.problem("kafka", None)
        log.info("the new producer started after %.1f s: resuming from the offsets the group has committed",
                 time.monotonic() - self._producer_down_since)

    def _finish(self) -> None:
        """Stopping: no new work; Predict calls in flight finish (within the shutdown timeout); commit."""
        self.pipeline.stop_accepting()
        deadline = time.monotonic() + self.settings.seconds("shutdown_timeout_ms") / 2
        while self.pipeline.predicting() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._take_completions()
        self._produce_ready()
        self._commit()

    # --- the model server failing as a whole: pause, keep polling, resume on a real Predict ---------------------

    def _model_failed(self, failure: Failure) -> None:
        """Keep what is produced, redo the rest once the model serves again."""
        self._produce_ready()
        if self.checkpoint.pending:
            self._commit()
        self.consumer.seek(self.window.restart())
        if self.stop.is_set():
            log.info("stopping: unfinished records will be redone by the next owner of their partitions")
            return
        if not self.pause.paused:
            log.warning("model server fails as a whole (%s): pausing input; nothing is dead-lettered",
                        failure.error)
        self.pause.pause(str(failure.error))
        self.metrics.set_paused("model_unusable", True)
        self.health.problem("model", f"the model server fails as a whole: {failure.error}")

    def _check_model(self) -> None:
        if not self.pause.check_due():
            return
        try:
            self.pipeline.predictor.check_health()  # ModelGone goes up: exit 1
        except ModelUnusable as exc:
            self.pause.still_down(str(exc))
            log.info("model server still failing (%s); input stays paused", exc)
            return
        paused_for = self.pause.resumed()
        self.metrics.set_paused("model_unusable", False)
        self.health.problem("model", None)
        log.info("model server serves again (a Predict succeeded): resuming input after %.1f s", paused_for)

    def _apply_pause(self) -> None:
        # Paused partitions return nothing, but polling keeps the group membership alive.
        full = self.window.full()
        self.metrics.set_paused("window_full", full and not self.pause.paused)
        wanted = self.pause.paused or full or not self.producer_started
        if wanted != self._input_paused or self._pause_stale:
            (self.consumer.pause if wanted else self.consumer.resume)(self.consumer.assignment())
            self._input_paused = wanted
            self._pause_stale = False

    def _update_lag(self) -> None:
        """kafka_consumergroup_lag of the partitions this instance owns, every few seconds."""
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + LAG_INTERVAL
        committed = {**self.consumer.positions(), **self.window.rewind_points()}
        lags = {key: max(0, high - committed[key]) for key, high in self.consumer.high_watermarks().items()
                if key in committed}
        self.metrics.set_lag(self.settings.group_id, lags)

    # --- rebalance callbacks, run inside poll() -------------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        self._lag_due = 0.0  # the new partitions' lag at the next turn
        # librdkafka keeps a partition's pause across its unassign and assign: one paused before a rebalance comes
        # back paused, even if input was resumed meanwhile (while nothing was assigned). Set it again this turn.
        self._pause_stale = True
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoked").inc()
        log.info("revoked %s", _describe(partitions))
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        self._revoked_in_poll.update(revoked)
        if self.broken:
            with contextlib.suppress(Exception):  # best effort: the broker aborts it at transaction.timeout.ms
                self.checkpoint.abort()
        else:
            self._take_completions()
            self._produce_ready()
            self._commit()
        self.window.drop(revoked)  # their work in flight is stale now: the next owner redoes it

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s: aborting the open transaction", _describe(partitions))
        self.metrics.rebalances.labels("lost").inc()
        self.metrics.transactions.labels("aborted").inc()
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._revoked_in_poll.update(lost)
        self.tracing.abandon(self.checkpoint.produced, "partitions lost: transaction aborted")
        try:
            self.checkpoint.abort()
        except ProducerUnusable as exc:
            self._replace_producer(exc)
        self.window.drop(lost)
        self.consumer.seek(self.window.restart())


LAG_INTERVAL = 5.0  # seconds between updates of kafka_consumergroup_lag
MAX_REPLACEMENTS = 3  # unusable producers replaced in a row without a commit before the loop gives up
START_RETRY_INTERVAL = 1.0  # seconds between attempts to start a replacement producer
POLL_BATCH = 500
POLL_BUSY = 0.005  # seconds: outcomes are waiting to be taken
POLL_IDLE = 0.1


def _test_hook_block() -> None:
    """For tests of /livez only: while the file BRIDGE_TEST_BLOCK_LOOP_FILE names exists, the loop stands
    still."""
    path = os.environ.get("BRIDGE_TEST_BLOCK_LOOP_FILE")
    while path and os.path.exists(path):
        time.sleep(0.1)


def _first_offsets(records: list[Record]) -> dict[PartitionKey, int]:
    first: dict[PartitionKey, int] = {}
    for record in records:
        first.setdefault((record.topic, record.partition), record.offset)
    return first


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
