"""Record isolation end to end: a poison corpus mixed with good URLs never stops the bridge, and every poison
record is a dead letter with the stage and type a user would expect (real broker, HTTP and model server)."""

import io
import struct
import zlib
from collections import Counter
from urllib.parse import quote

import pytest
from PIL import Image

from scripts.kafka_io import produce
from scripts.kafka_local import free_port
from tests.integration.conftest import read_outcomes, values

pytestmark = pytest.mark.integration

SECRET = "s3cret-Pa55"


def png_header_claiming(width, height):
    """A PNG signature and IHDR chunk announcing width x height pixels, and no image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def truncated_png(held_out):
    out = io.BytesIO()
    Image.fromarray(held_out[0].pixels).resize((64, 64)).save(out, format="PNG")
    return out.getvalue()[:-40]


def poison_corpus(image_server, held_out):
    """value -> (stage, type) of its dead letter."""
    url = image_server.url
    image_server.add("fake.png", b"this is not a png at all", "image/png")
    image_server.add("empty.png", b"", "image/png")
    image_server.add("truncated.png", truncated_png(held_out), "image/png")
    image_server.add("bomb-header.png", png_header_claiming(40000, 40000), "image/png")
    closed = f"http://127.0.0.1:{free_port()}/digit.png"
    good_image = url(held_out[1].name)
    parse, fetch = ("parse", "InvalidRecord"), ("fetch", "FetchError")
    return {
        b"http://[::1/cat.png": parse,  # urlsplit raises ValueError
        b'{"a": ' + b"[" * 200_000: parse,  # RecursionError in the JSON parser
        b"": parse,
        b"\xff\xfe\x00\x81 binary": parse,
        b"just some words": parse,
        b'{"id": "no url here"}': parse,
        b'{"url": 5}': parse,
        b"[1, 2, 3]": parse,
        b'{"url": "' + good_image.encode() + b'", "id": {"nested": true}}': parse,
        ('{"url": "' + good_image + '", "id": "' + "\u00e9" * 400_000 + '"}').encode(): parse,  # id too long
        b"http://127.0.0.1:port/x.png": parse,
        b"http://127.0.0.1/a b.png": parse,
        b"http://127.0.0.1/x\x00.png": parse,
        b"/just/a/path.png": parse,
        b"ftp://127.0.0.1/cat.jpg": fetch,
        closed.encode(): fetch,
        url("status/404").encode(): fetch,
        url("status/500").encode(): fetch,
        url("notes.txt").encode(): fetch,
        url("fake.png").encode(): fetch,
        url("empty.png").encode(): fetch,
        url("loop/1").encode(): fetch,
        url("big/20000000").encode(): fetch,
        url("slow/8/" + held_out[2].name).encode(): fetch,
        url("redirect-to?url=" + quote("http://[bad", safe="")).encode(): fetch,
        url("redirect-to?url=" + quote("ftp://127.0.0.1/x", safe="")).encode(): fetch,
        url("status/403").replace("http://", f"http://alice:{SECRET}@").encode() + f"?sig={SECRET}".encode(): fetch,
        url("truncated.png").encode(): ("preprocess", "ImageError"),
        url("bomb-header.png").encode(): ("preprocess", "ImageError"),
        # Classified, but its result (the URL's 400,000-character fragment, JSON-escaped) is 2.4 MB.
        ('{"url": "' + good_image + "#" + "\u00e9" * 400_000 + '"}').encode(): ("output", "OutputError"),
    }


def test_a_poison_corpus_mixed_with_good_urls_on_3_partitions(kafka, topics, image_server, held_out, start_bridge):
    poison = poison_corpus(image_server, held_out)
    assert len(poison) >= 25
    good = {image_server.url(image.name): image.label for image in held_out[:30]}
    per_partition = {0: [], 1: [], 2: []}
    for n, value in enumerate(list(poison) + [u.encode() for u in good]):
        per_partition[n % 3].append(value)
    for partition in per_partition:  # poison first, good URLs after: nothing may block them
        per_partition[partition].sort(key=lambda v: v.decode("utf-8", "replace") in good)
        produce(kafka.bootstrap_servers, topics.input, per_partition[partition], partition=partition)
    bridge = start_bridge("--fetch-deadline-ms", "3000", "--batch-linger-ms", "50")

    total = len(poison) + len(good)
    outputs, dead = read_outcomes(kafka, topics, expect=total, timeout=180)

    assert bridge.process.poll() is None, bridge.log()[-3000:]  # never exited
    where = {(p, i): v for p, vs in per_partition.items() for i, v in enumerate(vs)}
    seen = Counter((v["source"]["partition"], v["source"]["offset"]) for v in values(outputs) + values(dead))
    assert set(seen) == set(where) and max(seen.values()) == 1  # offsets 0..n-1 of each partition, once each
    letters = {where[(d["source"]["partition"], d["source"]["offset"])]: d for d in values(dead)}
    got = {value: (letter["error"]["stage"], letter["error"]["type"]) for value, letter in letters.items()}
    assert got == poison
    results = values(outputs)
    assert sorted(r["url"] for r in results) == sorted(good)
    assert sum(r["predictions"][0]["label"] == good[r["url"]] for r in results) >= 27
    # The credentials and the signature in the URL appear in no log line, dead-letter message or header.
    for message in dead:
        for name, header in message.headers() or []:
            assert SECRET not in header.decode("utf-8", "replace")
    assert all(SECRET not in letter["error"]["message"] for letter in letters.values())
    assert SECRET not in bridge.log()
    assert bridge.terminate() == 0
