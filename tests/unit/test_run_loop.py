"""The run loop's bookkeeping with a fake consumer, producer and pipeline (no Kafka, no model server)."""

import json
import queue

import pytest

from bridge.config import Settings
from bridge.errors import (FatalKafkaError, KafkaCallHung, KafkaTransactionError, ModelUnusable, ProducerUnusable,
                           TransactionAborted)
from bridge.loop.pipeline import Completion, Failure
from bridge.loop.bridge_loop import MAX_REPLACEMENTS, BridgeLoop
from bridge.loop.stop_signal import StopSignal
from bridge.ops.metrics import BridgeMetrics
from bridge.ops.tracing import NOOP
from bridge.records import DeadLetter, OutputMessage


class FakeMessage:
    def __init__(self, partition, offset, value=b"http://h/x.png"):
        self._partition, self._offset, self._value = partition, offset, value

    def topic(self):
        return "in"

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return None

    def value(self):
        return self._value

    def timestamp(self):
        return 1, 1_700_000_000_000  # TIMESTAMP_CREATE_TIME, in ms


class FakeConsumer:
    def __init__(self, callbacks):
        self.callbacks = callbacks
        self.waiting = []  # messages the next poll returns
        self.seeks = []
        self.paused_partitions = set()  # as librdkafka: a partition's pause outlives its assignment
        self.pauses = 0
        self.highs = {}  # high watermarks, as of the last fetch
        self.during_poll = None  # run inside the next poll_batch, after its records were taken
        self.group_offsets = {}  # what committed() answers
        self.owned = ["in-0", "in-1", "in-2"]

    def poll_batch(self, max_records, timeout):
        batch, self.waiting = self.waiting[:max_records], self.waiting[max_records:]
        if self.during_poll is not None:  # a rebalance librdkafka serves inside this poll
            callback, self.during_poll = self.during_poll, None
            callback()
        return batch

    def partition_count(self, topic):
        return 3

    def assignment(self):
        return list(self.owned)

    def committed(self, partitions, timeout=10.0):
        return {(tp.topic, tp.partition): self.group_offsets.get((tp.topic, tp.partition), -1001) for tp in partitions}

    @property
    def paused(self):
        return any(_key(tp) in self.paused_partitions for tp in self.owned)

    def pause(self, partitions):
        self.paused_partitions.update(map(_key, partitions))
        self.pauses += 1

    def resume(self, partitions):
        self.paused_partitions.difference_update(map(_key, partitions))

    def seek(self, offsets):
        self.seeks.append(dict(offsets))

    def group_metadata(self):
        return "metadata"

    def positions(self):
        return {}

    def high_watermarks(self):
        return dict(self.highs)


def _key(partition):
    return partition if isinstance(partition, str) else (partition.topic, partition.partition)


class FakeProducer:
    transactional_id = "tx"

    def __init__(self):
        self.in_transaction = False
        self.open = []  # (partition, offset) produced in the open transaction
        self.committed = []  # [(outputs, positions)] per committed transaction
        self.aborts = 0
        self.commit_error = None

    def begin(self):
        self.in_transaction = True

    def produce(self, topic, value, key=None, headers=None, partition=None, on_delivery=None):
        source = json.loads(value)["source"]
        self.open.append((source["partition"], source["offset"]))

    def serve_deliveries(self):
        pass

    def send_offsets(self, offsets, metadata):
        self._positions = {(tp.topic, tp.partition): tp.offset for tp in offsets}

    def commit(self):
        if self.commit_error is not None:
            error, self.commit_error = self.commit_error, None
            raise error
        self.committed.append((self.open, self._positions))
        self.open, self.in_transaction = [], False

    def abort(self):
        self.open, self.in_transaction = [], False
        self.aborts += 1


class FakePredictor:
    def __init__(self):
        self.healthy = True

    def check_health(self):
        if not self.healthy:
            raise ModelUnusable("still down")


class FakePipeline:
    def __init__(self):
        self.completions = queue.SimpleQueue()
        self.submitted = {}  # (partition, offset) -> tag
        self.predictor = FakePredictor()
        self.metrics = BridgeMetrics(clock=lambda: 1_700_000_002.5)
        self.tracing = NOOP

    def submit(self, record, tag=None):
        self.submitted[(record.partition, record.offset)] = (record, tag)

    def finish(self, partition, offset):
        record, tag = self.submitted[(partition, offset)]
        self.completions.put(Completion(record, tag, DeadLetter(record, "fetch", "FetchError", "scripted")))

    def encode(self, outcome, trace=None):
        body = {"source": outcome.record.source()}
        return OutputMessage(outcome.record, False, json.dumps(body).encode(), [], ("fetch", "FetchError"))

    def stop_accepting(self):
        pass

    def predicting(self):
        return 0


