"""`tfs-bridge redrive` on Kafka: chosen dead letters' original records back to the input topic, exactly once.

    1. look (bridge.redrive.topics): the dead-letter partitions and where each ends now (read_committed), the input
       topic's partition count
    2. init the producer, transactional.id tfs-bridge-redrive-GROUP: it fences an earlier redrive of the group and
       aborts the transaction that one left open (after a SIGKILL) before the group's offsets are read
    3. subscribe as the redrive group (static member GROUP-INSTANCE_NAME, so a restarted redrive is back at once);
       each partition starts where the group committed, else at its beginning
    4. each poll (at most --transaction-records dead letters): judge each one below its partition's end (Selection),
       produce the chosen originals, then send the group's offsets and commit: the records and the offsets in one
       transaction. TransactionAborted: abort, seek back to the committed offsets, redo; MAX_ABORTS in a row: exit 1
    5. stop when every partition's position has reached its end, at --deadline-ms, or on SIGTERM/SIGINT after the
       current transaction; print the summary line
A dry run has no producer: it reads as a throwaway group from the redrive group's committed offsets and commits
nothing, so the redrive group's offsets do not move.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from types import FrameType
from typing import Any, TextIO

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException, Message, TopicPartition

from bridge.config import Settings
from bridge.errors import BridgeError, ConfigError, FatalKafkaError, OutputError, TransactionAborted
from bridge.kafka.clients import PartitionKey, ReadCommittedConsumer, TransactionalProducer
from bridge.redrive.letters import Letter
from bridge.redrive.options import RedriveOptions
from bridge.redrive.selection import Judgement, Tally, Verdict
from bridge.redrive.topics import TopicView, look

log = logging.getLogger("bridge.redrive")
POLL_TIMEOUT = 0.5  # seconds a poll waits for dead letters
MAX_ABORTS = 5  # aborted transactions in a row before giving up
LOGGED_UNREADABLE = 20  # unreadable dead letters logged one by one; the rest are only counted


class Outcome(Enum):
    END = "reached the end"
    DEADLINE = "stopped at the deadline (--deadline-ms)"
    STOPPED = "interrupted"
    FAILED = "failed"


EXIT_CODES = {Outcome.END: 0, Outcome.DEADLINE: 1, Outcome.STOPPED: 130}


@dataclass
class PartitionState:
    """Where a dead-letter partition stands in this run."""

    end: int  # its end as of the start: nothing from here on is read
    start: int  # where reading began: the group's committed offset, else the partition's beginning
    committed: int | None  # the redrive group's committed offset, as this run knows it
    next: int = 0  # the offset of the next dead letter to judge: one read again (after a seek) is not judged twice
    position: int | None = None  # the consumer's position after the last finished batch
    paused: bool = False

    def done(self) -> bool:
        return max(self.start, self.position if self.position is not None else -1) >= self.end

    def left(self) -> int:
        return max(0, self.end - max(self.start, self.position if self.position is not None else -1))


class Interrupt:
    """Set by the first SIGTERM/SIGINT (stop after the current transaction); a second one exits at once."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():  # the open transaction is aborted by the next redrive (or the broker's timeout)
            logging.shutdown()
            os._exit(130)
        log.info("received %s: stopping after the current transaction", signal.Signals(signum).name)
        self.event.set()


def run_redrive(settings: Settings, options: RedriveOptions, out: TextIO = sys.stdout) -> int:
    """Redrive (or count, for a dry run) to the end of the dead-letter topic as of now; prints the summary line
    and returns the exit code. ConfigError, BridgeError (after the summary) for the CLI."""
    group = options.group(settings.group_id)
    if group == settings.group_id:
        raise ConfigError("--redrive-group-id must differ from --group-id (the bridge's own group)")
    deadline = time.monotonic() + options.deadline_ms / 1000
    timeout = settings.seconds("kafka_timeout_ms")
    view = look(settings, timeout, group if options.dry_run else None)
    interrupt = Interrupt()
    interrupt.install()
    redrive = Redrive(settings, options, group, view, interrupt.event)
    try:
        outcome = redrive.run(deadline)
    except BridgeError:
        print(redrive.summary(Outcome.FAILED), file=out, flush=True)
        raise
    print(redrive.summary(outcome), file=out, flush=True)
    return EXIT_CODES[outcome]


