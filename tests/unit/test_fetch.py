from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest
import requests
from PIL import Image

from ipaddress import ip_address
from urllib.parse import quote

from bridge.images.address_policy import AddressPolicy
from bridge.errors import FetchBlocked, FetchError
from bridge.images.fetch import FetchLimits, ImageFetcher, sniff_image_type
from scripts.image_server import ImageServer

LOCAL = AddressPolicy.from_entries(["127.0.0.1"])  # the test servers' address, opened explicitly


def encode(fmt: str, size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buffer, fmt)
    return buffer.getvalue()


PNG = encode("PNG")
JPEG = encode("JPEG")


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    server = ImageServer().start()
    server.add("cat.png", PNG, "image/png")
    server.add("cat.jpg", JPEG, "image/jpeg; charset=binary")
    server.add("raw.png", PNG, "application/octet-stream")
    server.add("page.html", b"<html><body>hello</body></html>", "text/html; charset=utf-8")
    server.add("fake.png", b"this is not a png at all", "image/png")
    server.add("empty.png", b"", "image/png")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fetcher() -> Iterator[ImageFetcher]:
    with ImageFetcher(FetchLimits(connect_timeout=1, read_timeout=2, deadline=3, max_bytes=100_000,
                                  max_redirects=2), LOCAL) as fetcher:
        yield fetcher


def fetch_error(fetcher: ImageFetcher, url: str) -> str:
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(url)
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.stage == "fetch"
    return message


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("name, body", [("cat.png", PNG), ("cat.jpg", JPEG), ("raw.png", PNG)])
def test_image_bodies_come_back_byte_identical(server, fetcher, name, body):
    assert fetcher.fetch(server.url(name)) == body


@pytest.mark.parametrize("path, expected", [
    ("status/404", "HTTP 404"),
    ("status/500", "HTTP 500"),
    ("missing.png", "HTTP 404"),
])
def test_http_errors_name_the_status_and_url(server, fetcher, path, expected):
    message = fetch_error(fetcher, server.url(path))
    assert expected in message and server.url(path) in message


def test_a_web_page_is_not_an_image(server, fetcher):
    assert "not an image (content type text/html)" in fetch_error(fetcher, server.url("page.html"))


def test_image_content_type_with_garbage_bytes_is_not_an_image(server, fetcher):
    assert "not an image (unrecognised content)" in fetch_error(fetcher, server.url("fake.png"))


def test_an_empty_body_is_refused(server, fetcher):
    assert "empty response" in fetch_error(fetcher, server.url("empty.png"))


def test_body_over_the_limit_is_cut_off_while_streaming(server, fetcher):
    # /big sends no Content-Length: only counting the streamed bytes can stop it.
    started = time.monotonic()
    assert "larger than 100000 bytes" in fetch_error(fetcher, server.url("big/50000000"))
    assert time.monotonic() - started < 2


def test_body_exactly_at_the_limit_is_accepted(server, fetcher):
    assert len(fetcher.fetch(server.url("big/100000"))) == 100_000


def test_content_length_over_the_limit_is_refused_before_reading(server):
    server.add("huge.png", PNG + bytes(5000), "image/png")
    with ImageFetcher(FetchLimits(max_bytes=1000), LOCAL) as small:
        message = fetch_error(small, server.url("huge.png"))
    assert "larger than 1000 bytes" in message and "Content-Length" in message


def test_redirects_up_to_the_limit_are_followed(server, fetcher):
    assert fetcher.fetch(server.url("redirect/2/cat.png")) == PNG


def test_more_redirects_than_the_limit_fail(server, fetcher):
    assert "too many redirects (more than 2)" in fetch_error(fetcher, server.url("redirect/3/cat.png"))


@pytest.fixture(scope="module")
def ftp_redirector() -> Iterator[str]:
    class RedirectToFtp(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/cat.png")
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RedirectToFtp)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/cat.png"
    httpd.shutdown()
    httpd.server_close()