def loop(replace_producer=None, **settings):
    pipeline, producer = FakePipeline(), FakeProducer()
    consumers = []

    def factory(**callbacks):
        consumers.append(FakeConsumer(callbacks))
        return consumers[0]

    values = {"commit_interval_ms": 0, "resume_check_interval_ms": 1, "progress_interval_ms": 0, **settings}
    bridge = BridgeLoop(Settings(**values), factory, producer, pipeline, StopSignal(),
                        replace_producer=replace_producer)
    return bridge, consumers[0], producer, pipeline


def poll(bridge, consumer, *coordinates):
    consumer.waiting += [FakeMessage(p, o) for p, o in coordinates]
    bridge._turn()


def test_outcomes_finishing_out_of_order_are_produced_in_offset_order_and_committed_with_the_frontier():
    bridge, consumer, producer, pipeline = loop()
    poll(bridge, consumer, (0, 0), (0, 1), (1, 0), (1, 1))
    pipeline.finish(1, 1)
    pipeline.finish(0, 1)
    bridge._turn()
    assert producer.committed == []  # neither partition's first record is done
    pipeline.finish(1, 0)
    bridge._turn()
    assert producer.committed == [([(1, 0), (1, 1)], {("in", 1): 2})]
    pipeline.finish(0, 0)
    bridge._turn()
    assert producer.committed[-1] == ([(0, 0), (0, 1)], {("in", 0): 2})


def test_records_in_flight_are_not_in_the_transaction():
    bridge, consumer, producer, pipeline = loop()
    poll(bridge, consumer, (2, 5), (2, 6), (2, 7))
    pipeline.finish(2, 5)
    bridge._turn()
    assert producer.committed == [([(2, 5)], {("in", 2): 6})]


def test_a_revoke_commits_the_finished_prefix_and_drops_the_work_in_flight():
    bridge, consumer, producer, pipeline = loop(commit_interval_ms=50_000)  # no timer commit in this test
    poll(bridge, consumer, (0, 0), (0, 1), (0, 2))
    pipeline.finish(0, 0)
    pipeline.finish(0, 2)
    bridge._turn()
    consumer.callbacks["on_revoke"]([_Partition("in", 0)])
    assert producer.committed == [([(0, 0)], {("in", 0): 1})]  # 0@1 is in flight: the next owner redoes 1 and 2
    pipeline.finish(0, 1)  # finishes after the revoke: stale
    bridge._turn()
    assert producer.committed == [([(0, 0)], {("in", 0): 1})] and producer.open == []


def test_an_aborted_commit_rewinds_every_partition_to_its_last_committed_position():
    bridge, consumer, producer, pipeline = loop()
    poll(bridge, consumer, (0, 10), (1, 20))
    pipeline.finish(0, 10)
    bridge._turn()  # committed: partition 0 up to 11
    poll(bridge, consumer, (0, 11))
    producer.commit_error = TransactionAborted("commit_transaction: abortable")
    pipeline.finish(0, 11)
    pipeline.finish(1, 20)
    bridge._turn()
    assert producer.aborts == 1
    assert consumer.seeks[-1] == {("in", 0): 11, ("in", 1): 20}
    assert bridge.window.records == 0
    poll(bridge, consumer, (0, 11), (1, 20))  # read again after the seek, redone
    pipeline.finish(0, 11)
    pipeline.finish(1, 20)
    bridge._turn()
    assert producer.committed[-1] == ([(0, 11), (1, 20)], {("in", 0): 12, ("in", 1): 21})


def test_a_full_window_pauses_input_and_a_drained_one_resumes_it():
    bridge, consumer, producer, pipeline = loop(window_records=3)
    poll(bridge, consumer, (0, 0), (0, 1), (0, 2))
    assert consumer.paused
    pipeline.finish(0, 0)
    bridge._turn()
    assert not consumer.paused
    assert producer.committed[-1] == ([(0, 0)], {("in", 0): 1})


