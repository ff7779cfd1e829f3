"""Throughput of the bridge on the local stack (real Kafka, model server, HTTP), for several settings in one run.

For each variant: fresh topics, a running bridge, then N digit URLs produced at once; the clock runs from the
first produce to the moment a read_committed reader has seen all N outputs. Last, the ceiling: the same fetch,
preprocess and Predict of N URLs with no Kafka at all. Reported as records/s and as a ratio to the first
variant, since absolute numbers depend on the machine.

    .venv/bin/python -m scripts.benchmark [--records 2000] [--compare REV]

--compare REV also runs the defaults with the bridge of commit REV (checked out in a temporary git worktree),
between two runs of this tree's defaults, so a change is measured against its predecessor on the same stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Producer

from scripts.kafka_io import read_topic
from scripts.local_stack import ROOT, local_stack

VARIANTS: dict[str, list[str]] = {
    "defaults (batch 32, 2 in flight, uint8)": [],
    "no batching (batch 1, 1 in flight)": ["--max-batch-size", "1", "--max-in-flight", "1"],
    "batch 8": ["--max-batch-size", "8"],
    "encoded bytes signature": ["--signature-name", "bytes"],
    "commit every 1 s": ["--commit-interval-ms", "1000"],
}
PARTITIONS = 3


@contextlib.contextmanager
def bridge_on_fresh_topics(stack, flags: list[str], root: Path = ROOT) -> Iterator[tuple[dict[str, str], object]]:
    """A running bridge on new input, output and dead-letter topics: (topics, BridgeProcess)."""
    suffix = uuid.uuid4().hex[:6]
    topics = {"input": f"bench-in-{suffix}", "output": f"bench-out-{suffix}", "dead": f"bench-dead-{suffix}"}
    stack.kafka.create_topics({topic: PARTITIONS for topic in topics.values()})
    with stack.bridge("--input-topic", topics["input"], "--output-topic", topics["output"],
                      "--dead-letter-topic", topics["dead"], "--group-id", f"bench-{suffix}",
                      "--metrics-interval-ms", "0", *flags, log_name=f"bench-{suffix}.log", root=root,
                      allow_local_images=has_address_policy(root)) as bridge:
        bridge.wait_for_log("assigned")
        yield topics, bridge


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_variant(stack, name: str, flags: list[str], records: int, root: Path = ROOT) -> float:
    urls = list(stack.digits.labels)
    with bridge_on_fresh_topics(stack, flags, root) as (topics, bridge):
        cpu_before = cpu_seconds(bridge.process.pid)
        producer = Producer({"bootstrap.servers": stack.kafka.bootstrap_servers, "linger.ms": 5})
        started = time.monotonic()
        for n in range(records):
            producer.produce(topics["input"], urls[n % len(urls)].encode(), partition=n % PARTITIONS)
        producer.flush(30)
        outputs = read_topic(stack.kafka.bootstrap_servers, topics["output"], expect=records, timeout=600)
        finished = time.monotonic()
        cpu_ms = (cpu_seconds(bridge.process.pid) - cpu_before) * 1000 / records
        rss = peak_rss_mib(bridge.process.pid)
        if len(outputs) < records:
            raise SystemExit(f"{name}: only {len(outputs)}/{records} outputs after 600s")
    rate = records / (finished - started)
    print(f"  {name:<42} {rate:8.1f} records/s   {cpu_ms:5.2f} CPU ms/record   peak RSS {rss:5.0f} MiB",
          flush=True)
    return rate


def run_latency(stack, rate: float, seconds: float = 10.0) -> list[float]:
    """End-to-end latencies (ms, sorted) at `rate` records/s: from producing the input to a read_committed
    reader (polling with a 10 ms fetch wait) seeing its result."""
    from confluent_kafka import Consumer

    urls = list(stack.digits.labels)
    total = int(rate * seconds)
    with bridge_on_fresh_topics(stack, []) as (topics, _bridge):
        reader = Consumer({"bootstrap.servers": stack.kafka.bootstrap_servers, "group.id": f"lat-{uuid.uuid4()}",
                           "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                           "fetch.wait.max.ms": 10, "enable.auto.commit": False})
        reader.subscribe([topics["output"]])
        latencies: list[float] = []

        def read() -> None:
            deadline = time.monotonic() + seconds + 60
            while len(latencies) < total and time.monotonic() < deadline:
                message = reader.poll(0.05)
                if message is not None and not message.error():
                    sent = float(json.loads(message.value())["id"])
                    latencies.append((time.monotonic() - sent) * 1000)

        reading = threading.Thread(target=read)
        reading.start()
        producer = Producer({"bootstrap.servers": stack.kafka.bootstrap_servers, "linger.ms": 0})
        began = time.monotonic()
        for n in range(total):
            time.sleep(max(0.0, began + n / rate - time.monotonic()))
            producer.produce(topics["input"], json.dumps({"url": urls[n % len(urls)], "id": repr(time.monotonic())}),
                             partition=n % PARTITIONS)
            producer.poll(0)
        producer.flush(30)
        reading.join()
        reader.close()
    return sorted(latencies)


def local_pipeline(stack):
    """The bridge's transform with its default settings, on this stack, in this process."""
    import threading

    from bridge.config import Settings
    from bridge.loop.run import build_pipeline
    from bridge.model.client import ModelServerClient

    settings = Settings(model_server=stack.model_address, fetch_allow=("127.0.0.1",))
    client = ModelServerClient(settings.model_server, settings.model_target())
    return build_pipeline(settings, client, client.signature(), threading.Event()), client


