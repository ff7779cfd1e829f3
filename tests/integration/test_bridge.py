"""The bridge end to end: a real broker, real HTTP, the model server on real TensorFlow, `tfs-bridge run`."""

from collections import Counter, defaultdict

import pytest

from tests.integration.conftest import read_outcomes, values
from tests.support.kafka_io import produce, read_topic
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
    # The "bytes" signature decodes inside TensorFlow, which cannot read WebP: INVALID_ARGUMENT for that image only.
    from io import BytesIO

    from PIL import Image

    webp = BytesIO()
    Image.fromarray(held_out[0].pixels).save(webp, format="WEBP")
    webp_url = image_server.add("digit.webp", webp.getvalue(), "image/webp")
    good = [image_server.url(image.name) for image in held_out[:7]]
    lines = good[:3] + [webp_url] + good[3:]
    produce(kafka.bootstrap_servers, topics.input, lines, partition=0)
    start_bridge("--signature-name", "bytes", "--batch-linger-ms", "500")

    outputs, dead = read_outcomes(kafka, topics, expect=len(lines))

    assert sorted(r["url"] for r in values(outputs)) == sorted(good)
    assert [(d["value"], d["error"]["stage"]) for d in values(dead)] == [(webp_url, "predict")]
    assert "INVALID_ARGUMENT" in values(dead)[0]["error"]["message"]