def test_a_model_failing_as_a_whole_keeps_what_is_done_rewinds_the_rest_and_pauses_until_healthy():
    bridge, consumer, producer, pipeline = loop(commit_interval_ms=50_000)
    poll(bridge, consumer, (0, 0), (0, 1), (0, 2))
    pipeline.finish(0, 0)
    pipeline.predictor.healthy = False
    pipeline.completions.put(Failure(ModelUnusable("UNAUTHENTICATED")))
    bridge._turn()
    assert producer.committed == [([(0, 0)], {("in", 0): 1})]  # nothing dead-lettered, the done part kept
    assert consumer.seeks[-1] == {("in", 0): 1} and consumer.paused
    import time

    time.sleep(0.01)
    bridge._turn()
    assert consumer.paused  # the health check failed
    pipeline.predictor.healthy = True
    time.sleep(0.01)
    bridge._turn()
    assert not consumer.paused


class _Partition:
    def __init__(self, topic, partition):
        self.topic, self.partition = topic, partition


def sample(bridge, name, **labels):
    value = bridge.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def test_outcomes_are_counted_when_their_transaction_commits_and_once_after_an_abort():
    bridge, consumer, producer, pipeline = loop()
    poll(bridge, consumer, (0, 0), (0, 1))
    assert sample(bridge, "tfs_bridge_records_consumed_total") == 2
    producer.commit_error = TransactionAborted("commit_transaction: abortable")
    pipeline.finish(0, 0)
    pipeline.finish(0, 1)
    bridge._turn()
    assert sample(bridge, "tfs_bridge_transactions_total", outcome="aborted") == 1
    assert sample(bridge, "tfs_bridge_dead_letters_total", stage="fetch", type="FetchError") == 0  # not visible
    poll(bridge, consumer, (0, 0), (0, 1))  # redone after the rewind
    pipeline.finish(0, 0)
    pipeline.finish(0, 1)
    bridge._turn()
    assert sample(bridge, "tfs_bridge_transactions_total", outcome="committed") == 1
    assert sample(bridge, "tfs_bridge_dead_letters_total", stage="fetch", type="FetchError") == 2
    assert sample(bridge, "tfs_bridge_results_total") == 0
    # The records' Kafka timestamp was 2.5 s before the commit (the fake clocks).
    assert sample(bridge, "tfs_bridge_end_to_end_seconds_count") == 2
    assert sample(bridge, "tfs_bridge_end_to_end_seconds_sum") == 5.0
    assert sample(bridge, "tfs_bridge_stage_seconds_count", stage="commit") == 1


def test_lag_is_the_high_watermark_minus_the_committed_position_of_each_owned_partition():
    bridge, consumer, producer, pipeline = loop()
    poll(bridge, consumer, (0, 10), (0, 11), (1, 20))
    pipeline.finish(0, 10)
    consumer.highs = {("in", 0): 15, ("in", 1): 20}
    bridge._lag_due = 0
    bridge._turn()  # committed 0@10: partition 0's position is 11
    lag = {labels: sample(bridge, "kafka_consumergroup_lag", consumergroup="tfs-bridge", topic="in",
                          partition=labels) for labels in ("0", "1")}
    assert lag == {"0": 4, "1": 0}
    consumer.callbacks["on_revoke"]([_Partition("in", 0), _Partition("in", 1)])
    consumer.highs = {}
    bridge._lag_due = 0
    bridge._turn()
    assert bridge.metrics.registry.get_sample_value(
        "kafka_consumergroup_lag", {"consumergroup": "tfs-bridge", "topic": "in", "partition": "0"}) is None
    assert sample(bridge, "tfs_bridge_rebalances_total", kind="revoked") == 1


def test_a_failing_model_shows_as_paused_and_not_ready_until_it_serves_again():
    import time

    bridge, consumer, producer, pipeline = loop()
    bridge.health.problem("model", None)
    bridge.health.problem("kafka", None)
    assert bridge.health.ready() == (True, [])
    poll(bridge, consumer, (0, 0))
    pipeline.predictor.healthy = False
    pipeline.completions.put(Failure(ModelUnusable("UNAVAILABLE beyond the retry budget")))
    bridge._turn()
    assert sample(bridge, "tfs_bridge_input_paused", reason="model_unusable") == 1
    ready, reasons = bridge.health.ready()
    assert not ready and "UNAVAILABLE beyond the retry budget" in reasons[0]
    assert bridge.health.live()[0]  # paused on purpose: alive
    pipeline.predictor.healthy = True
    time.sleep(0.01)
    bridge._turn()
    assert sample(bridge, "tfs_bridge_input_paused", reason="model_unusable") == 0
    assert bridge.health.ready() == (True, [])


def test_a_full_window_shows_as_paused_for_window_full():
    bridge, consumer, producer, pipeline = loop(window_records=2)
    poll(bridge, consumer, (0, 0), (0, 1))
    assert sample(bridge, "tfs_bridge_input_paused", reason="window_full") == 1
    assert sample(bridge, "tfs_bridge_window_records") == 2
    pipeline.finish(0, 0)
    pipeline.finish(0, 1)
    bridge._turn()
    bridge._turn()
    assert sample(bridge, "tfs_bridge_input_paused", reason="window_full") == 0