def run_one_at_a_time(stack, records: int) -> float:
    """The original demo's pattern, exactly once: poll one record, fetch, Predict one image, produce, commit
    (confluent-kafka's transactional loop, with the bridge's transform for the one record)."""
    from confluent_kafka import Consumer, TopicPartition

    from bridge.records import Record

    suffix = uuid.uuid4().hex[:6]
    source, sink = f"one-in-{suffix}", f"one-out-{suffix}"
    stack.kafka.create_topics({source: PARTITIONS, sink: PARTITIONS})
    urls = list(stack.digits.labels)
    filler = Producer({"bootstrap.servers": stack.kafka.bootstrap_servers})
    for n in range(records):
        filler.produce(source, urls[n % len(urls)].encode(), partition=n % PARTITIONS)
    filler.flush(30)
    producer = Producer({"bootstrap.servers": stack.kafka.bootstrap_servers, "transactional.id": f"one-{suffix}"})
    producer.init_transactions(30)
    consumer = Consumer({"bootstrap.servers": stack.kafka.bootstrap_servers, "group.id": f"one-{suffix}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.subscribe([source])
    pipeline, client = local_pipeline(stack)
    done, started = 0, time.monotonic()
    try:
        while done < records:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            [outcome] = pipeline.process([Record.from_message(message)])
            producer.begin_transaction()
            producer.produce(sink, outcome.value, partition=message.partition())
            producer.send_offsets_to_transaction(
                [TopicPartition(source, message.partition(), message.offset() + 1)],
                consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
            done += 1
        finished = time.monotonic()
    finally:
        consumer.close()
        pipeline.close()
        client.close()
    rate = records / (finished - started)
    print(f"  {'one record at a time (the demo pattern)':<42} {rate:8.1f} records/s", flush=True)
    return rate


def run_ceiling(stack, records: int) -> float:
    """The transform alone, no Kafka: the same fetch, preprocess and Predict, batched and concurrent, with the
    bridge's default settings (the ceiling the bridge is held to)."""
    from bridge.records import Record

    pipeline, client = local_pipeline(stack)
    urls = list(stack.digits.labels)
    inputs = [Record("bench", n % PARTITIONS, n, None, urls[n % len(urls)].encode()) for n in range(records)]
    try:
        started = time.monotonic()
        outcomes = pipeline.process(inputs)
        finished = time.monotonic()
    finally:
        pipeline.close()
        client.close()
    if sum(message.is_result for message in outcomes) < records:
        raise SystemExit("ceiling: some images were not classified")
    rate = records / (finished - started)
    print(f"  {'ceiling: the transform alone, no Kafka':<42} {rate:8.1f} records/s", flush=True)
    return rate


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--compare", metavar="REV", help="also run the defaults with the bridge of commit REV")
    args = parser.parse_args()
    print(f"starting the local stack; {args.records} records per variant, {PARTITIONS} partitions", flush=True)
    with local_stack(partitions=PARTITIONS, digits=200) as stack, contextlib.ExitStack() as trees:
        if args.compare:
            old = trees.enter_context(worktree(args.compare))
            rates = {"defaults": run_variant(stack, "defaults", [], args.records),
                     f"defaults at {args.compare}": run_variant(stack, f"defaults at {args.compare}", [],
                                                                args.records, root=old),
                     "defaults, again": run_variant(stack, "defaults, again", [], args.records)}
        else:
            rates = {name: run_variant(stack, name, flags, args.records) for name, flags in VARIANTS.items()}
            rates["one record at a time (the demo pattern)"] = run_one_at_a_time(stack, min(args.records, 500))
            rates["ceiling: the transform alone, no Kafka"] = run_ceiling(stack, args.records)
            half = next(iter(rates.values())) / 2
            latencies = run_latency(stack, half)
            if latencies:
                p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
                print(f"\nend-to-end latency at {half:.0f} records/s (half the defaults' rate), {len(latencies)} "
                      f"records: p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms")
    baseline = next(iter(rates.values()))
    print("\nvariant                                     records/s   ratio to defaults")
    for name, rate in rates.items():
        print(f"  {name:<42} {rate:8.1f}   {rate / baseline:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
