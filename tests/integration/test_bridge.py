"""The bridge end to end: a real broker, real HTTP, the model server on real TensorFlow, `tfs-bridge run`."""

import time
from collections import Counter, defaultdict

import pytest

from tests.integration.conftest import read_outcomes, values
from scripts.kafka_io import produce, read_topic
from scripts.kafka_local import free_port

pytestmark = pytest.mark.integration


def send_digits(kafka, topics, image_server, held_out, count, start=0):
    """`count` JSON requests with ids start.. spread over the input partitions; returns id -> true label."""
    truth = {}
    per_partition = defaultdict(list)
    for n in range(start, start + count):
        image = held_out[n % len(held_out)]
        truth[str(n)] = image.label
        per_partition[n % 3].append(f'{{"url": "{image_server.url(image.name)}", "id": "{n}"}}')
    for partition, lines in per_partition.items():
        produce(kafka.bootstrap_servers, topics.input, lines, partition=partition)
    return truth


def assert_exactly_once(outputs, dead, truth):
    ids = Counter([o["id"] for o in values(outputs)] + [d["source"]["offset"] for d in values(dead)])
    doubled = [i for i, n in ids.items() if n > 1]
    assert not doubled, f"records seen more than once: {doubled[:10]}"
    assert not dead, values(dead)[:3]
    assert set(ids) == set(truth), f"missing: {sorted(set(truth) - set(ids))[:10]}"


def accuracy(outputs, truth):
    results = values(outputs)
    return sum(r["predictions"][0]["label"] == truth[r["id"]] for r in results) / len(results)


def test_500_urls_are_each_classified_once_correctly_and_in_partition_order(
        kafka, topics, image_server, held_out, start_bridge):
    truth = send_digits(kafka, topics, image_server, held_out, 500)
    bridge = start_bridge()

    outputs, dead = read_outcomes(kafka, topics, expect=500)

    assert_exactly_once(outputs, dead, truth)
    assert accuracy(outputs, truth) >= 0.90
    first = values(outputs)[0]
    assert first["model"] == {"name": "digits", "version": 1, "signature": "serving_default"}
    assert len(first["predictions"]) == 5 and first["latency_ms"] >= 0
    # Each output partition holds the outputs of one input partition, in input offset order.
    by_partition = defaultdict(list)
    for message in outputs:
        source = values([message])[0]["source"]
        by_partition[message.partition()].append((source["partition"], source["offset"]))
    for partition, sources in by_partition.items():
        assert {p for p, _ in sources} == {partition}
        assert [o for _, o in sources] == sorted(o for _, o in sources)
    assert bridge.terminate() == 0


def test_bad_records_become_dead_letters_with_their_stage_and_good_ones_are_classified(
        kafka, topics, image_server, held_out, start_bridge):
    good = {image_server.url(image.name): image.label for image in held_out[:20]}
    bad = {
        image_server.url("status/404"): "fetch",
        image_server.url("status/500"): "fetch",
        image_server.url("notes.txt"): "fetch",
        f"http://127.0.0.1:{free_port()}/digit.png": "fetch",
        "ftp://example.com/cat.jpg": "fetch",
        "just some words": "parse",
        '{"id": "no url here"}': "parse",
    }
    lines = list(good) + list(bad)
    produce(kafka.bootstrap_servers, topics.input, lines, key=b"same-key")
    start_bridge("--fetch-deadline-ms", "5000")

    outputs, dead = read_outcomes(kafka, topics, expect=len(lines))

    results = values(outputs)
    assert sorted(r["url"] for r in results) == sorted(good)
    assert sum(r["predictions"][0]["label"] == good[r["url"]] for r in results) >= 18
    letters = values(dead)
    assert sorted((d["value"], d["error"]["stage"]) for d in letters) == sorted(bad.items())
    assert all(m.key() == b"same-key" for m in outputs + dead)
    headers = dict(dead[0].headers())
    assert headers["tfs-bridge.error.stage"] in (b"fetch", b"parse")
    assert all(d["error"]["message"] for d in letters)
    # Offsets 0..n-1 each appear exactly once across both topics.
    offsets = sorted(r["source"]["offset"] for r in results + letters)
    assert offsets == list(range(len(lines)))


def test_an_image_the_model_rejects_is_isolated_by_bisection(kafka, topics, image_server, held_out, start_bridge):
    # The "bytes" signature decodes inside TensorFlow. A JPEG whose scan is cut short has headers Pillow accepts,
    # but TensorFlow cannot decode it: INVALID_ARGUMENT for that image only.
    from io import BytesIO

    from PIL import Image

    jpeg = BytesIO()
    Image.fromarray(held_out[0].pixels).resize((32, 32)).save(jpeg, format="JPEG")
    data = jpeg.getvalue()
    cut_url = image_server.add("cut.jpg", data[:data.index(b"\xff\xda") + 20], "image/jpeg")
    good = [image_server.url(image.name) for image in held_out[:7]]
    lines = good[:3] + [cut_url] + good[3:]
    produce(kafka.bootstrap_servers, topics.input, lines, partition=0)
    start_bridge("--signature-name", "bytes", "--batch-linger-ms", "500")

    outputs, dead = read_outcomes(kafka, topics, expect=len(lines))

    assert sorted(r["url"] for r in values(outputs)) == sorted(good)
    assert [(d["value"], d["error"]["stage"]) for d in values(dead)] == [(cut_url, "predict")]
    assert "INVALID_ARGUMENT" in values(dead)[0]["error"]["message"]