def test_records_handed_over_before_a_rebalance_in_the_same_poll_are_dropped_and_reread_from_the_commit():
    bridge, consumer, producer, pipeline = loop(commit_interval_ms=50_000)
    poll(bridge, consumer, (0, 0), (0, 1))
    pipeline.finish(0, 0)
    bridge._turn()  # 0@0 produced; 0@1 in flight

    def rebalance():  # partition 0 moves away and comes back; partition 1 is not touched
        consumer.callbacks["on_revoke"]([_Partition("in", 0)])
        consumer.owned = [_Partition("in", 0), _Partition("in", 1)]
        consumer.group_offsets = {("in", 0): 1}

    consumer.during_poll = rebalance
    poll(bridge, consumer, (0, 2), (0, 3), (1, 7))  # 0@2 and 0@3 were fetched before the rebalance
    assert producer.committed == [([(0, 0)], {("in", 0): 1})]  # the revoke committed the finished prefix
    assert sorted(pipeline.submitted)[-1] == (1, 7) and (0, 2) not in pipeline.submitted
    assert consumer.seeks[-1] == {("in", 0): 1}  # read partition 0 again from its commit: 0@1 is redone
    poll(bridge, consumer, (0, 1), (0, 2))
    pipeline.finish(0, 1)
    pipeline.finish(0, 2)
    bridge._turn()
    bridge._commit()
    assert producer.committed[-1][1] == {("in", 0): 3} and producer.committed[-1][0][:2] == [(0, 1), (0, 2)]


# --- a producer call stuck in librdkafka: replace the producer, rewind to what the broker says is committed ------

HUNG = KafkaCallHung("send_offsets_to_transaction did not return within its deadline")


class StartingProducer(FakeProducer):
    """A replacement producer: init() fails `refusals` times (the broker still settling the stuck transaction)."""

    def __init__(self, refusals=0):
        super().__init__()
        self.refusals = refusals
        self.inits = 0

    def init(self):
        self.inits += 1
        if self.inits <= self.refusals:
            raise KafkaTransactionError("init_transactions: concurrent transactions")


def test_a_hung_commit_pauses_input_until_a_new_producer_starts_then_redoes_from_the_brokers_offsets():
    replacements = []

    def replace():
        replacements.append(StartingProducer(refusals=1))
        return replacements[-1]

    bridge, consumer, producer, pipeline = loop(replace_producer=replace, resume_check_interval_ms=1)
    consumer.owned = [_Partition("in", 0), _Partition("in", 1)]
    poll(bridge, consumer, (0, 0), (0, 1), (1, 0))
    producer.commit_error = HUNG
    for partition, offset in ((0, 0), (0, 1), (1, 0)):
        pipeline.finish(partition, offset)
    bridge._turn()
    [fresh] = replacements
    assert bridge.producer is fresh and bridge.checkpoint.producer is fresh and bridge.abandoned == [producer]
    assert not bridge.producer_started and consumer.paused and fresh.inits == 1  # refused once: still paused
    assert bridge.window.records == 0 and bridge.checkpoint.pending == 0
    assert sample(bridge, "tfs_bridge_transactions_total", outcome="abandoned") == 1
    assert not bridge.health.ready()[0]

    # The stuck transaction did commit partition 0 (settled by the broker); partition 1 had nothing committed.
    consumer.group_offsets = {("in", 0): 2}
    bridge._next_start_attempt = 0.0
    bridge._turn()
    assert bridge.producer_started and not consumer.paused and fresh.inits == 2
    assert consumer.seeks[-1] == {("in", 0): 2, ("in", 1): -1001}  # the broker's answer, not the local frontier
    poll(bridge, consumer, (1, 0))  # partition 1 from its start again; partition 0's records are not redone
    pipeline.finish(1, 0)
    bridge._turn()
    assert fresh.committed == [([(1, 0)], {("in", 1): 1})] and producer.committed == []
    assert bridge.replacements == 0  # a commit went through


def test_outcomes_finishing_while_the_new_producer_starts_are_not_produced():
    bridge, consumer, producer, pipeline = loop(replace_producer=lambda: StartingProducer(refusals=5))
    consumer.owned = [_Partition("in", 0)]
    poll(bridge, consumer, (0, 0), (0, 1))
    producer.commit_error = HUNG
    pipeline.finish(0, 0)
    bridge._turn()
    pipeline.finish(0, 1)  # in flight when the producer hung: its window is forgotten
    bridge._turn()
    assert bridge.producer.open == [] and bridge.producer.committed == []


