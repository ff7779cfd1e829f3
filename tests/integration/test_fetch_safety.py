"""The fetcher against a hostile image server, through the running bridge: the address policy, hard deadlines,
pixel and byte caps, and no leaked credentials. All traffic goes to 127.0.0.1.
"""

import io
import re
import struct
import zlib
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from scripts.image_server import ImageServer
from scripts.kafka_io import produce
from tests.integration.conftest import read_outcomes, values

pytestmark = pytest.mark.integration

DEADLINE_MS = 3000
SECRET = "hunter2-Zq9"


def port_of(server: ImageServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def loopback_spellings(port: int, path: str) -> list[str]:
    return [f"http://{host}:{port}/{path}" for host in
            ("127.0.0.1", "localhost", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "[::1]",
             "[::ffff:127.0.0.1]")]


@pytest.fixture
def bridge_on_fresh_topics(kafka, model_server, unique, tmp_path):
    """classify(values, allow) -> (outputs, dead letters) of a bridge run with --fetch-allow `allow`."""
    from scripts.bridge_process import BridgeProcess
    from tests.integration.conftest import BridgeTopics

    runs = []

    def classify(lines: list[str], allow: str):
        name = f"{unique}-{len(runs)}"
        topics = BridgeTopics(f"in-{name}", f"out-{name}", f"dead-{name}", f"group-{name}")
        kafka.create_topics({topics.input: 1, topics.output: 1, topics.dead_letters: 1})
        produce(kafka.bootstrap_servers, topics.input, lines, partition=0)
        bridge = BridgeProcess(tmp_path / f"bridge-{name}.log", "--bootstrap-servers", kafka.bootstrap_servers,
                               "--model-server", model_server.address, *topics.flags(), "--fetch-allow", allow,
                               "--metrics-port", "0")
        runs.append(bridge.start())
        outcomes = read_outcomes(kafka, topics, expect=len(lines), timeout=60)
        assert bridge.terminate() == 0
        return outcomes

    yield classify
    for bridge in runs:
        bridge.kill()


def test_the_default_policy_blocks_loopback_in_every_spelling_and_the_allow_list_opens_it(
        image_server, held_out, bridge_on_fresh_topics):
    target = ImageServer().start()  # counts every request that reaches it
    try:
        image = held_out[3]
        target.add("digit.png", image.body, image.content_type)
        urls = loopback_spellings(port_of(target), "digit.png")

        _, dead = bridge_on_fresh_topics(urls, allow="")  # the default policy
        assert sorted(d["value"] for d in values(dead)) == sorted(urls)
        assert {(d["error"]["stage"], d["error"]["type"]) for d in values(dead)} == {("fetch", "blocked")}
        assert target.hits() == 0  # decided before connecting: nothing reached the target port
        messages = {re.sub(r"\S+ is not", "HOST is not", d["error"]["message"]) for d in values(dead)}
        assert len(messages) == 1  # the same words for every address: nothing to learn about what listens

        # A redirect from a host the allow-list names (localhost) to a loopback port it does not open.
        hop = quote(target.url("digit.png"), safe="")
        redirect = f"http://localhost:{port_of(image_server)}/redirect-to?url={hop}"
        _, dead = bridge_on_fresh_topics([redirect], allow="localhost")
        assert [(d["value"], d["error"]["type"]) for d in values(dead)] == [(redirect, "blocked")]
        assert target.hits() == 0 and image_server.hits("/redirect-to") >= 1

        # The same URLs with the loopback address allowed explicitly.
        outputs, dead = bridge_on_fresh_topics(urls, allow="127.0.0.1")
        classified = {r["url"]: r["predictions"][0]["label"] for r in values(outputs)}
        assert classified == {u: image.label for u in urls if "[::1]" not in u}, values(dead)
        # ::1 is not 127.0.0.1: the allow-list names addresses exactly (and the target listens on IPv4 only).
        assert [(d["value"], d["error"]["type"]) for d in values(dead)] == [(urls[6], "blocked")]
        assert target.hits() == len(urls) - 1
    finally:
        target.stop()


# --- the hostile corpus ----------------------------------------------------------------------------------------

def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def decompression_bomb(side: int = 20_000) -> bytes:
    """A real greyscale PNG of side x side black pixels: ~400 KB on the wire, 400 MB decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row * 500) for _ in range(side // 500)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """Stored on its side, with EXIF orientation 6: a viewer (and the bridge) turns it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())


