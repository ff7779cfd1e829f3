"""The test servers themselves: a local broker that keeps its data across restart(), and the image server's
hostile routes and hit counter."""

from __future__ import annotations

import http.client
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import requests
from confluent_kafka import Producer

from scripts.image_server import PNG_SIGNATURE, ImageServer
from scripts.kafka_io import produce, read_topic
from scripts.kafka_local import KafkaError, LocalKafka, free_port

pytestmark = pytest.mark.integration

BODY = PNG_SIGNATURE + bytes(range(92))  # 100 bytes


# ---------------------------------------------------------------- LocalKafka.restart()

def test_committed_records_survive_a_broker_restart(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka", port=free_port())
    broker.start()
    try:
        broker.create_topics({"kept": 2})
        produce(broker.bootstrap_servers, "kept", [f"plain-{i}" for i in range(5)])
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "transactional.id": "kept-txn"})
        producer.init_transactions(30)
        producer.begin_transaction()
        for i in range(5):
            producer.produce("kept", f"txn-{i}")
        producer.commit_transaction(30)
        cluster_id = (broker.data_dir / "meta.properties").read_text()
        old_pid = broker.process.pid if broker.process else None

        broker.restart(down_for=0.5)

        assert broker.process is not None and broker.process.pid != old_pid
        assert (broker.data_dir / "meta.properties").read_text() == cluster_id
        records = read_topic(broker.bootstrap_servers, "kept", expect=10, timeout=60)
        assert sorted(r.value().decode() for r in records) == sorted(
            [f"plain-{i}" for i in range(5)] + [f"txn-{i}" for i in range(5)])
        produce(broker.bootstrap_servers, "kept", ["after-restart"])  # and it still takes writes
    finally:
        broker.stop()


def test_keeping_data_needs_formatted_storage(tmp_path: Path) -> None:
    with pytest.raises(KafkaError, match="no formatted Kafka storage"):
        LocalKafka(tmp_path, port=free_port()).start(keep_data=True)


# ---------------------------------------------------------------- ImageServer

@pytest.fixture
def server() -> Iterator[ImageServer]:
    server = ImageServer().start()
    server.add("cat.png", BODY, "image/png")
    yield server
    server.stop()


def open_get(server: ImageServer, path: str) -> socket.socket:
    """A raw connection with one GET request sent."""
    sock = socket.create_connection(("127.0.0.1", urlsplit(server.base_url).port or 80), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def receive(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Whatever arrives within `seconds`, and whether the server closed the connection."""
    data = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    return data, False


def test_hits_count_requests_by_path_prefix(server: ImageServer) -> None:
    requests.get(server.url("cat.png"), timeout=5)
    requests.get(server.url("cat.png"), timeout=5)
    requests.get(server.url("status/404"), timeout=5)
    assert (server.hits("cat.png"), server.hits("/status"), server.hits(), server.hits("nothing")) == (2, 1, 3, 0)
    server.reset_hits()
    assert server.hits() == 0


def test_existing_routes_still_answer(server: ImageServer) -> None:
    assert requests.get(server.url("cat.png"), timeout=5).content == BODY
    assert requests.get(server.url("redirect/2/cat.png"), timeout=5).content == BODY
    assert requests.get(server.url("status/503"), timeout=5).status_code == 503
    assert len(requests.get(server.url("big/70000"), timeout=5).content) == 70000


def test_trickle_sends_headers_at_once_then_a_byte_at_a_time(server: ImageServer) -> None:
    with open_get(server, "/trickle/0.02/cat.png") as sock:
        head, _ = receive(sock, 0.3)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 100\r\n" in head
        assert len(head.partition(b"\r\n\r\n")[2]) < 50
        # another request is not held up meanwhile
        started = time.monotonic()
        assert requests.get(server.url("cat.png"), timeout=5).content == BODY
        assert time.monotonic() - started < 1
        rest, _ = receive(sock, 3)
    assert (head + rest).partition(b"\r\n\r\n")[2] == BODY


def test_trickle_stops_quietly_when_the_client_hangs_up(server: ImageServer, capfd: pytest.CaptureFixture) -> None:
    with open_get(server, "/trickle/0.02/cat.png") as sock:
        receive(sock, 0.2)
    time.sleep(0.5)
    assert requests.get(server.url("cat.png"), timeout=5).content == BODY
    assert "Traceback" not in capfd.readouterr().err


def test_stop_returns_promptly_during_a_trickle() -> None:
    server = ImageServer().start()
    server.add("cat.png", BODY, "image/png")
    with open_get(server, "/trickle/1/cat.png") as sock:
        receive(sock, 0.3)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
        _, closed = receive(sock, 3)  # the slow response ends early too
    assert closed


def test_slow_headers_arrive_a_byte_at_a_time(server: ImageServer) -> None:
    started = time.monotonic()
    with open_get(server, "/slow-headers/0.02") as sock:
        early, _ = receive(sock, 0.5)
        assert 0 < len(early) < 60 and b"\r\n\r\n" not in early
        rest, closed = receive(sock, 10)
    assert closed and time.monotonic() - started > 1
    head, _, body = (early + rest).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: image/png" in head
    assert body == PNG_SIGNATURE


def test_slow_headers_can_serve_a_file(server: ImageServer) -> None:
    response = requests.get(server.url("slow-headers/0.001/cat.png"), timeout=5)
    assert response.content == BODY


def test_lying_length_sends_a_few_bytes_then_holds_the_connection(server: ImageServer) -> None:
    with open_get(server, "/lying-length/1000000000") as sock:
        data, _ = receive(sock, 0.5)
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"\r\nContent-Length: 1000000000" in head and b"\r\nContent-Type: image/png" in head
        assert body.startswith(PNG_SIGNATURE) and len(body) < 100
        more, closed = receive(sock, 1)
        assert (more, closed) == (b"", False)
        assert requests.get(server.url("cat.png"), timeout=5).content == BODY


def redirect_location(server: ImageServer, path: str) -> tuple[int, str | None]:
    """Status and Location of one GET, read with http.client (requests refuses to parse a malformed Location)."""
    connection = http.client.HTTPConnection("127.0.0.1", urlsplit(server.base_url).port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Location")
    finally:
        connection.close()


def test_redirect_to_sends_the_location_verbatim(server: ImageServer) -> None:
    for location in ["http://[bad", "/cat.png", server.url("cat.png"), "http://127.0.0.1:1/x?y=1"]:
        assert redirect_location(server, f"/redirect-to?url={quote(location, safe='')}") == (302, location)
    assert requests.get(server.url(f"redirect-to?url={quote(server.url('cat.png'))}"), timeout=5).content == BODY
    assert requests.get(server.url("redirect-to"), timeout=5).status_code == 400


def test_loop_redirects_to_itself(server: ImageServer) -> None:
    assert redirect_location(server, "/loop/7") == (302, "/loop/7")
    with requests.Session() as session:
        session.max_redirects = 4
        with pytest.raises(requests.TooManyRedirects):
            session.get(server.url("loop/7"), timeout=5)
    assert server.hits("loop/7") == 1 + 5


def test_as_serves_a_file_under_another_content_type(server: ImageServer) -> None:
    response = requests.get(server.url(f"as/{quote('text/html; charset=utf-8', safe='')}/cat.png"), timeout=5)
    assert (response.headers["Content-Type"], response.content) == ("text/html; charset=utf-8", BODY)
    assert requests.get(server.url("as/image%2Fpng/missing.png"), timeout=5).status_code == 404
