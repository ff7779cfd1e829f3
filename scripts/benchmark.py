"""Throughput of the bridge on the local stack (real Kafka, model server, HTTP), for several settings in one run.

For each variant: fresh topics, a running bridge, then N digit URLs produced at once; the clock runs from the
first produce to the moment a read_committed reader has seen all N outputs. Reported as records/s and as a ratio
to the first variant, since absolute numbers depend on the machine.

    .venv/bin/python -m scripts.benchmark [--records 2000] [--compare REV]

--compare REV also runs the defaults with the bridge of commit REV (checked out in a temporary git worktree),
between two runs of this tree's defaults, so a change is measured against its predecessor on the same stack.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
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


def run_variant(stack, name: str, flags: list[str], records: int, root: Path = ROOT) -> float:
    suffix = uuid.uuid4().hex[:6]
    topics = {"input": f"bench-in-{suffix}", "output": f"bench-out-{suffix}", "dead": f"bench-dead-{suffix}"}
    stack.kafka.create_topics({topic: PARTITIONS for topic in topics.values()})
    urls = list(stack.digits.labels)
    log_name = f"bench-{suffix}.log"
    with stack.bridge("--input-topic", topics["input"], "--output-topic", topics["output"],
                      "--dead-letter-topic", topics["dead"], "--group-id", f"bench-{suffix}",
                      "--metrics-interval-ms", "0", *flags, log_name=log_name, root=root,
                      allow_local_images=has_address_policy(root)) as bridge:
        bridge.wait_for_log("assigned")
        producer = Producer({"bootstrap.servers": stack.kafka.bootstrap_servers, "linger.ms": 5})
        started = time.monotonic()
        for n in range(records):
            producer.produce(topics["input"], urls[n % len(urls)].encode(), partition=n % PARTITIONS)
        producer.flush(30)
        outputs = read_topic(stack.kafka.bootstrap_servers, topics["output"], expect=records, timeout=600)
        finished = time.monotonic()
        if len(outputs) < records:
            raise SystemExit(f"{name}: only {len(outputs)}/{records} outputs after 600s")
    rate = records / (finished - started)
    print(f"  {name:<42} {rate:8.1f} records/s", flush=True)
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
    baseline = next(iter(rates.values()))
    print("\nvariant                                     records/s   ratio to defaults")
    for name, rate in rates.items():
        print(f"  {name:<42} {rate:8.1f}   {rate / baseline:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