def test_a_redirect_to_another_scheme_fails(fetcher, ftp_redirector):
    assert "redirected to unsupported URL scheme 'ftp'" in fetch_error(fetcher, ftp_redirector)


def test_a_slow_server_is_abandoned_at_the_deadline(server):
    with ImageFetcher(FetchLimits(deadline=0.5), LOCAL) as quick:
        started = time.monotonic()
        message = fetch_error(quick, server.url("slow/2/cat.png"))
    assert "timed out after 0.5 s" in message
    assert time.monotonic() - started < 1.5


def test_read_timeout_is_named(server):
    with ImageFetcher(FetchLimits(read_timeout=0.3), LOCAL) as quick:
        assert "timed out after 0.3 s waiting for 127.0.0.1" in fetch_error(quick, server.url("slow/1/cat.png"))


@pytest.mark.parametrize("route", ["trickle/0.05/cat.png", "slow-headers/0.05", "lying-length/5000"])
def test_the_deadline_holds_however_the_bytes_trickle(server, route):
    # A byte every 50 ms (or nothing after the first bytes): the 10 s read timeout never fires, the whole
    # body would take ~6 s, so only the 1 s wall-clock deadline can stop it, and at 1 s.
    with ImageFetcher(FetchLimits(read_timeout=10, deadline=1.0), LOCAL) as fetcher:
        started = time.monotonic()
        message = fetch_error(fetcher, server.url(route))
        took = time.monotonic() - started
    assert "timed out after 1 s (the fetch deadline)" in message
    assert 0.9 <= took < 1.6


def test_the_deadline_covers_redirects_too(server):
    with ImageFetcher(FetchLimits(read_timeout=10, deadline=1.0, max_redirects=10), LOCAL) as fetcher:
        target = quote(server.url("trickle/0.05/cat.png"), safe="")
        started = time.monotonic()
        message = fetch_error(fetcher, server.url(f"redirect-to?url={target}"))
    assert "the fetch deadline" in message and time.monotonic() - started < 1.6


def test_a_trickling_fetch_does_not_hold_up_the_next_one_on_a_reused_connection(server):
    with ImageFetcher(FetchLimits(read_timeout=10, deadline=1.0), LOCAL, pool_size=1) as fetcher:
        assert fetcher.fetch(server.url("cat.png")) == PNG  # leaves a keep-alive connection in the pool
        fetch_error(fetcher, server.url("trickle/0.05/cat.png"))
        assert fetcher.fetch(server.url("cat.png")) == PNG


@pytest.mark.parametrize("url, expected", [
    ("ftp://example.com/cat.png", "unsupported URL scheme 'ftp'"),
    ("file:///etc/passwd", "unsupported URL scheme 'file'"),
    ("not a url", "not a URL"),
    ("http:///cat.png", "no host"),
    ("http://[::1/cat.png", "invalid URL"),
    ("http://127.0.0.1:99999/cat.png", "invalid URL"),
])
def test_bad_urls_are_rejected_without_touching_the_network(url, expected):
    session = mock.Mock(spec=requests.Session)
    fetcher = ImageFetcher(session=session)
    with pytest.raises(FetchError, match=expected.replace("(", r"\(")):
        fetcher.fetch(url)
    session.get.assert_not_called()


def test_connection_refused_names_the_host():
    message = fetch_error(ImageFetcher(policy=LOCAL), f"http://127.0.0.1:{closed_port()}/cat.png")
    assert "cannot connect to host 127.0.0.1" in message and "refused" in message


def test_concurrent_fetches_share_one_fetcher(server, fetcher):
    # 4 workers: the test server's listen backlog is 5, and a burst beyond it stalls connects for a second.
    urls = [server.url("cat.png"), server.url("cat.jpg")] * 16
    with ThreadPoolExecutor(max_workers=4) as pool:
        bodies = list(pool.map(fetcher.fetch, urls))
    assert bodies == [PNG, JPEG] * 16


