"""Throughput, latency and cost of the bridge on the local stack (real Kafka, model server, HTTP), in one run.

Two cases: the digits model on its 1 KB digit images, and MobileNetV2 (224x224, random weights) on 640x480
photo-like JPEGs. For each:
- the ceiling: the bridge's fetch, preprocess and Predict with no Kafka, at the best batch size and number of
  Predict calls in flight it finds;
- the bridge, exactly once, over a pre-filled topic: its defaults, and with decoding in 2 worker processes;
- the original demo's pattern: poll one record, fetch, Predict one image, produce, commit;
- end-to-end latency at half the bridge's rate, from producing a URL to a read_committed reader (fetch wait
  10 ms) seeing its result, against the target: commit interval + batch linger + two batch inferences + 50 ms;
- CPU milliseconds per record of the bridge and of the model server, and their peak resident memory.
Everything is reported as ratios within this run (absolute figures depend on the machine), and last as one
JSON line for tracking.

    .venv/bin/python -m scripts.benchmark [--case digits|mobilenet] [--variants] [--compare REV] [--backends]

--variants also runs other settings on digits (no batching, batch 8, encoded bytes, commit every 1 s).
--backends runs, for each case, the bridge with each model backend instead (TF Serving's gRPC API, its REST API,
the model embedded with LiteRT, and the Open Inference Protocol to Seldon MLServer running the same .tflite with
LiteRT), each with its records/s, latency at half its rate, CPU ms/record of bridge and model server, and peak
memory, beside the one-record-at-a-time pattern.
--tracing runs the digits defaults with tracing off, then on (--tracing, spans exported over OTLP to a local
OpenTelemetry Collector) sampling 100 % and 1 % of new traces: records/s and the bridge's CPU ms/record of each.
--compare REV runs only the digits defaults, with the bridge of commit REV (checked out in a temporary git
worktree) between two runs of this tree's, so a change is measured against its predecessor on one stack.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from scripts.kafka_io import read_topic
from scripts.local_stack import BACKENDS, ROOT, local_stack

PARTITIONS = 3
COMMIT_INTERVAL_MS, BATCH_LINGER_MS, MAX_BATCH = 100, 20, 32  # the bridge's defaults (bridge/config.py)


@dataclass(frozen=True)
class Case:
    model: str
    images: str  # "digits" or "photos"
    records: int  # per bridge run
    ceiling_records: int  # per ceiling configuration
    demo_records: int


CASES = {
    "digits": Case("digits", "digits", records=2000, ceiling_records=1000, demo_records=400),
    "mobilenet": Case("mobilenet", "photos", records=600, ceiling_records=300, demo_records=120),
}
DIGITS_VARIANTS: dict[str, list[str]] = {
    "no batching (batch 1, 1 in flight)": ["--max-batch-size", "1", "--max-in-flight", "1"],
    "batch 8": ["--max-batch-size", "8"],
    "encoded bytes signature": ["--signature-name", "bytes"],
    "commit every 1 s": ["--commit-interval-ms", "1000"],
}


# --- process figures --------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def cpu_seconds_of(stat: Path) -> float:
    """User + system CPU time in a /proc/.../stat file (a process's or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    """Every descendant process (the bridge's decoding workers), whichever thread started them."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        kids = []
        for path in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                kids += [int(kid) for kid in path.read_text().split()]
        found += kids
        queue += kids
    return found


class CpuMeter:
    """CPU time used by a process (and its descendants, if asked) since the meter was made."""

    def __init__(self, pid: int, descendants: bool = False) -> None:
        self.pid = pid
        self.descendants = descendants
        self.before = self._total()

    def _total(self) -> float:
        total = 0.0
        for pid in [self.pid, *(children(self.pid) if self.descendants else [])]:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += cpu_seconds(pid)
        return total

    def ms_per(self, records: int) -> float:
        return (self._total() - self.before) * 1000 / records