def animated_gif(first: Image.Image, second: Image.Image) -> bytes:
    out = io.BytesIO()
    first.save(out, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return out.getvalue()


def hostile_corpus(server: ImageServer, held_out) -> dict[str, tuple[str, str] | str]:
    """URL -> the dead letter's (stage, type), or the digit it must be classified as."""
    def upright(n: int) -> Image.Image:
        return Image.fromarray(held_out[n].pixels)

    def serve(name: str, body: bytes, content_type: str = "image/png") -> str:
        return server.add(f"hostile/{name}", body, content_type)

    label = {n: held_out[n].label for n in range(20)}
    fetch, preprocess = ("fetch", "FetchError"), ("preprocess", "ImageError")
    big = upright(5).resize((4000, 4000)).convert("RGBA")  # 16 MP with alpha: just under the pixel cap
    grey16 = Image.fromarray(np.asarray(upright(9).convert("L"), dtype=np.uint16) * 257)  # mode I;16
    cmyk = upright(10).convert("CMYK")
    corpus: dict[str, tuple[str, str] | str] = {
        server.url(f"slow-headers/0.5/{held_out[0].name}"): fetch,
        server.url(f"trickle/1/{held_out[0].name}"): fetch,
        server.url("lying-length/1000000000"): fetch,  # refused by its Content-Length before reading
        server.url("lying-length/5000"): fetch,  # a few bytes, then nothing: the deadline ends it
        server.url("big/30000000"): fetch,  # over the byte cap, no Content-Length
        serve("bomb.png", decompression_bomb()): preprocess,
        serve("header-40000.png", png_header_claiming(40000, 40000)): preprocess,
        serve("zero.png", b""): fetch,
        serve("page.jpg", b"<!doctype html><html><body>not an image</body></html>", "image/jpeg"): fetch,
        serve("drawing.jpg", b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>', "image/jpeg"): fetch,
        serve("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>', "image/svg+xml"):
            fetch,
        serve("truncated.jpg", encoded(upright(1).resize((256, 256)), "JPEG")[:2000], "image/jpeg"): preprocess,
        serve("animated.gif", animated_gif(upright(2), upright(3)), "image/gif"): label[2],
        serve("rotated.jpg", exif_rotated_jpeg(upright(4)), "image/jpeg"): label[4],
        serve("large-alpha.png", encoded(big, "PNG")): label[5],
        serve("large-alpha-2.png", encoded(big, "PNG")): label[5],
        serve("progressive.jpg", encoded(upright(6), "JPEG", quality=95, progressive=True), "image/jpeg"): label[6],
        serve("palette.png", encoded(upright(7).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")): label[7],
        serve("grey.png", encoded(upright(8).convert("L"), "PNG")): label[8],
        serve("grey16.png", encoded(grey16, "PNG")): label[9],
        serve("cmyk.jpg", encoded(cmyk, "JPEG", quality=95), "image/jpeg"): label[10],
        serve("digit.webp", encoded(upright(11), "WEBP", lossless=True), "image/webp"): label[11],
        serve("digit.bmp", encoded(upright(12), "BMP"), "image/bmp"): label[12],
        serve("digit.tiff", encoded(upright(13), "TIFF"), "image/tiff"): fetch,  # not an accepted format
        server.url("as/text%2Fplain/" + held_out[14].name): fetch,
        server.url("status/500"): fetch,
        server.url("status/404").replace("http://", f"http://alice:{SECRET}@") + f"?X-Amz-Signature={SECRET}": fetch,
        server.url("loop/1"): fetch,
        server.url(f"redirect/3/{held_out[15].name}"): label[15],
        server.url(f"redirect/6/{held_out[15].name}"): fetch,
        server.url("redirect-to?url=" + quote("http://[bad", safe="")): fetch,
        server.url("redirect-to?url=" + quote("file:///etc/passwd", safe="")): fetch,
        server.url("redirect-to?url=" + quote(f"/slow/30/{held_out[16].name}", safe="")): fetch,
    }
    return corpus


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_hostile_corpus_through_the_running_bridge(kafka, topics, image_server, held_out, start_bridge):
    corpus = hostile_corpus(image_server, held_out)
    assert len(corpus) >= 30
    urls = list(corpus)
    produce(kafka.bootstrap_servers, topics.input, urls, partition=0)
    bridge = start_bridge("--fetch-deadline-ms", str(DEADLINE_MS), "--log-level", "DEBUG")

    outputs, dead = read_outcomes(kafka, topics, expect=len(urls), timeout=120)

    assert bridge.process.poll() is None, bridge.log()[-3000:]
    peak = peak_rss_bytes(bridge.process.pid)
    got: dict[str, tuple[str, str] | str] = {r["url"]: r["predictions"][0]["label"] for r in values(outputs)}
    got.update({d["value"]: (d["error"]["stage"], d["error"]["type"]) for d in values(dead)})
    assert got == corpus
    fetch_ms = [float(ms) for ms in re.findall(r"fetch for \S+ took (\d+) ms", bridge.log())]
    assert len(fetch_ms) >= len(urls) - 1  # every record that got as far as fetching (the TIFF one too)
    assert max(fetch_ms) <= DEADLINE_MS + 1000, max(fetch_ms)
    # The bound the README states for the defaults: 200 MiB + 16 fetches x 10 MiB + 2 decodes x 16 MP x 16 B.
    assert peak < 200 * 2**20 + 16 * 10 * 2**20 + 2 * 16_777_216 * 16, peak
    log = bridge.log()
    assert SECRET not in log
    assert all(SECRET not in d["error"]["message"] for d in values(dead))
    assert all(SECRET not in h.decode("utf-8", "replace") for m in dead for _, h in (m.headers() or []))
    print(f"peak RSS {peak / 2**20:.0f} MiB; slowest fetch {max(fetch_ms):.0f} ms")
    assert bridge.terminate() == 0
