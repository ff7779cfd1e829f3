"""`tfs-bridge redrive` on the real broker: dead letters back to the input topic, exactly once, chosen by filters and
bounded by the redrive limit; with a real bridge classifying what comes back."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bridge.errors import FetchError, InvalidRecord
from bridge.records import REDRIVE_COUNT_HEADER, DeadLetter, Record, encode_dead_letter
from scripts.kafka_io import read_topic
from scripts.kafka_local import free_port
from scripts.orphan_guard import guarded
from tests.integration.conftest import read_outcomes, values

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def redrive_command(kafka, topics, *flags):
    return guarded([sys.executable, "-m", "bridge", "redrive", "--bootstrap-servers", kafka.bootstrap_servers,
                    *topics.flags(), "--progress-interval-ms", "1000", *flags])


def clean_env():
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TFS_BRIDGE_")}, "PYTHONUNBUFFERED": "1"}


def redrive(kafka, topics, *flags, expect_exit=0, timeout=120):
    """Run `tfs-bridge redrive` to its end; its summary line (the last line of its stdout)."""
    done = subprocess.run(redrive_command(kafka, topics, *flags), cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == expect_exit, done.stdout + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return lines[0]


def send(kafka, topic, records):
    """(value, key, headers) records, produced as a user's producer would."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True})
    for value, key, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers)
    assert producer.flush(30) == 0