@pytest.mark.parametrize("data, expected", [
    (PNG, "png"),
    (JPEG, "jpeg"),
    (encode("GIF"), "gif"),
    (encode("WEBP"), "webp"),
    (encode("BMP"), "bmp"),
    (encode("TIFF"), None),  # not accepted: see preprocess.FORMATS
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
    (b"<!doctype html>", None),
    (b"", None),
])
def test_sniff_image_type(data, expected):
    assert sniff_image_type(data) == expected


# --- the address policy at the connection: decided on the address actually connected to -------------------------

class Resolver:
    """A fake DNS: host name -> addresses, counting lookups. The system resolver knows none of these names, so a
    fetch that succeeds proves the connection went to the address the fetcher checked."""

    def __init__(self, table):
        self.table = table
        self.lookups = []

    def __call__(self, host, port):
        self.lookups.append(host)
        return [ip_address(a) for a in self.table[host]]


def test_the_default_policy_refuses_loopback_before_connecting(server):
    server.reset_hits()
    with ImageFetcher() as fetcher:
        with pytest.raises(FetchBlocked) as caught:
            fetcher.fetch(server.url("cat.png"))
    assert caught.value.error_type == "blocked" and caught.value.stage == "fetch"
    assert server.hits() == 0


def test_a_blocked_message_says_nothing_about_what_listens_there(server):
    with ImageFetcher() as fetcher:
        messages = {str(fetch_error(fetcher, f"http://127.0.0.1:{port}/x.png")).replace(str(port), "PORT")
                    for port in (server.url("").split(":")[2].strip("/"), str(closed_port()))}
    assert len(messages) == 1


def test_a_host_name_connects_to_the_checked_address_resolved_once(server):
    resolver = Resolver({"images.test": ["127.0.0.1"]})
    port = server.url("").split(":")[2].strip("/")
    with ImageFetcher(policy=AddressPolicy.from_entries(["images.test"]), resolver=resolver) as fetcher:
        assert fetcher.fetch(f"http://images.test:{port}/cat.png") == PNG
    assert resolver.lookups == ["images.test"]


def test_a_name_with_any_refused_address_is_blocked(server):
    resolver = Resolver({"mixed.test": ["93.184.216.34", "127.0.0.1"]})
    with ImageFetcher(resolver=resolver) as fetcher:
        with pytest.raises(FetchBlocked):
            fetcher.fetch("http://mixed.test/cat.png")


def test_every_redirect_hop_is_checked_again(server):
    # images.test (allowed by name, served from 127.0.0.1) redirects to 127.0.0.1 itself, which is not allowed.
    target = ImageServer().start()
    try:
        target.add("secret.png", PNG, "image/png")
        resolver = Resolver({"images.test": ["127.0.0.1"]})
        port = server.url("").split(":")[2].strip("/")
        hop = quote(target.url("secret.png"), safe="")
        with ImageFetcher(policy=AddressPolicy.from_entries(["images.test"]), resolver=resolver) as fetcher:
            with pytest.raises(FetchBlocked):
                fetcher.fetch(f"http://images.test:{port}/redirect-to?url={hop}")
        assert target.hits() == 0
    finally:
        target.stop()


def test_credentials_and_query_strings_stay_out_of_messages(server):
    url = server.url("status/404").replace("http://", "http://alice:s3cret@") + "?X-Amz-Signature=abc123"
    message = fetch_error(ImageFetcher(policy=LOCAL), url)
    assert "s3cret" not in message and "alice" not in message and "abc123" not in message
    assert "HTTP 404" in message


def test_netrc_and_proxy_variables_are_ignored(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy that is not there
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login bob password hunter2\n")
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    with ImageFetcher(policy=LOCAL) as fetcher:
        assert fetcher.fetch(server.url("cat.png")) == PNG


def test_a_redirect_to_a_malformed_url_is_a_fetch_error(server, fetcher):
    location = quote("http://[bad", safe="")
    assert "redirected to an invalid URL" in fetch_error(fetcher, server.url(f"redirect-to?url={location}"))
