"""The users' flow of the README, as typed: URLs sent with kcat and scripts/send-urls come out as predictions read
with kafka-console-consumer and scripts/read-predictions.

The command lines are taken from the README's walkthrough, not copied here. Only what docker compose provides is
swapped for the local stack: the broker address and topic names (for this test's broker and topics), the sample URLs
(for the local image server's digits), and `docker compose exec kafka .../kafka-console-consumer.sh` (for the same
Kafka tool run from the Maven jars). The scripts get the test's broker and topics through their -b and -t options.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.readme import (COMPOSE_CONSOLE_CONSUMER, PRETTY_LINE, code_blocks, commands,
                                  walkthrough)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CONSOLE_CONSUMER = f"{shlex.quote(sys.executable)} -m scripts.kafka_local tool console-consumer"
READ_LIMIT_S = 90


def localized(command: str, kafka, topics, urls_file: Path | None = None, url: str | None = None) -> str:
    command = (command.replace("localhost:9092", kafka.bootstrap_servers)
               .replace("ImageInputTopic", topics.input)
               .replace("ImageOutputTopic", topics.output)
               .replace("ImageDeadLetterTopic", topics.dead_letters)
               .replace(COMPOSE_CONSOLE_CONSUMER, LOCAL_CONSOLE_CONSUMER))
    if urls_file is not None:
        command = command.replace("scripts/sample-urls.txt", str(urls_file))
    if url is not None:
        command = re.sub(r"https?://\S+", url, command)
    return command


def sh(command: str, timeout: float = READ_LIMIT_S + 30, stdin: str | None = None) -> str:
    """Run a command line as a user's shell would, from the repository root; returns stdout."""
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, input=stdin, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "KAFKA_CONSOLE_CONSUMER": LOCAL_CONSOLE_CONSUMER})
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def write_urls(path: Path, urls: list[str]) -> Path:
    path.write_text("".join(url + "\n" for url in urls))
    return path


def test_urls_sent_with_kcat_and_send_urls_come_out_as_predictions_read_with_the_console_consumer(
        kafka, topics, image_server, held_out, start_bridge, tmp_path):
    # Send: the README's kcat line with the sample file, then each scripts/send-urls line (URL argument or -f FILE).
    [kcat] = commands("kcat ")
    senders = commands("scripts/send-urls")
    sizes = [12] + [10 if "-f" in shlex.split(line) else 1 for line in senders]
    truth = {image_server.url(image.name): image.label for image in held_out[:sum(sizes)]}
    urls = list(truth)
    batches = [urls[sum(sizes[:n]):sum(sizes[:n + 1])] for n in range(len(sizes))]
    missing = image_server.url("digits/missing.png")  # 404: a dead letter

    sh(localized(kcat, kafka, topics, urls_file=write_urls(tmp_path / "kcat-urls.txt", batches[0])))
    for n, (line, batch) in enumerate(zip(senders, batches[1:])):
        if len(batch) > 1:
            command = localized(line, kafka, topics, urls_file=write_urls(tmp_path / f"urls-{n}.txt", batch))
        else:
            command = localized(line, kafka, topics, url=batch[0])
        sh(f"{command} -b {kafka.bootstrap_servers} -t {topics.input}")
    sh(f"scripts/send-urls -b {kafka.bootstrap_servers} -t {topics.input}", stdin=f"# comment\n\n{missing}\n")
    start_bridge()

    # Read: the README's kafka-console-consumer line prints one JSON line per URL, each URL once.
    [consumer] = commands(COMPOSE_CONSOLE_CONSUMER)
    assert "--isolation-level read_committed" in consumer and "--from-beginning" in consumer
    raw = sh(f"{localized(consumer, kafka, topics)} --max-messages {len(urls)} --timeout-ms {READ_LIMIT_S * 1000}")
    messages = [json.loads(line) for line in raw.splitlines() if line.startswith("{")]
    assert sorted(m["url"] for m in messages) == sorted(urls)
    assert all(m["model"]["name"] == "digits" and len(m["predictions"]) == 5 for m in messages)

    # Read: scripts/read-predictions prints "LABEL SCORE URL", one line per URL, matching the JSON.
    [reader] = commands("scripts/read-predictions")
    pretty = sh(f"{reader} -b {kafka.bootstrap_servers} -t {topics.output} -n {len(urls)} "
                f"--timeout-ms {READ_LIMIT_S * 1000}")
    lines = [PRETTY_LINE.match(line) for line in pretty.splitlines() if line.strip()]
    assert all(lines), pretty
    assert sorted(m["url"] for m in lines) == sorted(urls)
    best = {m["url"]: (m["predictions"][0]["label"], f"{m['predictions'][0]['score']:.3f}") for m in messages}
    assert all(best[m["url"]] == (m["label"], m["score"]) for m in lines)
    correct = sum(m["label"] == truth[m["url"]] for m in lines)
    assert correct >= 0.9 * len(urls), f"{correct}/{len(urls)} digits right:\n{pretty}"

    # The URL that could not be fetched is a dead letter, shown by read-predictions --dead-letters.
    dead = sh(f"{reader} --dead-letters -b {kafka.bootstrap_servers} -t {topics.dead_letters} -n 1 "
              f"--timeout-ms {READ_LIMIT_S * 1000}")
    assert re.fullmatch(rf"! fetch  \S.*  {re.escape(missing)}\n", dead), dead


def test_the_readme_output_example_has_the_shape_read_predictions_prints():
    examples = [block for block in code_blocks(walkthrough(), "text") if "0." in block and "{" not in block]
    assert examples, "the walkthrough shows no scripts/read-predictions output"
    for line in examples[0].splitlines():
        assert line == "..." or PRETTY_LINE.match(line), line