def write_dead_letters(kafka, topic, letters, transactional_id=None, abort=False):
    """Dead letters in the bridge's own format (bridge.records), keyed by their original's key; in one transaction
    if transactional_id is given (aborted if `abort`). letters: (DeadLetter, timestamp ms or None)."""
    config = {"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True, "linger.ms": 5}
    if transactional_id:
        config["transactional.id"] = transactional_id
    producer = Producer(config)
    if transactional_id:
        producer.init_transactions(30)
        producer.begin_transaction()
    for letter, timestamp in letters:
        message = encode_dead_letter(letter)
        producer.produce(topic, value=message.value, key=letter.record.key, headers=message.headers,
                         **({"timestamp": timestamp} if timestamp else {}))
    if transactional_id:
        (producer.abort_transaction if abort else producer.commit_transaction)(30)
    assert producer.flush(30) == 0


def fetch_letter(input_topic, n, url, headers=(), key=None, partition=0, stage_error=None):
    """The dead letter the bridge writes for a JSON request {"url", "id": n} that failed."""
    value = json.dumps({"url": url, "id": n}).encode()
    record = Record(input_topic, partition, 0, key, value, headers=tuple(headers))
    return DeadLetter.from_error(record, stage_error or FetchError(f"cannot connect to host for {url}"))


def wait_for(what, condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not after {timeout} s")


@contextmanager
def images_served_on(port, images):
    """The images (name -> PNG bytes) served on 127.0.0.1:port until the block ends: the image server back up."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = images.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def group_offsets(kafka, group, topic, partitions=1):
    """The group's committed offsets (negative: none), asked by a consumer that does not join the group (not
    scripts.kafka_io.group_offset: the admin API crashes on a group the broker does not know yet, librdkafka#5040)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                         "isolation.level": "read_uncommitted", "enable.auto.commit": False})
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                return [tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                                               10)]
            except KafkaException:  # NOT_COORDINATOR while the broker's group coordinator loads
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def headers_of(message):
    return dict(message.headers() or [])


def test_dead_letters_from_an_image_server_that_was_down_are_classified_once_it_is_back(
        kafka, topics, image_server, held_out, start_bridge):
    began = time.monotonic()
    port = free_port()  # nothing listens there: the image server is down
    down = {f"down-{n}": held_out[n] for n in range(12)}
    up = {f"up-{n}": held_out[20 + n] for n in range(6)}
    records = [(json.dumps({"url": f"http://127.0.0.1:{port}/{image.name}", "id": i}), f"key-{i}".encode(),
                [("trace", f"t-{i}".encode())]) for i, image in down.items()]
    records += [(json.dumps({"url": image_server.url(image.name), "id": i}), None, None) for i, image in up.items()]
    send(kafka, topics.input, records)
    bridge = start_bridge("--fetch-connect-timeout-ms", "1000")

    outputs, dead = read_outcomes(kafka, topics, expect=18)
    assert sorted(o["id"] for o in values(outputs)) == sorted(up)
    letters = values(dead)
    assert len(letters) == 12 and {d["error"]["stage"] for d in letters} == {"fetch"}
    # The dead letter keeps what a redrive needs: the original key (its own key) and headers.
    for message, letter in zip(dead, letters):
        i = json.loads(letter["value"])["id"]
        assert message.key() == f"key-{i}".encode() and letter["headers"] == [["trace", f"t-{i}"]]

    with images_served_on(port, {image.name: image.body for image in down.values()}):
        summary = redrive(kafka, topics)
        assert summary == (f"redrive {topics.dead_letters} -> {topics.input}: read 12, sent 12, skipped by filter 0, "
                           "skipped over the limit 0, unreadable 0; reached the end")
        outputs, dead = read_outcomes(kafka, topics, expect=18 + 12)

    results = values(outputs)
    ids = Counter(r["id"] for r in results)
    assert set(ids) == set(up) | set(down) and max(ids.values()) == 1, ids
    truth = {i: image.label for i, image in {**down, **up}.items()}
    assert sum(r["predictions"][0]["label"] == truth[r["id"]] for r in results) >= 16
    assert len(dead) == 12  # no new dead letters
    # The redriven records are the originals: value, key and headers, with the redrive count.
    redriven = [m for m in read_topic(kafka.bootstrap_servers, topics.input) if REDRIVE_COUNT_HEADER in headers_of(m)]
    assert len(redriven) == 12
    for message in redriven:
        i = json.loads(message.value())["id"]
        assert message.key() == f"key-{i}".encode()
        assert message.headers() == [("trace", f"t-{i}".encode()), (REDRIVE_COUNT_HEADER, b"1")]
    # Run again: the group's offsets are at the end, nothing is sent twice.
    assert "read 0, sent 0," in redrive(kafka, topics)
    assert bridge.terminate() == 0
    print(f"\nimage server back: {time.monotonic() - began:.1f} s")


def test_a_record_that_never_works_stops_circling_at_the_redrive_limit(kafka, topics, image_server, start_bridge):
    send(kafka, topics.input, [(json.dumps({"url": image_server.url("status/404"), "id": "never"}), b"k",
                                [("trace", b"x")])])
    bridge = start_bridge()

    def dead_letters(n, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = read_topic(kafka.bootstrap_servers, topics.dead_letters, timeout=5)
            if len(found) >= n:
                return values(found)
            time.sleep(0.5)
        raise AssertionError(f"fewer than {n} dead letters after {timeout} s")

    assert dead_letters(1)[0]["headers"] == [["trace", "x"]]
    for count in (1, 2, 3):
        assert "read 1, sent 1," in redrive(kafka, topics)
        # The bridge dead-letters it again, and keeps the redrive count for the next redrive.
        newest = dead_letters(count + 1)[-1]
        assert newest["headers"] == [["trace", "x"], [REDRIVE_COUNT_HEADER, str(count)]]
    summary = redrive(kafka, topics)
    assert "read 1, sent 0, skipped by filter 0, skipped over the limit 1, unreadable 0" in summary
    assert len(dead_letters(4)) == 4
    assert bridge.terminate() == 0


def test_a_redrive_killed_halfway_and_run_again_sends_each_dead_letter_once(kafka, topics, unique, tmp_path):
    began = time.monotonic()
    dead = f"dead3-{unique}"
    kafka.create_topics({dead: 3})
    total = 2000
    letters = [fetch_letter(topics.input, str(n), f"http://127.0.0.1:9/{n}.png", [("n", str(n).encode())],
                            key=f"k{n}".encode(), partition=n % 3) for n in range(total)]
    write_dead_letters(kafka, dead, [(letter, None) for letter in letters])
    flags = ("--dead-letter-topic", dead)
    slow = (*flags, "--transaction-records", "5")  # about 100 dead letters a second: slow enough to stop halfway
    group = f"{topics.group}-redrive"

    def committed():
        """Dead letters the group has committed: each one read was sent (every one of them is chosen)."""
        return sum(max(offset, 0) for offset in group_offsets(kafka, group, dead, partitions=3))

    def start(name):
        with open(tmp_path / f"{name}.log", "wb") as log:
            return subprocess.Popen(redrive_command(kafka, topics, *slow), cwd=ROOT, env=clean_env(),
                                    stdout=subprocess.PIPE, stderr=log, text=True)

    first = start("first")
    try:
        wait_for("the first redrive's commits", lambda: committed() >= 150)
    finally:
        first.kill()  # SIGKILL: its open transaction is neither committed nor aborted
        first.communicate()
    sent_first = committed()
    assert 150 <= sent_first < total, "the first redrive was not killed halfway"
    left = total - sent_first
    # A dry run from where the group stands (its open transaction left behind) counts exactly what is left.
    assert f"read {left}, would send {left}," in redrive(kafka, topics, *flags, "--dry-run")

    second = start("second")  # its init aborts the killed one's transaction
    try:
        wait_for("the second redrive's commits", lambda: committed() >= sent_first + 150)
    finally:
        second.send_signal(signal.SIGTERM)  # stops after its current transaction
        out, _ = second.communicate(timeout=60)
    assert second.returncode == 130, (tmp_path / "second.log").read_text()[-3000:]
    sent_second = int(re.search(r"read (\d+), sent \1,", out).group(1))
    assert out.rstrip().endswith(f"interrupted with {left - sent_second} left: run it again to go on")
    assert committed() == sent_first + sent_second  # what it says it sent, and committed, is what it sent

    left -= sent_second
    summary = redrive(kafka, topics, *flags)
    assert f"read {left}, sent {left}, skipped by filter 0" in summary and summary.endswith("reached the end")

    inputs = read_topic(kafka.bootstrap_servers, topics.input)
    # What the killed redrive had produced in its open transaction is in the log, aborted, unseen (0 if it died
    # between two transactions).
    orphans = len(read_topic(kafka.bootstrap_servers, topics.input, isolation="read_uncommitted")) - len(inputs)
    ids = Counter(json.loads(m.value())["id"] for m in inputs)
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:10]
    assert set(ids) == {str(n) for n in range(total)}
    for message in inputs[:50]:
        n = json.loads(message.value())["id"]
        assert message.key() == f"k{n}".encode() and message.partition() == int(n) % 3
        assert message.headers() == [("n", n.encode()), (REDRIVE_COUNT_HEADER, b"1")]
    print(f"\nkilled after {sent_first} of {total} ({orphans} records of its open transaction aborted), then "
          f"SIGTERM after {sent_second} more; whole test {time.monotonic() - began:.1f} s")


def test_filters_the_redrive_limit_and_a_dry_run(kafka, topics):
    now = int(time.time() * 1000)
    hour, day = 3600_000, 86400_000
    url = "http://127.0.0.1:9/x.png"
    fetch = [(fetch_letter(topics.input, f"f-{n}", url), now) for n in range(5)]
    old = [(fetch_letter(topics.input, f"old-{n}", url), now - 2 * day) for n in range(2)]
    parse = [(fetch_letter(topics.input, f"p-{n}", url, stage_error=InvalidRecord("not a URL")), now)
             for n in range(3)]
    at_limit = [(fetch_letter(topics.input, "limit", url, [(REDRIVE_COUNT_HEADER, b"3")]), now)]
    below_limit = [(fetch_letter(topics.input, "two", url, [(REDRIVE_COUNT_HEADER, b"2")]), now)]
    huge = Record(topics.input, 0, 0, None, b"x" * 70_000)  # over 64 KiB: its dead letter keeps only a part
    truncated = [(DeadLetter.from_error(huge, FetchError("too big")), now)]
    write_dead_letters(kafka, topics.dead_letters, fetch + old + parse + at_limit + below_limit + truncated,
                       transactional_id=f"writer-{topics.group}")
    send(kafka, topics.dead_letters, [(b"not a dead letter", None, None)])
    aborted = [(fetch_letter(topics.input, f"aborted-{n}", url), now) for n in range(3)]
    write_dead_letters(kafka, topics.dead_letters, aborted, transactional_id=f"writer-{topics.group}", abort=True)
    since = datetime.fromtimestamp((now - hour) / 1000, timezone.utc).isoformat()
    chosen = ("--stage", "fetch,predict", "--since", since)
    counts = ("read 14, {} 6, skipped by filter 5, skipped over the limit 1, unreadable 2 (not JSON 1, "
              "value truncated 1); reached the end")
    group = f"{topics.group}-redrive"

    dry = redrive(kafka, topics, *chosen, "--dry-run")
    assert dry == f"dry run: redrive {topics.dead_letters} -> {topics.input}: " + counts.format("would send")
    assert read_topic(kafka.bootstrap_servers, topics.input, timeout=5) == []
    assert group_offsets(kafka, group, topics.dead_letters) == [-1001]  # the dry run moved nothing

    summary = redrive(kafka, topics, *chosen)
    assert summary == f"redrive {topics.dead_letters} -> {topics.input}: " + counts.format("sent")
    sent = {json.loads(m.value())["id"]: headers_of(m)[REDRIVE_COUNT_HEADER]
            for m in read_topic(kafka.bootstrap_servers, topics.input)}
    assert sent == {**{f"f-{n}": b"1" for n in range(5)}, "two": b"3"}

    # The redrive group has read them all, sent or skipped: another run in it, dry or not, finds nothing new.
    assert "read 0, would send 0," in redrive(kafka, topics, "--dry-run")
    assert "read 0, sent 0," in redrive(kafka, topics)
    # Another group starts from the beginning: without filters it would send the ones skipped by filter too.
    other = redrive(kafka, topics, "--dry-run", "--redrive-group-id", f"{group}-2")
    assert "read 14, would send 11, skipped by filter 0, skipped over the limit 1, unreadable 2" in other