def test_a_hung_abort_replaces_the_producer_too():
    bridge, consumer, producer, pipeline = loop(replace_producer=StartingProducer)
    consumer.owned = [_Partition("in", 0)]
    poll(bridge, consumer, (0, 0))
    pipeline.finish(0, 0)
    producer.commit_error = TransactionAborted("commit_transaction: abortable")

    def hung_abort():
        raise HUNG

    producer.abort = hung_abort
    bridge._turn()
    assert bridge.producer is not producer and bridge.abandoned == [producer] and bridge.producer_started


def test_a_transaction_state_only_a_new_producer_settles_replaces_the_producer():
    bridge, consumer, producer, pipeline = loop(replace_producer=StartingProducer)
    consumer.owned = [_Partition("in", 0)]
    poll(bridge, consumer, (0, 0))
    pipeline.finish(0, 0)
    producer.commit_error = ProducerUnusable("abort_transaction: Broker: invalid transaction state")
    bridge._turn()
    assert bridge.producer is not producer and bridge.producer_started
    assert consumer.seeks[-1] == {("in", 0): -1001}


def test_without_a_way_to_replace_the_producer_a_hung_call_stops_the_loop():
    bridge, consumer, producer, pipeline = loop()
    poll(bridge, consumer, (0, 0))
    producer.commit_error = HUNG
    pipeline.finish(0, 0)
    with pytest.raises(KafkaCallHung):
        bridge._turn()


def test_producers_that_keep_hanging_stop_the_loop_after_max_replacements_in_a_row():
    def replace():
        stuck = StartingProducer()

        def hung_init():
            raise HUNG

        stuck.init = hung_init
        return stuck

    bridge, consumer, producer, pipeline = loop(replace_producer=replace)
    consumer.owned = [_Partition("in", 0)]
    producer.commit_error = HUNG
    poll(bridge, consumer, (0, 0))
    pipeline.finish(0, 0)
    with pytest.raises(KafkaCallHung):
        bridge._turn()  # the commit hangs, then each new producer's init does
    assert len(bridge.abandoned) == MAX_REPLACEMENTS


def test_a_new_producer_that_cannot_start_within_max_pause_stops_the_loop():
    bridge, consumer, producer, pipeline = loop(replace_producer=lambda: StartingProducer(refusals=99),
                                                max_pause_ms=0)
    consumer.owned = [_Partition("in", 0)]
    poll(bridge, consumer, (0, 0))
    producer.commit_error = HUNG
    pipeline.finish(0, 0)
    with pytest.raises(FatalKafkaError, match="max-pause-ms"):
        bridge._turn()


def test_partitions_lost_while_the_abort_fails_replace_the_producer():
    bridge, consumer, producer, pipeline = loop(replace_producer=StartingProducer)
    consumer.owned = [_Partition("in", 0)]
    poll(bridge, consumer, (0, 0))
    pipeline.finish(0, 0)
    bridge._take_completions()
    bridge._produce_ready()
    assert producer.in_transaction

    def failing_abort():
        raise ProducerUnusable("abort_transaction: Local: Broker transport failure")

    producer.abort = failing_abort
    consumer.callbacks["on_lost"]([_Partition("in", 0)])
    assert bridge.producer is not producer and bridge.abandoned == [producer] and bridge.producer_started
    assert producer.committed == [] and bridge.checkpoint.pending == 0


def test_partitions_paused_before_a_rebalance_are_resumed_when_assigned_again_after_input_resumed():
    """The producer is replaced (input paused); an eager rebalance revokes everything, the new producer starts while
    nothing is assigned, then the partitions come back still paused by librdkafka: the loop resumes them."""
    bridge, consumer, producer, pipeline = loop(replace_producer=lambda: StartingProducer(refusals=1))
    partitions = [_Partition("in", 0), _Partition("in", 1)]
    consumer.owned = list(partitions)
    poll(bridge, consumer, (0, 0))
    producer.commit_error = HUNG
    pipeline.finish(0, 0)
    bridge._turn()
    assert not bridge.producer_started and consumer.paused
    consumer.callbacks["on_revoke"](partitions)
    consumer.owned = []
    bridge._next_start_attempt = 0.0
    bridge._turn()
    assert bridge.producer_started
    consumer.owned = list(partitions)
    consumer.callbacks["on_assign"](partitions)
    bridge._turn()
    assert not consumer.paused
