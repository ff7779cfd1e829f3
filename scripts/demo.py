"""The README's demo: the whole path on this machine, no Docker.

Starts a real Kafka broker, the model server (digits model on real TensorFlow) and an HTTP server of sample
digit images, runs `tfs-bridge run`, sends image URLs (and two bad records) to ImageInputTopic, and prints the
predictions and dead letters a read_committed reader sees. Everything is stopped at the end.

    scripts/demo.sh [--backend grpc|rest|embedded|oip]     (= scripts/setup.sh, then python -m scripts.demo)

--backend: the bridge calls the model server's gRPC API (the default) or its TF Serving REST API, runs the
exported model.tflite itself, or calls Seldon MLServer running that file over the Open Inference Protocol.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from scripts.local_stack import BACKENDS, TOPICS, local_stack

SAMPLES = 12
BAD_RECORDS = ["this is not a url", "http://127.0.0.1:9/missing.png"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default="grpc", help="how the bridge reaches the model")
    args = parser.parse_args(argv)
    from confluent_kafka import Producer

    from scripts.kafka_io import read_topic  # the same read_committed reader the tests use

    print("starting Kafka, the model server and an image server ...", flush=True)
    with local_stack(partitions=3, digits=SAMPLES, oip=args.backend == "oip") as stack:
        bootstrap = stack.kafka.bootstrap_servers
        model = stack.model_server_flag(args.backend)
        print(f"Kafka on {bootstrap}, the model ({args.backend}) at {model}, images on {stack.digits.server.base_url}")
        urls = list(stack.digits.labels)
        with stack.bridge("--progress-interval-ms", "0", backend=args.backend) as bridge:
            producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
            for value in urls + BAD_RECORDS:
                producer.produce(TOPICS["input"], value.encode())
            producer.flush(10)
            del producer  # closed now, not when Kafka is already gone
            print(f"sent {len(urls)} image URLs and {len(BAD_RECORDS)} bad records to {TOPICS['input']}")

            expected = len(urls) + len(BAD_RECORDS)
            deadline = time.monotonic() + 120
            outputs, dead = [], []
            while time.monotonic() < deadline and len(outputs) + len(dead) < expected:
                if bridge.process.poll() is not None:
                    print(f"the bridge exited with {bridge.process.returncode}; log: {bridge.log_path}")
                    return 1
                outputs = read_topic(bootstrap, TOPICS["output"], timeout=2)
                dead = read_topic(bootstrap, TOPICS["dead_letters"], timeout=2)

        correct = 0
        print(f"\npredictions ({TOPICS['output']}):")
        for message in outputs:
            result = json.loads(message.value())
            best = result["predictions"][0]
            truth = stack.digits.labels.get(result["url"], "?")
            correct += best["label"] == truth
            print(f"  {result['url']:<45} -> {best['label']} ({best['score']:.3f})   true digit {truth}")
        print(f"\ndead letters ({TOPICS['dead_letters']}):")
        for message in dead:
            letter = json.loads(message.value())
            print(f"  {letter['value']!s:<45} -> {letter['error']['stage']}: {letter['error']['message']}")
        print(f"\n{correct}/{len(urls)} digits classified correctly; {len(dead)} dead letters")
        return 0 if len(outputs) == len(urls) and correct >= 0.9 * len(urls) else 1


if __name__ == "__main__":
    sys.exit(main())