class ThreadMeter:
    """CPU time of a process's threads since the meter was made, grouped by Python thread name (fetch_0,
    fetch_1... count as "fetch"), with the names read by `py-spy dump`; threads Python did not start keep
    their OS name (rdk:broker..., event_engine). Threads that ended before the reading are not counted."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.names = self._python_names()
        self.before = self._by_thread()

    def _python_names(self) -> dict[str, str]:
        try:
            dump = subprocess.run([str(Path(sys.executable).with_name("py-spy")), "dump", "--json", "--pid",
                                   str(self.pid)], capture_output=True, text=True, timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
        return {str(thread["os_thread_id"]): thread["thread_name"] or "?" for thread in json.loads(dump)}

    def _by_thread(self) -> dict[str, tuple[str, float]]:
        threads = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                name = self.names.get(task.name) or (task / "comm").read_text().strip()
                threads[task.name] = (re.sub(r"[_-]?\d+$", "", name), cpu_seconds_of(task / "stat"))
        return threads

    def ms_per(self, records: int) -> dict[str, float]:
        self.names.update(self._python_names())  # thread pools start their threads as work comes
        groups: collections.Counter[str] = collections.Counter()
        for tid, (group, seconds) in self._by_thread().items():
            groups[group] += seconds - self.before.get(tid, ("", 0.0))[1]
        return {group: seconds * 1000 / records for group, seconds in groups.most_common() if seconds > 0}


# --- the bridge over a pre-filled topic ---------------------------------------------------------------------------

def fresh_topics(stack, prefix: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    topics = {"input": f"{prefix}-in-{suffix}", "output": f"{prefix}-out-{suffix}", "dead": f"{prefix}-dead-{suffix}"}
    stack.kafka.create_topics({topic: PARTITIONS for topic in topics.values()})
    return topics


def fill(stack, topic: str, urls: list[str], records: int) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka.bootstrap_servers, "linger.ms": 5})
    for n in range(records):
        producer.produce(topic, urls[n % len(urls)].encode(), partition=n % PARTITIONS)
    if producer.flush(60):
        raise SystemExit("could not fill the input topic")


@contextlib.contextmanager
def running_bridge(stack, case: Case, topics: dict[str, str], flags: list[str], root: Path = ROOT,
                   backend: str = "grpc", env: dict[str, str] | None = None):
    with stack.bridge("--input-topic", topics["input"], "--output-topic", topics["output"],
                      "--dead-letter-topic", topics["dead"], "--group-id", f"bench-{topics['input']}",
                      "--model-name", case.model, "--progress-interval-ms", "0", *flags,
                      log_name=f"{topics['input']}.log", root=root, backend=backend, model=case.model,
                      allow_local_images=has_address_policy(root), env=env) as bridge:
        bridge.wait_for_log("assigned", timeout=120)
        yield bridge


def logged_at(log: str, text: str) -> float:
    """The wall-clock time of the first log line containing `text` (the log's asctime, local time)."""
    line = next(line for line in log.splitlines() if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class BridgeRun:
    rate: float
    bridge_cpu_ms: float
    server_cpu_ms: float
    broker_cpu_ms: float
    harness_cpu_ms: float  # this process: the image servers and the reader
    bridge_rss_mib: float
    cores_busy: float  # CPU seconds of all four per second of the run
    bridge_threads_ms: dict[str, float]  # the bridge's CPU ms/record by thread group
    server_rss_mib: float = 0.0  # the model server's peak so far (one server serves every run of the benchmark)


def run_bridge(stack, case: Case, urls: list[str], flags: list[str], root: Path = ROOT,
               backend: str = "grpc", env: dict[str, str] | None = None) -> BridgeRun:
    """Records/s from the bridge's partition assignment to the last result's Kafka timestamp."""
    topics = fresh_topics(stack, "bench")
    fill(stack, topics["input"], urls, case.records)
    with running_bridge(stack, case, topics, flags, root, backend, env) as bridge:
        threads = ThreadMeter(bridge.process.pid)
        server = stack.server_pid(backend)
        meters = [CpuMeter(bridge.process.pid, descendants=True), CpuMeter(server, descendants=True),
                  *(CpuMeter(pid) for pid in (stack.kafka.process.pid, os.getpid()))]
        clock = time.monotonic()
        outputs = read_topic(stack.kafka.bootstrap_servers, topics["output"], expect=case.records, timeout=900)
        wall = time.monotonic() - clock
        if len(outputs) < case.records:
            raise SystemExit(f"only {len(outputs)}/{case.records} outputs after 900 s:\n{bridge.log()[-2000:]}")
        cpu_ms = [meter.ms_per(case.records) for meter in meters]
        thread_ms = threads.ms_per(case.records)
        rss = max(peak_rss_mib(pid) for pid in [bridge.process.pid, *children(bridge.process.pid)])
        started = logged_at(bridge.log(), "assigned")
    finished = max(message.timestamp()[1] for message in outputs) / 1000
    return BridgeRun(case.records / (finished - started), *cpu_ms, rss,
                     cores_busy=sum(cpu_ms) * case.records / 1000 / wall, bridge_threads_ms=thread_ms,
                     server_rss_mib=max(peak_rss_mib(pid) for pid in [server, *children(server)]))


# --- the transform alone, and the demo's pattern -------------------------------------------------------------------

def local_pipeline(stack, case: Case, **settings):
    """The bridge's transform on this stack, in this process, with `settings` over the defaults."""
    from bridge.config import Settings
    from bridge.loop.run import build_pipeline
    from bridge.model.backend import open_backend

    chosen = Settings(model_server=stack.model_address, model_name=case.model, fetch_allow=("127.0.0.1",),
                      **settings)
    client = open_backend(chosen)
    return build_pipeline(chosen, client, client.signature(), threading.Event()), client


def transform_rate(stack, case: Case, urls: list[str], records: int, **settings) -> float:
    from bridge.records import Record

    pipeline, client = local_pipeline(stack, case, **settings)
    inputs = [Record("bench", n % PARTITIONS, n, None, urls[n % len(urls)].encode()) for n in range(records)]
    try:
        pipeline.process(inputs[:64])  # warm: connections, the model's first batches
        started = time.monotonic()
        outcomes = pipeline.process(inputs)
        elapsed = time.monotonic() - started
    finally:
        pipeline.close()
        client.close()
    if sum(message.is_result for message in outcomes) < records:
        raise SystemExit("ceiling: some images were not classified")
    return records / elapsed


def run_ceiling(stack, case: Case, urls: list[str]) -> tuple[float, dict[str, int]]:
    """The best records/s of the transform with no Kafka, over batch sizes and Predict calls in flight."""
    best, best_config = 0.0, {}
    for batch, in_flight in itertools.product((8, 16, 32, 64), (1, 2, 4)):
        rate = transform_rate(stack, case, urls, case.ceiling_records, max_batch_size=batch, max_in_flight=in_flight)
        print(f"    ceiling search: batch {batch:2d}, {in_flight} in flight: {rate:7.1f} records/s", flush=True)
        if rate > best:
            best, best_config = rate, {"max_batch_size": batch, "max_in_flight": in_flight}
    return best, best_config


def batch_inference_ms(stack, case: Case, urls: list[str], size: int = MAX_BATCH) -> float:
    """The median time of one Predict on a full batch of prepared images (the latency target's unit)."""
    pipeline, client = local_pipeline(stack, case)
    try:
        images = [pipeline.preprocessor.prepare(pipeline.fetcher.fetch(url)) for url in urls[:size]]
        batch = pipeline.predictor
        times = []
        for _ in range(7):
            started = time.monotonic()
            batch.predict(images)
            times.append((time.monotonic() - started) * 1000)
    finally:
        pipeline.close()
        client.close()
    return statistics.median(times[2:])


def run_one_at_a_time(stack, case: Case, urls: list[str]) -> float:
    """The original demo's pattern, exactly once: poll one record, fetch, Predict one image, produce, commit
    (confluent-kafka's transactional loop, with the bridge's transform for the one record)."""
    from bridge.records import Record

    topics = fresh_topics(stack, "one")
    fill(stack, topics["input"], urls, case.demo_records)
    bootstrap = stack.kafka.bootstrap_servers
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"one-{topics['input']}"})
    producer.init_transactions(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"one-{topics['input']}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.subscribe([topics["input"]])
    pipeline, client = local_pipeline(stack, case)
    done, started = 0, None
    try:
        while done < case.demo_records:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            started = started or time.monotonic()
            [outcome] = pipeline.process([Record.from_message(message)])
            producer.begin_transaction()
            producer.produce(topics["output"], outcome.value, partition=message.partition())
            producer.send_offsets_to_transaction(
                [TopicPartition(topics["input"], message.partition(), message.offset() + 1)],
                consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
            done += 1
        elapsed = time.monotonic() - started
    finally:
        consumer.close()
        pipeline.close()
        client.close()
    return case.demo_records / elapsed


# --- latency ------------------------------------------------------------------------------------------------------

def run_latency(stack, case: Case, urls: list[str], rate: float, seconds: float = 15.0,
                warm_up: float = 2.0, backend: str = "grpc") -> list[float]:
    """End-to-end latencies (ms, sorted) at `rate` records/s, of the records sent after `warm_up` seconds (the
    bridge's first Predict calls and connections). The reader is assigned the output partitions directly, so
    no group join delays what it sees."""
    total = int(rate * (warm_up + seconds))
    topics = fresh_topics(stack, "lat")
    bootstrap = stack.kafka.bootstrap_servers
    with running_bridge(stack, case, topics, [], backend=backend):
        reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4()}",
                           "isolation.level": "read_committed", "fetch.wait.max.ms": 10,
                           "enable.auto.commit": False})
        reader.assign([TopicPartition(topics["output"], p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        reader.poll(1.0)  # connected and fetching before the first record is sent
        latencies: list[float] = []
        seen = 0

        def read() -> None:
            nonlocal seen
            deadline = time.monotonic() + warm_up + seconds + 60
            while seen < total and time.monotonic() < deadline:
                message = reader.poll(0.05)
                if message is not None and not message.error():
                    seen += 1
                    sent = json.loads(message.value())["id"].split()
                    if sent[0] == "timed":
                        latencies.append((time.monotonic() - float(sent[1])) * 1000)

        reading = threading.Thread(target=read)
        reading.start()
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        began = time.monotonic()
        for n in range(total):
            time.sleep(max(0.0, began + n / rate - time.monotonic()))
            now = time.monotonic()
            phase = "timed" if now - began >= warm_up else "warm-up"
            producer.produce(topics["input"], json.dumps({"url": urls[n % len(urls)], "id": f"{phase} {now!r}"}),
                             partition=n % PARTITIONS)
            producer.poll(0)
        producer.flush(30)
        reading.join()
        reader.close()
    return sorted(latencies)


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(len(values) * fraction))]


# --- the cases ----------------------------------------------------------------------------------------------------

def case_urls(stack, case: Case) -> list[str]:
    return list(stack.digits.labels) if case.images == "digits" else stack.photos


def run_case(stack, name: str, case: Case, variants: bool) -> dict:
    urls = case_urls(stack, case)
    print(f"\n{name}: model {case.model} on {case.images}, {case.records} records per bridge run", flush=True)
    ceiling, ceiling_config = run_ceiling(stack, case, urls)
    print(f"  ceiling: {ceiling:.1f} records/s at {ceiling_config}", flush=True)
    settings = {"defaults": [], "decoding in 2 processes": ["--decode-processes", "2"],
                "2 Predict calls in flight": ["--max-in-flight", "2"]}
    if variants:
        settings.update(DIGITS_VARIANTS)
    runs = {}
    for label, flags in settings.items():
        runs[label] = run = run_bridge(stack, case, urls, flags)
        print(f"  bridge, {label:<28} {run.rate:7.1f} records/s ({run.rate / ceiling:.2f} of the ceiling); CPU "
              f"ms/record: bridge {run.bridge_cpu_ms:.2f}, model server {run.server_cpu_ms:.2f}, broker "
              f"{run.broker_cpu_ms:.2f}, image server and reader {run.harness_cpu_ms:.2f} ({run.cores_busy:.1f} "
              f"cores busy); bridge peak RSS {run.bridge_rss_mib:.0f} MiB", flush=True)
        if label == "defaults":
            print("    the bridge's threads, CPU ms/record: " + ", ".join(
                f"{group} {ms:.2f}" for group, ms in run.bridge_threads_ms.items() if ms >= 0.01), flush=True)
    demo = run_one_at_a_time(stack, case, urls)
    defaults = runs["defaults"]
    print(f"  one record at a time (the demo pattern): {demo:.1f} records/s; the bridge does "
          f"{defaults.rate / demo:.1f}x", flush=True)
    inference = batch_inference_ms(stack, case, urls)
    target = COMMIT_INTERVAL_MS + BATCH_LINGER_MS + 2 * inference + 50
    latencies = run_latency(stack, case, urls, defaults.rate / 2)
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(f"  latency at {defaults.rate / 2:.0f} records/s, {len(latencies)} records: p50 {p50:.0f} ms, p99 "
          f"{p99:.0f} ms, max {latencies[-1]:.0f} ms; target p99 <= {target:.0f} ms (one batch of {MAX_BATCH}: "
          f"{inference:.0f} ms)", flush=True)
    return {
        "case": name, "model": case.model, "images": case.images, "ceiling": round(ceiling, 1),
        "ceiling_config": ceiling_config, "demo_pattern": round(demo, 1),
        "bridge": {label: {"records_per_s": round(run.rate, 1), "of_ceiling": round(run.rate / ceiling, 3),
                           "bridge_cpu_ms_per_record": round(run.bridge_cpu_ms, 2),
                           "model_server_cpu_ms_per_record": round(run.server_cpu_ms, 2),
                           "broker_cpu_ms_per_record": round(run.broker_cpu_ms, 2),
                           "harness_cpu_ms_per_record": round(run.harness_cpu_ms, 2),
                           "cores_busy": round(run.cores_busy, 2),
                           "bridge_threads_cpu_ms_per_record": {group: round(ms, 3) for group, ms
                                                                in run.bridge_threads_ms.items()},
                           "bridge_peak_rss_mib": round(run.bridge_rss_mib)} for label, run in runs.items()},
        "latency_ms": {"p50": round(p50), "p99": round(p99), "max": round(latencies[-1]),
                       "at_records_per_s": round(defaults.rate / 2, 1), "p99_target": round(target)},
        "batch_inference_ms": round(inference, 1),
    }


def run_backends(stack, name: str, case: Case) -> dict:
    """The bridge with each model backend on one case, beside the one-record-at-a-time pattern (gRPC)."""
    urls = case_urls(stack, case)
    print(f"\n{name}: model {case.model} on {case.images}, {case.records} records per bridge run", flush=True)
    rows = {}
    for backend in BACKENDS:
        run = run_bridge(stack, case, urls, [], backend=backend)
        latencies = run_latency(stack, case, urls, run.rate / 2, backend=backend)
        rows[backend] = row = {
            "records_per_s": round(run.rate, 1), "latency_at_records_per_s": round(run.rate / 2, 1),
            "p50_ms": round(percentile(latencies, 0.50)), "p99_ms": round(percentile(latencies, 0.99)),
            "bridge_cpu_ms_per_record": round(run.bridge_cpu_ms, 2),
            "model_server_cpu_ms_per_record": round(run.server_cpu_ms, 2),
            "together_cpu_ms_per_record": round(run.bridge_cpu_ms + run.server_cpu_ms, 2),
            "bridge_peak_rss_mib": round(run.bridge_rss_mib),
            # The model server idles while the bridge runs the model itself.
            "model_server_peak_rss_mib": None if backend == "embedded" else round(run.server_rss_mib)}
        print(f"  {backend:<9} {row['records_per_s']:7.1f} records/s; at {row['latency_at_records_per_s']:.0f}/s "
              f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms; CPU ms/record: bridge "
              f"{row['bridge_cpu_ms_per_record']:.2f} + model server {row['model_server_cpu_ms_per_record']:.2f} = "
              f"{row['together_cpu_ms_per_record']:.2f}; peak RSS bridge {row['bridge_peak_rss_mib']} MiB, model "
              f"server {row['model_server_peak_rss_mib'] or '-'} MiB", flush=True)
    demo = run_one_at_a_time(stack, case, urls)
    print(f"  one record at a time (gRPC, the demo pattern): {demo:.1f} records/s", flush=True)
    grpc_rate = rows["grpc"]["records_per_s"]
    return {"case": name, "model": case.model, "images": case.images, "backends": rows,
            "demo_pattern_records_per_s": round(demo, 1),
            "of_grpc": {backend: round(row["records_per_s"] / grpc_rate, 2) for backend, row in rows.items()}}


def run_tracing(stack, case: Case) -> dict:
    """The bridge on `case` with tracing off, and on with 100 % and 1 % of new traces sampled, spans exported to a
    local OpenTelemetry Collector: records/s and the bridge's CPU ms/record of each, off first and last."""
    from scripts.otel_collector import OtelCollector

    urls = case_urls(stack, case)
    samplers = {"off": None, "100 %": ("parentbased_always_on", ""), "1 %": ("parentbased_traceidratio", "0.01")}
    rows: dict[str, list[BridgeRun]] = {name: [] for name in samplers}
    (stack.work_dir / "otelcol").mkdir(exist_ok=True)
    with OtelCollector(stack.work_dir / "otelcol") as collector:
        for name in [*samplers, "off"]:
            sampler = samplers[name]
            env = None if sampler is None else {
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_SERVICE_NAME": "tfs-bridge-benchmark",
                "OTEL_TRACES_SAMPLER": sampler[0], "OTEL_TRACES_SAMPLER_ARG": sampler[1]}
            run = run_bridge(stack, case, urls, [] if sampler is None else ["--tracing"], env=env)
            rows[name].append(run)
            print(f"  tracing {name:<6} {run.rate:7.1f} records/s; bridge CPU {run.bridge_cpu_ms:.2f} ms/record",
                  flush=True)
        spans = len(collector.spans())
    off = statistics.mean(run.bridge_cpu_ms for run in rows["off"])
    return {"case": case.model, "spans_exported": spans, **{
        name: {"records_per_s": round(statistics.mean(r.rate for r in runs), 1),
               "bridge_cpu_ms_per_record": round(statistics.mean(r.bridge_cpu_ms for r in runs), 2),
               "cpu_of_off": round(statistics.mean(r.bridge_cpu_ms for r in runs) / off, 2)}
        for name, runs in rows.items()}}


def run_outage(stack, case: Case, backend: str, rate: float = 50.0, down: float = 10.0) -> dict:
    """A model-server outage (gRPC, REST) or a bridge crash (embedded, where the model is in the bridge) while
    records flow at `rate`: how long until input pauses (or the bridge is gone), and the time from recovery
    (the model server ready again, or the bridge restarted) to the first result committed after it."""
    urls = case_urls(stack, case)
    topics = fresh_topics(stack, "outage")
    bootstrap = stack.kafka.bootstrap_servers
    flags = ["--retry-budget-ms", "3000", "--resume-check-interval-ms", "500", "--transactional-id",
             f"outage-{topics['input']}"]
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"outage-{uuid.uuid4()}",
                       "isolation.level": "read_committed", "fetch.wait.max.ms": 10, "enable.auto.commit": False})
    reader.assign([TopicPartition(topics["output"], p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen: list[float] = []  # when each result became visible
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            message = reader.poll(0.05)
            if message is not None and not message.error():
                seen.append(time.monotonic())

    def send() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        n, began = 0, time.monotonic()
        while not stop.is_set():
            time.sleep(max(0.0, began + n / rate - time.monotonic()))
            producer.produce(topics["input"], urls[n % len(urls)].encode(), partition=n % PARTITIONS)
            producer.poll(0)
            n += 1
        producer.flush(30)

    def first_result_after(moment: float) -> float:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            later = [t for t in seen if t > moment]
            if later:
                return later[0] - moment
            time.sleep(0.05)
        return float("nan")

    threads = [threading.Thread(target=read), threading.Thread(target=send)]
    for thread in threads:
        thread.start()
    try:
        with running_bridge(stack, case, topics, flags, backend=backend) as bridge:
            time.sleep(5)
            failed = time.monotonic()
            if backend == "embedded":  # the model fails with the bridge: SIGKILL it, restart it
                bridge.kill()
            else:
                server = stack.oip_server if backend == "oip" else stack.model_server
                server.stop()
                time.sleep(down)
                paused_after = logged_monotonic(bridge.log(), "pausing input", failed)
                server.start_again() if backend == "oip" else server.start()
                recovered = time.monotonic()
                recovery = first_result_after(recovered)
        if backend == "embedded":
            paused_after = 0.0
            time.sleep(down)
            recovered = time.monotonic()
            with running_bridge(stack, case, topics, flags, backend=backend):
                recovery = first_result_after(recovered)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        reader.close()
    return {"paused_after_s": round(paused_after, 1), "recovery_to_first_result_s": round(recovery, 2)}


def logged_monotonic(log: str, text: str, since: float) -> float:
    """Seconds from `since` (time.monotonic()) to the first log line with `text` (nan if none)."""
    try:
        wall = logged_at(log, text)
    except StopIteration:
        return float("nan")
    return wall - (time.time() - (time.monotonic() - since))


def print_backends(results: list[dict]) -> None:
    print("\ncase       backend    records/s (of gRPC)   p50 / p99 ms   CPU ms/record bridge + server = together"
          "   peak RSS MiB bridge / server")
    for result in results:
        for backend, row in result["backends"].items():
            print(f"  {result['case']:<9} {backend:<9} {row['records_per_s']:8.1f} ({result['of_grpc'][backend]:.2f})"
                  f"        {row['p50_ms']:4d} / {row['p99_ms']:4d}    {row['bridge_cpu_ms_per_record']:6.2f} + "
                  f"{row['model_server_cpu_ms_per_record']:6.2f} = {row['together_cpu_ms_per_record']:6.2f}"
                  f"                {row['bridge_peak_rss_mib']:4d} / {row['model_server_peak_rss_mib'] or '-':>4}")
        print(f"  {result['case']:<9} one at a time {result['demo_pattern_records_per_s']:5.1f}")


def has_address_policy(root: Path) -> bool:
    """Whether the bridge in this checkout refuses loopback unless allowed (and so needs --fetch-allow)."""
    return "fetch_allow" in (root / "bridge" / "config.py").read_text()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A temporary checkout of commit `rev`, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="tfs-bridge-compare-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)


def compare(stack, rev: str) -> None:
    case, urls = CASES["digits"], list(stack.digits.labels)
    with worktree(rev) as old:
        for label, root in (("this tree", ROOT), (f"at {rev}", old), ("this tree, again", ROOT)):
            run = run_bridge(stack, case, urls, [], root=root)
            print(f"  digits defaults, {label:<24} {run.rate:7.1f} records/s, bridge CPU {run.bridge_cpu_ms:.2f} "
                  f"ms/record", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="run only these cases")
    parser.add_argument("--variants", action="store_true", help="also run other settings on digits")
    parser.add_argument("--compare", metavar="REV", help="only the digits defaults, against the bridge of REV")
    parser.add_argument("--tracing", action="store_true", help="only digits, tracing off and on (100 %%, 1 %%)")
    parser.add_argument("--backends", action="store_true",
                        help="each model backend instead (gRPC, REST, embedded, Open Inference Protocol)")
    args = parser.parse_args()
    names = ["digits"] if args.tracing else args.case or list(CASES)
    models = sorted({CASES[name].model for name in names})
    print(f"starting the local stack with {', '.join(models)}; {PARTITIONS} partitions", flush=True)
    with local_stack(partitions=PARTITIONS, digits=200, models=models, photos=64, oip=args.backends) as stack:
        if args.compare:
            compare(stack, args.compare)
            return 0
        if args.tracing:
            result = run_tracing(stack, CASES["digits"])
            print("BENCHMARK_JSON " + json.dumps({"partitions": PARTITIONS, "cpus": os.cpu_count(), "tracing": result}))
            return 0
        if args.backends:
            backends = [run_backends(stack, name, CASES[name]) for name in names]
            # Last: they stop and start the model server.
            print("\noutages (digits, 50 records/s; gRPC, REST and OIP: the model server down 10 s; embedded: the "
                  "bridge killed and restarted after 10 s)", flush=True)
            outages = {}
            for backend in BACKENDS:
                outages[backend] = outage = run_outage(stack, CASES["digits"], backend)
                print(f"  {backend:<9} input paused {outage['paused_after_s']} s after the failure; first result "
                      f"{outage['recovery_to_first_result_s']} s after recovery", flush=True)
            print_backends(backends)
            print("BENCHMARK_JSON " + json.dumps({"partitions": PARTITIONS, "cpus": os.cpu_count(),
                                                  "backends": backends, "outages": outages}))
            return 0
        results = [run_case(stack, name, CASES[name], args.variants and name == "digits") for name in names]
    print("\ncase        ceiling   bridge (of ceiling)   demo pattern (bridge x)   p99 / target   CPU ms/record")
    for result in results:
        bridge = result["bridge"]["defaults"]
        latency = result["latency_ms"]
        print(f"  {result['case']:<9} {result['ceiling']:7.1f}   {bridge['records_per_s']:7.1f} "
              f"({bridge['of_ceiling']:.2f})        {result['demo_pattern']:6.1f} "
              f"({bridge['records_per_s'] / result['demo_pattern']:4.1f}x)"
              f"            {latency['p99']:4d} / {latency['p99_target']:4d}    "
              f"{bridge['bridge_cpu_ms_per_record']:.2f}")
    print("BENCHMARK_JSON " + json.dumps({"partitions": PARTITIONS, "cpus": os.cpu_count(), "cases": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