def count_outputs(kafka, topics):
    return len(read_topic(kafka.bootstrap_servers, topics.output, timeout=1))


def wait_for_outputs(kafka, topics, at_least, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read_topic(kafka.bootstrap_servers, topics.output, timeout=1)) >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {at_least} outputs after {timeout}s")


# Short budgets so an outage longer than max.poll.interval.ms fits in a test: 12 s > 3 s + 2 s + 5 s.
FAST_FAILURE = ("--retry-budget-ms", "3000", "--grpc-timeout-ms", "2000", "--fetch-deadline-ms", "5000",
                "--max-poll-interval-ms", "12000", "--resume-check-interval-ms", "500")


def test_a_model_server_outage_pauses_input_without_loss_duplicates_or_a_rebalance(
        kafka, topics, image_server, held_out, start_bridge, models_dir):
    from serving.process import ModelServerProcess

    server = ModelServerProcess(models_dir, free_port())
    server.start()
    try:
        truth = send_digits(kafka, topics, image_server, held_out, 300)
        bridge = start_bridge(*FAST_FAILURE, "--max-batch-size", "8", "--max-in-flight", "1",
                              model_address=server.address)
        wait_for_outputs(kafka, topics, 20)
        server.stop()
        time.sleep(15)  # longer than max.poll.interval.ms: only polling while paused keeps the group membership
        more = send_digits(kafka, topics, image_server, held_out, 30, start=300)
        server.start()

        outputs, dead = read_outcomes(kafka, topics, expect=330)
        assert_exactly_once(outputs, dead, {**truth, **more})
        log = bridge.log()
        assert "pausing input" in log and "resuming input" in log
        assert "revoked" not in log and "max.poll.interval" not in log
        assert bridge.terminate() == 0
    finally:
        server.stop()


def test_a_killed_bridge_restarted_leaves_each_input_exactly_once(
        kafka, topics, image_server, held_out, start_bridge):
    truth = send_digits(kafka, topics, image_server, held_out, 400)
    first = start_bridge("--transactional-id", f"{topics.group}-instance", "--max-batch-size", "8")
    wait_for_outputs(kafka, topics, 40)
    first.kill()  # SIGKILL: no chance to commit or abort

    second = start_bridge("--transactional-id", f"{topics.group}-instance")
    outputs, dead = read_outcomes(kafka, topics, expect=400)

    assert_exactly_once(outputs, dead, truth)
    assert second.terminate() == 0


def test_a_second_instance_joining_mid_stream_rebalances_without_loss_or_duplicates(
        kafka, topics, image_server, held_out, start_bridge):
    # Enough records that the stream still flows when the second instance has joined (the loop is fast: on an
    # idle machine it finished 3,000 before the second instance's assignment).
    truth = send_digits(kafka, topics, image_server, held_out, 6000)
    # Two instances on one host: each needs its own name (its transactional.id and group.instance.id).
    first = start_bridge("--max-batch-size", "8", "--max-in-flight", "1", "--instance-name", "first")
    wait_for_outputs(kafka, topics, 40)
    second = start_bridge("--max-batch-size", "8", "--max-in-flight", "1", "--instance-name", "second")
    second.wait_for_log(f"assigned {topics.input}[")
    assert count_outputs(kafka, topics) < 6000  # it joined mid-stream

    outputs, dead = read_outcomes(kafka, topics, expect=6000)

    assert_exactly_once(outputs, dead, truth)
    assert "revoked" in first.log()
    assert f"{topics.input}[" in second.log().split("assigned", 1)[-1]  # the newcomer got partitions
    assert first.terminate() == 0 and second.terminate() == 0


def test_sigterm_mid_stream_exits_0_with_committed_work_intact(kafka, topics, image_server, held_out, start_bridge):
    # Enough records that the stream is still flowing when SIGTERM comes (the loop is fast).
    truth = send_digits(kafka, topics, image_server, held_out, 2000)
    bridge = start_bridge("--max-batch-size", "8", "--max-in-flight", "1")
    wait_for_outputs(kafka, topics, 30)
    began = time.monotonic()
    assert bridge.terminate(timeout=30) == 0
    assert time.monotonic() - began < 30
    assert "stopped cleanly" in bridge.log()

    # What was committed is complete: the outputs are exactly the inputs below the group's committed offsets.
    from scripts.kafka_io import group_offset

    done = read_topic(kafka.bootstrap_servers, topics.output)
    committed = {p: max(group_offset(kafka.bootstrap_servers, topics.group, topics.input, p), 0) for p in range(3)}
    sources = Counter((v["source"]["partition"], v["source"]["offset"]) for v in values(done))
    assert set(sources) == {(p, o) for p in range(3) for o in range(committed[p])}
    assert max(sources.values()) == 1
    assert 0 < len(done) < 2000

    start_bridge()  # a new instance finishes the rest, exactly once
    outputs, dead = read_outcomes(kafka, topics, expect=2000)
    assert_exactly_once(outputs, dead, truth)
