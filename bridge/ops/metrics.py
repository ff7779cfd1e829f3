"""What the bridge counts: its Prometheus metrics, and the progress line it logs from them.

Names follow Prometheus conventions (base units in the name, _total on counters). kafka_consumergroup_lag has
the name and labels of kafka_exporter's metric, so dashboards and alerts written for it work unchanged.
Counters of results and dead letters move when their transaction commits, so they agree with what a
read_committed reader sees (an aborted transaction is redone and counted once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from bridge.records import OutputMessage

log = logging.getLogger(__name__)

STAGES = ("fetch", "preprocess", "predict", "commit")
PAUSE_REASONS = ("model_unusable", "window_full")
# The dead letters the bridge can write, (stage, type) as in bridge.errors: each series exists from the start.
DEAD_LETTER_KINDS = (
    ("parse", "InvalidRecord"), ("parse", "UnexpectedRecordError"),
    ("fetch", "FetchError"), ("fetch", "blocked"), ("fetch", "UnexpectedRecordError"),
    ("preprocess", "ImageError"), ("preprocess", "UnexpectedRecordError"),
    ("predict", "PredictionRejected"),
    ("output", "OutputError"), ("output", "UnexpectedRecordError"),
)
RETRIED_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class BridgeMetrics:
    """Every metric of one bridge, in its own registry. Safe to update from any thread."""

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        r = self.registry
        self.records_consumed = Counter("tfs_bridge_records_consumed", "Input records polled", registry=r)
        self.results = Counter("tfs_bridge_results", "Results committed to the output topic", registry=r)
        self.dead_letters = Counter("tfs_bridge_dead_letters", "Dead letters committed, by stage and type",
                                    ["stage", "type"], registry=r)
        self.transactions = Counter("tfs_bridge_transactions",
                                    "Kafka transactions, by outcome (committed, aborted, abandoned: its producer was "
                                    "unusable and replaced)", ["outcome"], registry=r)
        self.retries = Counter("tfs_bridge_predict_retries", "Predict calls retried, by gRPC code", ["code"],
                               registry=r)
        self.rebalances = Counter("tfs_bridge_rebalances", "Partition assignment changes, by kind "
                                  "(assigned, revoked, lost)", ["kind"], registry=r)
        self.end_to_end = Histogram("tfs_bridge_end_to_end_seconds", "From an input record's Kafka timestamp to "
                                    "the commit of its outcome", buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("tfs_bridge_stage_seconds", "Time of one fetch, preprocess, Predict call "
                                       "or commit", ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tfs_bridge_predict_batch_size_images", "Images per Predict call",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("tfs_bridge_predict_batches_in_flight", "Predict calls in flight", registry=r)
        self.window_records = Gauge("tfs_bridge_window_records", "Records polled and not yet committed", registry=r)
        self.paused = Gauge("tfs_bridge_input_paused", "1 while input is paused, by reason", ["reason"], registry=r)
        self.lag = Gauge("kafka_consumergroup_lag", "Records of the partition not yet committed by the group "
                         "(high watermark minus the committed position)", ["consumergroup", "topic", "partition"],
                         registry=r)
        self.model = Info("tfs_bridge_model", "The model the bridge serves", registry=r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        for stage, kind in DEAD_LETTER_KINDS:
            self.dead_letters.labels(stage, kind)
        for outcome in ("committed", "aborted", "abandoned"):
            self.transactions.labels(outcome)
        for code in RETRIED_CODES:
            self.retries.labels(code)
        for kind in ("assigned", "revoked", "lost"):
            self.rebalances.labels(kind)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for reason in PAUSE_REASONS:
            self.paused.labels(reason).set(0)
        self._lock = threading.Lock()
        self._lag_series: set[tuple[str, str, str]] = set()
        self.pause_reasons: set[str] = set()  # why input is paused now (empty: it is not)

    def committed(self, messages: Iterable[OutputMessage]) -> None:
        """A transaction committed with these outcomes."""
        self.transactions.labels("committed").inc()
        now = self.clock()
        for message in messages:
            if message.is_result:
                self.results.inc()
            else:
                stage, kind = message.failure or ("output", "OutputError")
                self.dead_letters.labels(stage, kind).inc()
            if message.record.timestamp is not None:
                self.end_to_end.observe(max(0.0, now - message.record.timestamp))

    def set_lag(self, group: str, lags: Mapping[tuple[str, int], int]) -> None:
        """The lag of every partition the bridge owns now; the series of partitions it no longer owns go."""
        series = {(group, topic, str(partition)) for topic, partition in lags}
        with self._lock:
            for gone in self._lag_series - series:
                self.lag.remove(*gone)
            self._lag_series = series
        for (topic, partition), lag in lags.items():
            self.lag.labels(group, topic, str(partition)).set(lag)

    def set_paused(self, reason: str, paused: bool) -> None:
        (self.pause_reasons.add if paused else self.pause_reasons.discard)(reason)
        self.paused.labels(reason).set(1 if paused else 0)

    def set_model(self, name: str, version: int | str, signature: str) -> None:
        self.model.info({"model_name": name, "model_version": str(version), "signature_name": signature})


def total(counter: Counter | Gauge) -> float:
    """The sum of a metric's samples over every label set (for the progress line)."""
    return sum(sample.value for metric in counter.collect() for sample in metric.samples
               if not sample.name.endswith("_created"))


class Progress:
    """Logs one line every `interval` seconds: rate, totals, lag, paused or not."""

    def __init__(self, metrics: BridgeMetrics, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self._since = clock()
        self._done_at_last_line = 0.0

    def maybe_log(self) -> None:
        now = self.clock()
        if self.interval <= 0 or now - self._since < self.interval:
            return
        m = self.metrics
        results, dead_letters = total(m.results), total(m.dead_letters)
        done = results + dead_letters
        paused = sorted(m.pause_reasons)
        log.info("committed %d records (%.1f/s): %d results, %d dead letters; lag %d; %s", done,
                 (done - self._done_at_last_line) / (now - self._since), results, dead_letters, total(m.lag),
                 "paused (" + ", ".join(paused) + ")" if paused else "running")
        self._since = now
        self._done_at_last_line = done