class Redrive:
    def __init__(self, settings: Settings, options: RedriveOptions, group: str, view: TopicView,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.options = options
        self.view = view
        self.stop = stop
        self.dry_run = options.dry_run
        self.timeout = settings.seconds("kafka_timeout_ms")
        self.tally = Tally()  # what committed transactions hold (a dry run: everything read)
        self.partitions: dict[PartitionKey, PartitionState] = {}
        self._new: list[PartitionKey] = []  # assigned in the last poll, not started yet
        self._aborts = 0
        self._unreadable_logged = 0
        self._closing = False
        self.producer: TransactionalProducer | None = None
        self.consumer: ReadCommittedConsumer | None = None
        if self.dry_run:
            reader = replace(settings, group_id=f"{group}-dry-run-{uuid.uuid4().hex[:8]}", static_membership=False)
        else:
            reader = replace(settings, group_id=group)
            self.producer = TransactionalProducer(settings.producer_config(), f"tfs-bridge-redrive-{group}",
                                                  self.timeout)
        self._reader = reader

    # --- the loop ----------------------------------------------------------------------------------------------

    def run(self, deadline: float) -> Outcome:
        """Redrive until the end, the deadline (monotonic) or a stop; closes the clients."""
        kafka_usable = True
        try:
            if self.producer is not None:
                self.producer.init()  # before the group's offsets are read: a killed run's transaction is aborted
            self.consumer = ReadCommittedConsumer(self._reader.consumer_config(), [self.settings.dead_letter_topic],
                                                  on_assign=self._on_assign, on_revoke=self._on_revoke,
                                                  on_lost=self._on_revoke, close_timeout=self.timeout)
            log.info("%sredriving %s into %s as group %s", "dry run: " if self.dry_run else "",
                     self.settings.dead_letter_topic, self.settings.input_topic, self._reader.group_id)
            return self._loop(deadline)
        except FatalKafkaError:
            kafka_usable = False  # closing a fenced or hung client could block: leave that to the process exit
            raise
        finally:
            if kafka_usable:
                self._close()

    def _loop(self, deadline: float) -> Outcome:
        interval = self.settings.seconds("progress_interval_ms")
        progress_due = time.monotonic() + interval
        while True:
            if self._finished():
                return Outcome.END
            if self.stop.is_set():
                return Outcome.STOPPED
            if time.monotonic() >= deadline:
                return Outcome.DEADLINE
            assert self.consumer is not None
            messages = self.consumer.poll_batch(self.options.transaction_records, POLL_TIMEOUT)
            self._start_new_partitions()
            self._handle(messages)
            if interval > 0 and time.monotonic() >= progress_due:
                progress_due = time.monotonic() + interval
                log.info("redrive: %s; %d left to read", self.tally.describe(self.dry_run), self.left())

    def _finished(self) -> bool:
        return all(key in self.partitions and self.partitions[key].done() for key in self.view.ends)

    def left(self) -> int:
        """Dead letters (and transaction markers) left to read up to the ends."""
        return sum(self.partitions[key].left() if key in self.partitions else max(0, end - self.view.lows[key])
                   for key, end in self.view.ends.items())

    # --- assignment ----------------------------------------------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        self._new.extend((tp.topic, tp.partition) for tp in partitions)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Called inside poll, between batches: no transaction is open. The next owner starts from the commits.
        if self._closing:
            return  # leaving the group at the end: the summary still needs where each partition stands
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.partitions.pop(key, None)
            if key in self._new:
                self._new.remove(key)

    def _start_new_partitions(self) -> None:
        """Where each newly assigned partition starts: the redrive group's committed offset, else its beginning."""
        new, self._new = self._new, []
        if not new:
            return
        assert self.consumer is not None
        if self.dry_run:
            committed = {key: self.view.group_offsets.get(key, -1) for key in new}
        else:
            committed = self.consumer.committed([TopicPartition(*key) for key in new], self.timeout)
        for key in new:
            offset = committed.get(key, -1)
            # A partition added since the start has an end of 0: nothing of it is read.
            start = offset if offset >= 0 else self.view.lows.get(key, 0)
            self.partitions[key] = PartitionState(self.view.ends.get(key, 0), start,
                                                  offset if offset >= 0 else None, next=start)
        # librdkafka keeps a partition paused across a rebalance that takes it away and gives it back; a finished
        # partition whose commit marker was read after its last commit comes back unfinished, and must be read.
        self.consumer.resume([TopicPartition(*key) for key in new])
        log.info("assigned %s", ", ".join(f"{t}[{p}]" for t, p in sorted(new)))
        if self.dry_run:  # the throwaway group starts at the beginning: skip to where the redrive group stands
            self._seek({key: committed[key] for key in new if committed.get(key, -1) >= 0})

    def _seek(self, offsets: dict[PartitionKey, int]) -> None:
        assert self.consumer is not None
        try:
            self.consumer.seek(offsets)
        except KafkaException as exc:  # dead letters below the start are skipped anyway (_redrive_one)
            log.debug("seek to %s failed: %s", offsets, exc)

    # --- one batch -----------------------------------------------------------------------------------------------

    def _handle(self, messages: Sequence[Message]) -> None:
        """Judge and send a batch, and commit it with the offsets; on TransactionAborted, rewind to the commits."""
        batch = Tally()
        try:
            for message in messages:
                self._redrive_one(message, batch)
            if self.producer is not None and batch.read:
                self._commit()
        except TransactionAborted as exc:
            self._abort(exc)
            return
        self._aborts = 0
        self.tally.add(batch)
        self._after_batch()

    def _redrive_one(self, message: Message, batch: Tally) -> None:
        state = self.partitions.get((message.topic(), message.partition()))
        if state is None or not state.next <= message.offset() < state.end:
            return  # past the end as of the start, or judged already (a dry run's messages fetched before its seek)
        state.next = message.offset() + 1
        kind, millis = message.timestamp()
        judgement = self.options.selection.judge(message.value(), None if kind == TIMESTAMP_NOT_AVAILABLE else millis)
        if judgement.verdict is Verdict.SEND and self.producer is not None:
            assert judgement.letter is not None
            judgement = self._send(message, judgement.letter)
        batch.count(judgement)
        if judgement.verdict is Verdict.UNREADABLE:
            self._log_unreadable(message, judgement.reason or "")

    def _send(self, message: Message, letter: Letter) -> Judgement:
        """Produce the letter's original record (its key: the dead letter's, which is the original's)."""
        assert self.producer is not None
        if not self.producer.in_transaction:
            self.producer.begin()
        try:
            self.producer.produce(self.settings.input_topic, letter.value, key=message.key(),
                                  headers=letter.redriven_headers(), partition=self._partition(letter))
        except OutputError:
            return Judgement(Verdict.UNREADABLE, reason="too large for the producer")
        return Judgement(Verdict.SEND, letter)

    def _partition(self, letter: Letter) -> int | None:
        """The partition the original came from, if it is one of the input topic's; else the default partitioner."""
        partition = letter.source_partition
        if letter.source_topic == self.settings.input_topic and partition is not None \
                and partition < self.view.input_partitions:
            return partition
        return None

    def _commit(self) -> None:
        """Add the group's new offsets (each partition's position, at most its end) to the transaction; commit."""
        assert self.producer is not None and self.consumer is not None
        positions = self.consumer.positions()
        offsets = {key: min(positions[key], state.end) for key, state in self.partitions.items()
                   if key in positions and min(positions[key], state.end) != state.committed}
        if not self.producer.in_transaction:
            self.producer.begin()  # a batch of skipped dead letters still moves the offsets
        if offsets:
            self.producer.send_offsets([TopicPartition(t, p, offset) for (t, p), offset in offsets.items()],
                                       self.consumer.group_metadata())
        self.producer.commit()
        for key, offset in offsets.items():
            self.partitions[key].committed = offset

    def _abort(self, exc: TransactionAborted) -> None:
        assert self.producer is not None and self.consumer is not None
        log.warning("transaction aborted (%s); redoing from the last commit", exc)
        if self.producer.in_transaction:
            self.producer.abort()
        self._aborts += 1
        if self._aborts >= MAX_ABORTS:
            raise BridgeError(f"redrive: {MAX_ABORTS} transactions in a row aborted; the last: {exc}")
        rewind = {key: state.committed if state.committed is not None else state.start
                  for key, state in self.partitions.items() if not state.paused}
        self.consumer.seek(rewind)
        for key, offset in rewind.items():
            self.partitions[key].next = offset

    def _after_batch(self) -> None:
        """Take the positions the batch reached; pause the partitions that reached their end."""
        assert self.consumer is not None
        positions = self.consumer.positions()
        finished = []
        for key, state in self.partitions.items():
            if key in positions:
                state.position = positions[key]
            if state.done() and not state.paused:
                state.paused = True
                finished.append(TopicPartition(*key))
        self.consumer.pause(finished)

    def _log_unreadable(self, message: Message, reason: str) -> None:
        if self._unreadable_logged < LOGGED_UNREADABLE:
            log.warning("dead letter %s[%d]@%d not redriven: %s", message.topic(), message.partition(),
                        message.offset(), reason)
        elif self._unreadable_logged == LOGGED_UNREADABLE:
            log.warning("more dead letters not redriven: counted in the summary only")
        self._unreadable_logged += 1

    # --- the end -------------------------------------------------------------------------------------------------

    def summary(self, outcome: Outcome) -> str:
        """One line: what was read and what became of it, and how the run ended."""
        head = (f"{'dry run: ' if self.dry_run else ''}redrive {self.settings.dead_letter_topic} -> "
                f"{self.settings.input_topic}: {self.tally.describe(self.dry_run)}")
        if outcome is Outcome.END:
            return f"{head}; {outcome.value}"
        again = "" if self.dry_run else ": run it again to go on"
        return f"{head}; {outcome.value} with {self.left()} left{again}"

    def _close(self) -> None:
        self._closing = True
        closers: list[Any] = []
        if self.consumer is not None:
            closers.append(self.consumer.close)
        if self.producer is not None:
            closers.append(self.producer.close)
        for close in closers:  # each one, even if another fails
            try:
                close()
            except Exception as exc:  # noqa: BLE001
                log.warning("while closing: %s", exc)
