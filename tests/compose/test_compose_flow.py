"""The users' flow in real containers: `docker compose up` with MODEL=digits on a Docker engine, then what the
README's walkthrough tells a user to type (kcat, `docker compose exec kafka ... kafka-console-consumer.sh`,
scripts/send-urls and scripts/read-predictions), then three bridges with one of them killed, then `docker compose down
-v`.

Registry images cannot be pulled here: standin_images.py builds local stand-ins for the Python base, Kafka and TF
Serving, and the compose file is pointed at them through its image variables; the bridge's and the export's images are
built from the repository's own Dockerfiles. compose.test.yml adds an image server on the compose network (the
walkthrough's sample URLs are on the internet), allows the bridge to fetch from it, and publishes ports on the loopback
only. Every service starts but Grafana, which cannot be built here (its front end).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.kafka_io import produce, read_topic
from serving.digits import held_out_images
from tests.compose.standin_images import build_standins
from tests.support.readme import COMPOSE_CONSOLE_CONSUMER, PRETTY_LINE, commands

pytestmark = pytest.mark.compose

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("kafka", "topics", "model-export", "tfserving", "bridge", "prometheus", "images")
IMAGES_URL = "http://images:8000"  # the test's image server, by its name on the compose network
HOST_KAFKA = "127.0.0.1:9092"
HOST_PROMETHEUS = "http://127.0.0.1:9090"
TOPICS = {"input": "ImageInputTopic", "output": "ImageOutputTopic", "dead_letters": "ImageDeadLetterTopic"}
DIGITS = 60
READ_LIMIT_S = 120
PROJECT = "tfs-bridge-compose-test"  # one name: each run replaces the images the last one built
UP_TIMEOUT_S = 1800  # a cold engine builds every image: TensorFlow twice over pip


@dataclass
class Stack:
    """A running compose project: its environment (COMPOSE_PROJECT_NAME, COMPOSE_FILE and the image variables),
    so that `docker compose` and the scripts find it as a user's shell in the repository would."""

    env: dict[str, str]
    truth: dict[str, str]  # image URL -> true digit
    sent: list[str] = field(default_factory=list)

    def run(self, command: list[str] | str, timeout: float = 300, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["bash", "-c", command] if isinstance(command, str) else command
        result = subprocess.run(args, cwd=ROOT, env=self.env, input=stdin, capture_output=True, text=True,
                                timeout=timeout, stdin=None if stdin is not None else subprocess.DEVNULL)
        assert not check or result.returncode == 0, \
            f"{command}\nexit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["docker", "compose", *args], timeout=timeout, check=check)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "--all", "--quiet", service).stdout.split()

    def inspect(self, container: str) -> dict:
        return json.loads(self.run(["docker", "inspect", container]).stdout)[0]

    def wait_healthy(self, service: str, count: int = 1, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = [self.inspect(c)["State"] for c in self.containers(service)]
            healthy = [s for s in states if s.get("Health", {}).get("Status") == "healthy"]
            if len(healthy) >= count:
                return
            if time.monotonic() > deadline:
                logs = self.compose("logs", "--tail", "40", service, check=False).stdout
                raise AssertionError(f"{service}: {len(healthy)}/{count} healthy after {timeout} s:\n{logs}")
            time.sleep(2)

    def outcomes(self, expect: int) -> tuple[list[dict], list[dict]]:
        """Every committed output and dead letter (read_committed, from the host), once `expect` are there."""
        deadline = time.monotonic() + READ_LIMIT_S
        while True:
            outputs = [json.loads(m.value()) for m in read_topic(HOST_KAFKA, TOPICS["output"], timeout=10)]
            dead = [json.loads(m.value()) for m in read_topic(HOST_KAFKA, TOPICS["dead_letters"], timeout=10)]
            if len(outputs) + len(dead) >= expect or time.monotonic() > deadline:
                return outputs, dead
            time.sleep(2)


def engine_environment() -> dict[str, str]:
    """The caller's environment without compose or bridge settings of its own, with Compose v2 on the engine."""
    result = subprocess.run([str(ROOT / "scripts" / "docker_engine.sh")], capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, f"scripts/docker_engine.sh failed:\n{result.stderr[-3000:]}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "TFS_BRIDGE_", "KAFKA_", "DOCKER_"))
           and k not in ("MODEL", "MODEL_SERVER", "PARTITIONS", "PYTHON_IMAGE", "TFSERVING_IMAGE")}
    return {**env, "DOCKER_CONFIG": result.stdout.strip()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = engine_environment()
    env.update(build_standins(env))
    digits_dir = tmp_path_factory.mktemp("digits")
    truth = {}
    for image in held_out_images(DIGITS):
        (digits_dir / image.name).parent.mkdir(parents=True, exist_ok=True)
        (digits_dir / image.name).write_bytes(image.body)
        truth[f"{IMAGES_URL}/{image.name}"] = image.label
    env.update(COMPOSE_PROJECT_NAME=PROJECT,
               COMPOSE_FILE="docker-compose.yml:tests/compose/compose.test.yml",
               MODEL="digits", PARTITIONS="3", DIGITS_DIR=str(digits_dir))
    running = Stack(env, truth)
    try:
        running.compose("up", "--detach", "--build", *SERVICES, timeout=UP_TIMEOUT_S)
        running.wait_healthy("bridge")
        yield running
    finally:
        running.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


def write_urls(path: Path, urls: list[str]) -> str:
    path.write_text("".join(url + "\n" for url in urls))
    return str(path)


def test_every_service_is_healthy_and_the_one_shot_services_succeeded(stack):
    for service in ("kafka", "tfserving", "bridge"):
        [container] = stack.containers(service)
        assert stack.inspect(container)["State"]["Health"]["Status"] == "healthy", service
    for service in ("topics", "model-export"):
        [container] = stack.containers(service)
        state = stack.inspect(container)["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), service


def test_the_bridge_runs_as_its_own_user_on_a_read_only_root_file_system(stack):
    [container] = stack.containers("bridge")
    details = stack.inspect(container)
    assert details["Config"]["User"] == "10001" and details["HostConfig"]["ReadonlyRootfs"] is True
    assert stack.compose("exec", "-T", "bridge", "id", "-u").stdout.strip() == "10001"
    write = stack.compose("exec", "-T", "bridge", "sh", "-c", "echo x > /home/bridge/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_metrics_and_health_answer_inside_the_compose_network(stack):
    fetch = ("import urllib.request, sys; "
             "print(urllib.request.urlopen('http://bridge:9464' + sys.argv[1], timeout=10).read().decode())")
    metrics = stack.compose("exec", "-T", "images", "python3", "-c", fetch, "/metrics").stdout
    assert re.search(r"^tfs_bridge_transactions_total\{outcome=\"committed\"\} \d", metrics, re.MULTILINE), metrics
    stack.compose("exec", "-T", "images", "python3", "-c", fetch, "/readyz")  # exits 1 on a 503


def test_the_walkthrough_as_typed_classifies_each_url_once(stack, tmp_path):
    urls = list(stack.truth)
    missing = f"{IMAGES_URL}/digits/missing.png"  # 404: a dead letter
    # Send: the README's kcat line with its sample file swapped for the test's digits, then each scripts/send-urls
    # line (a URL argument, or -f FILE).
    [kcat] = commands("kcat ")
    batches = [urls[:12] + [missing]]
    stack.run(kcat.replace("scripts/sample-urls.txt", write_urls(tmp_path / "urls.txt", batches[0])))
    for n, line in enumerate(commands("scripts/send-urls")):
        if " -f " in f" {line} ":
            batches.append(urls[12 + 10 * n:22 + 10 * n])
            stack.run(line.replace("scripts/sample-urls.txt", write_urls(tmp_path / f"urls-{n}.txt", batches[-1])))
        else:
            batches.append([urls[12 + 10 * n]])
            stack.run(re.sub(r"https?://\S+", batches[-1][0], line))
    sent = [url for batch in batches for url in batch]
    images = [url for url in sent if url != missing]

    # Read: the README's console consumer line, run in the kafka container, prints one JSON line per URL.
    [consumer] = commands(COMPOSE_CONSOLE_CONSUMER)
    assert "--isolation-level read_committed" in consumer
    raw = stack.run(f"{consumer} --max-messages {len(images)} --timeout-ms {READ_LIMIT_S * 1000}",
                    timeout=READ_LIMIT_S + 60).stdout
    messages = [json.loads(line) for line in raw.splitlines() if line.startswith("{")]
    assert sorted(m["url"] for m in messages) == sorted(images)
    assert all(m["model"]["name"] == "digits" for m in messages)

    # Read: scripts/read-predictions, through the same container, prints LABEL SCORE URL; mostly the right digit.
    [reader] = commands("scripts/read-predictions")
    pretty = stack.run(f"{reader} -n {len(images)} --timeout-ms {READ_LIMIT_S * 1000}",
                       timeout=READ_LIMIT_S + 60).stdout
    lines = [PRETTY_LINE.match(line) for line in pretty.splitlines() if line.strip()]
    assert all(lines) and sorted(m["url"] for m in lines) == sorted(images), pretty
    correct = sum(m["label"] == stack.truth[m["url"]] for m in lines)
    assert correct >= 0.9 * len(images), f"{correct}/{len(images)} digits right:\n{pretty}"
    dead = stack.run(f"{reader} --dead-letters -n 1 --timeout-ms {READ_LIMIT_S * 1000}",
                     timeout=READ_LIMIT_S + 60).stdout
    assert re.fullmatch(rf"! fetch  \S.*  {re.escape(missing)}\n", dead), dead

    # Exactly once, as a read_committed reader of both topics sees it.
    outputs, dead_letters = stack.outcomes(len(sent))
    assert Counter(m["url"] for m in outputs) == Counter(images)
    assert [d["value"] for d in dead_letters] == [missing]
    stack.sent += sent


def test_three_bridges_with_one_killed_while_records_flow_give_each_record_once(stack):
    stack.compose("up", "--detach", "--scale", "bridge=3", "--no-recreate", "bridge", timeout=600)
    stack.wait_healthy("bridge", count=3)
    wait_for_scraped_bridges(3)
    before = len(read_topic(HOST_KAFKA, TOPICS["input"], timeout=10))
    dead_before = len(read_topic(HOST_KAFKA, TOPICS["dead_letters"], timeout=10))
    urls = list(stack.truth)
    values = [f"{urls[n % len(urls)]}?n={n}" for n in range(600)]
    produce(HOST_KAFKA, TOPICS["input"], values)

    deadline = time.monotonic() + READ_LIMIT_S
    while len(read_topic(HOST_KAFKA, TOPICS["output"], timeout=10)) < before + 100:
        assert time.monotonic() < deadline, "the three bridges made no progress"
        time.sleep(1)
    victim = stack.containers("bridge")[0]
    stack.run(["docker", "kill", victim])
    done_at_kill = len(read_topic(HOST_KAFKA, TOPICS["output"], timeout=10)) - before
    assert done_at_kill < len(values), "the records were all done before the kill: nothing was tested"

    inputs = read_topic(HOST_KAFKA, TOPICS["input"], timeout=10)
    assert len(inputs) == before + len(values)
    outputs, dead = stack.outcomes(len(inputs))
    sources = Counter((m["source"]["partition"], m["source"]["offset"]) for m in outputs + dead)
    assert sorted(sources) == sorted((m.partition(), m.offset()) for m in inputs), "a record lost or added"
    assert max(sources.values()) == 1, f"duplicates: {[s for s, n in sources.items() if n > 1][:10]}"
    assert len(dead) == dead_before  # every digit here is served


def wait_for_scraped_bridges(count: int, timeout: float = 90) -> None:
    """Until Prometheus (monitoring/prometheus/prometheus.yml: the bridge's replicas by DNS) scrapes `count` bridges."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{HOST_PROMETHEUS}/api/v1/targets", timeout=10) as answer:
            targets = json.load(answer)["data"]["activeTargets"]
        up = [t["scrapeUrl"] for t in targets if t["labels"]["job"] == "bridge" and t["health"] == "up"]
        if len(up) >= count:
            return
        assert time.monotonic() < deadline, f"Prometheus scrapes {len(up)} of {count} bridges: {targets}"
        time.sleep(2)


def test_down_leaves_no_container_network_or_volume_behind(stack):
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "20")
    label = f"label=com.docker.compose.project={stack.env['COMPOSE_PROJECT_NAME']}"
    for kind in (["ps", "--all"], ["network", "ls"], ["volume", "ls"]):
        left = stack.run(["docker", *kind, "--quiet", "--filter", label]).stdout.split()
        assert not left, f"docker {' '.join(kind)}: {left}"
