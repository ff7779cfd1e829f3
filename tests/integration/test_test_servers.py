"""The test servers themselves: a local broker that keeps its data across restart(), the image server's
hostile routes and hit counter, and the model server's TF Serving REST API."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import grpc
import numpy as np
import pytest
import requests
from confluent_kafka import Producer

from bridge.tfs_api import predict_pb2, prediction_service_pb2_grpc, tensor_pb2, types_pb2
from scripts.image_server import PNG_SIGNATURE, ImageServer
from scripts.kafka_io import produce, read_topic
from scripts.kafka_local import KafkaError, LocalKafka, free_port
from serving.process import ModelServerProcess

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


# ---------------------------------------------------------------- the model server's REST API

# A second model next to digits, for single outputs and bytes: exported by a subprocess (no TensorFlow here).
TINY_MODEL = """
import sys
import tensorflow as tf

class Tiny(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def double(self, x):
        return {"y": x * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="data")])
    def echo(self, data):
        return {"echo_bytes": tf.identity(data)}

tiny = Tiny()
tf.saved_model.save(tiny, sys.argv[1], signatures={"serving_default": tiny.double.get_concrete_function(),
                                                   "echo": tiny.echo.get_concrete_function()})
"""
STATUS = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.fixture(scope="module")
def rest_models(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model base dir with the session's digits model and the tiny one."""
    base = tmp_path_factory.mktemp("rest-models")
    (base / "digits").symlink_to((models_dir / "digits").resolve(), target_is_directory=True)
    export = subprocess.run([sys.executable, "-c", TINY_MODEL, str(base / "tiny" / "1")], check=False, timeout=300,
                            capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert export.returncode == 0, export.stderr[-3000:]
    return base


@pytest.fixture(scope="module")
def rest_server(rest_models: Path) -> Iterator[ModelServerProcess]:
    server = ModelServerProcess(rest_models, port=0, rest_port=0)
    server.start()
    yield server
    server.stop()


def call(server: ModelServerProcess, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
    """Status and JSON answer of one REST request."""
    response = requests.request(method, f"{server.rest_url}{path}", json=body, timeout=timeout)
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, response.json()


def grpc_predict(server: ModelServerProcess, signature: str, alias: str,
                 tensor: tensor_pb2.TensorProto) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = signature
    request.inputs[alias].CopyFrom(tensor)
    with grpc.insecure_channel(server.address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)


def uint8_tensor(pixels: np.ndarray) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_content=pixels.tobytes())
    for size in pixels.shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_rest_status_answers_for_the_model_a_version_and_a_label(rest_server):
    assert call(rest_server, "GET", "/v1/models/digits") == (200, STATUS)
    assert call(rest_server, "GET", "/v1/models/digits/versions/1") == (200, STATUS)
    # TF Serving's GetModelStatus ignores a version label: every version's status
    assert call(rest_server, "GET", "/v1/models/digits/labels/stable") == (200, STATUS)
    assert call(rest_server, "GET", "/v1/models/digits/versions/7") == (
        404, {"error": "Could not find version 7 of model digits"})
    assert call(rest_server, "GET", "/v1/models/nothing") == (
        404, {"error": "Could not find any versions of model nothing"})


def test_rest_metadata_is_tf_servings_json_of_the_signature_defs(rest_server):
    status, body = call(rest_server, "GET", "/v1/models/digits/metadata")
    assert status == 200
    # TF Serving prints model_spec and the unpacked SignatureDefMap with proto field names (no "@type")
    assert body["model_spec"] == {"name": "digits", "version": "1", "signature_name": ""}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "bytes", "float"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert default["inputs"]["images"]["tensor_shape"] == {
        "dim": [{"size": size, "name": ""} for size in ("-1", "32", "32", "3")], "unknown_rank": False}
    assert set(default["outputs"]) == {"scores", "classes", "top_class"}
    assert signatures["bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert "@type" not in json.dumps(body)
    assert call(rest_server, "GET", "/v1/models/digits/versions/1/metadata") == (200, body)
    assert call(rest_server, "GET", "/v1/models/digits/labels/stable/metadata") == (
        400, {"error": "Unrecognized servable version label: stable"})


def test_rest_columnar_and_row_predict_give_the_grpc_top_classes(rest_server, held_out):
    images = held_out[:8]
    pixels = np.stack([image.pixels for image in images])
    expected = grpc_predict(rest_server, "serving_default", "images", uint8_tensor(pixels))
    grpc_top = [label.decode() for label in expected.outputs["top_class"].string_val]
    grpc_scores = np.array(expected.outputs["scores"].float_val).reshape(8, 10)

    status, body = call(rest_server, "POST", "/v1/models/digits:predict", {"inputs": pixels.tolist()})
    assert status == 200 and set(body) == {"outputs"}
    outputs = body["outputs"]
    assert outputs["top_class"] == grpc_top
    assert np.allclose(outputs["scores"], grpc_scores, atol=1e-6)
    assert outputs["classes"] == [[str(d) for d in range(10)]] * 8  # DT_STRING outputs as UTF-8 strings

    status, body = call(rest_server, "POST", "/v1/models/digits/versions/1:predict",
                        {"signature_name": "serving_default", "instances": pixels.tolist()})
    assert status == 200
    assert [row["top_class"] for row in body["predictions"]] == grpc_top
    assert set(body["predictions"][0]) == {"scores", "classes", "top_class"}

    floats = {"signature_name": "float", "inputs": {"images": (pixels / 255.0).tolist()}}
    status, body = call(rest_server, "POST", "/v1/models/digits:predict", floats)
    assert status == 200 and body["outputs"]["top_class"] == grpc_top


def test_rest_single_output_is_not_wrapped_in_its_name(rest_server):
    assert call(rest_server, "POST", "/v1/models/tiny:predict", {"inputs": [[1, 2.5], [0.1, -3]]}) == (
        200, {"outputs": [[2.0, 5.0], [0.2, -6.0]]})
    assert call(rest_server, "POST", "/v1/models/tiny:predict", {"instances": [[1, 2], [3, 4]]}) == (
        200, {"predictions": [[2.0, 4.0], [6.0, 8.0]]})


def test_rest_b64_strings_in_and_bytes_outputs_as_b64(rest_server, held_out):
    raw = bytes(range(256))
    echo = {"signature_name": "echo", "inputs": [b64(raw), "plain"]}
    assert call(rest_server, "POST", "/v1/models/tiny:predict", echo) == (
        200, {"outputs": [b64(raw), b64(b"plain")]})  # an output named *_bytes comes back as {"b64": ...}

    images = held_out[:6]  # PNG and JPEG
    expected = grpc_predict(rest_server, "bytes", "image_bytes", tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[image.body for image in images],
        tensor_shape={"dim": [{"size": len(images)}]}))
    status, body = call(rest_server, "POST", "/v1/models/digits:predict",
                        {"signature_name": "bytes", "instances": [b64(image.body) for image in images]})
    assert status == 200
    assert [row["top_class"] for row in body["predictions"]] == [
        label.decode() for label in expected.outputs["top_class"].string_val]


def test_rest_bad_requests_answer_tf_servings_errors(rest_server):
    predict = "/v1/models/digits:predict"
    assert call(rest_server, "POST", predict, {"inputs": [["a"]]}) == (
        400, {"error": "JSON Value: \"a\" Type: String is not of expected type: uint8"})
    assert call(rest_server, "POST", predict, {"inputs": [[[[1, 2, 3]]]]}) == (400, {
        "error": "Input images has shape [1,1,1,3], which is incompatible with the signature's shape [-1,32,32,3]"})
    assert call(rest_server, "POST", predict, {"inputs": [[1, 2], [3]]}) == (
        400, {"error": "Encountered list at unexpected size: 1 at level: 1 expected size: 2"})
    assert call(rest_server, "POST", predict, {"images": []}) == (400, {"error": "Missing 'inputs' or 'instances' key"})
    assert call(rest_server, "POST", predict, {"signature_name": "nope", "inputs": []}) == (
        400, {"error": 'Serving signature name: "nope" not found in signature def'})
    assert call(rest_server, "POST", "/v1/models/nothing:predict", {"inputs": []}) == (
        404, {"error": "Servable not found for request: Latest(nothing)"})
    assert call(rest_server, "GET", "/v1/models/digits:predict") == (
        400, {"error": "Malformed request: GET /v1/models/digits:predict"})
    response = requests.post(f"{rest_server.rest_url}{predict}", data=b'{"inputs": [1, 2', timeout=30)
    assert response.status_code == 400 and response.json()["error"].startswith("JSON Parse error: ")
    response = requests.get(f"{rest_server.rest_url}/metrics", timeout=30)
    assert response.status_code == 404 and "<TITLE>404 Not Found</TITLE>" in response.text  # libevent's page


def test_rest_fault_file_answers_mapped_http_statuses(rest_server):
    body = {"inputs": [[1, 2]]}
    try:
        for code, http_status in [("UNAVAILABLE", 503), ("UNAUTHENTICATED", 401), ("RESOURCE_EXHAUSTED", 429)]:
            rest_server.inject_fault(code)
            assert call(rest_server, "POST", "/v1/models/tiny:predict", body) == (
                http_status, {"error": "injected fault"})
            assert call(rest_server, "GET", "/v1/models/tiny")[0] == 200  # status and metadata never see faults
            assert call(rest_server, "GET", "/v1/models/tiny/metadata")[0] == 200
        rest_server.inject_fault("UNAVAILABLE", hang=True)
        with pytest.raises(requests.exceptions.ReadTimeout):  # waits while the client is there
            requests.post(f"{rest_server.rest_url}/v1/models/tiny:predict", json=body, timeout=(5, 1))
    finally:
        rest_server.inject_fault(None)
    assert call(rest_server, "POST", "/v1/models/tiny:predict", body) == (200, {"outputs": [[2.0, 4.0]]})
    time.sleep(1)  # the hang has seen the client leave and answered into the closed connection: quietly
    assert "Traceback" not in rest_server.stderr_tail()


def test_rest_keeps_the_connection_alive(rest_server):
    connection = http.client.HTTPConnection("127.0.0.1", urlsplit(rest_server.rest_url).port, timeout=30)
    try:
        answers = []
        for method, path, body in [("GET", "/v1/models/tiny", None),
                                   ("POST", "/v1/models/tiny:predict", b'{"inputs": [[1, 2]]}'),
                                   ("GET", "/v1/models/tiny/versions/9", None),  # an error keeps it open too
                                   ("POST", "/v1/models/tiny:predict", b'{"instances": [[3, 4]]}')]:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
            if method == "GET" and path == "/v1/models/tiny":
                sock = connection.sock
        assert connection.sock is sock  # one connection for all four
    finally:
        connection.close()
    assert answers == [(200, STATUS), (200, {"outputs": [[2.0, 4.0]]}),
                       (404, {"error": "Could not find version 9 of model tiny"}), (200, {"predictions": [[6.0, 8.0]]})]


def test_rest_takes_a_large_json_batch(rest_server):
    pixels = np.random.default_rng(0).integers(0, 256, (2048, 32, 32, 3), dtype=np.uint8)
    body = json.dumps({"inputs": pixels.tolist()}).encode()
    assert len(body) > 20_000_000
    response = requests.post(f"{rest_server.rest_url}/v1/models/digits:predict", data=body, timeout=120)
    assert response.status_code == 200
    assert np.array(response.json()["outputs"]["scores"]).shape == (2048, 10)


def top_classes_and_scores(answer: dict) -> tuple[list[str], np.ndarray]:
    """top_class and scores of a digits answer, columnar or row."""
    if "outputs" in answer:
        return answer["outputs"]["top_class"], np.array(answer["outputs"]["scores"])
    rows = answer["predictions"]
    return [row["top_class"] for row in rows], np.array([row["scores"] for row in rows])


def post_predict(server: ModelServerProcess, body: bytes) -> tuple[int, Any]:
    response = requests.post(f"{server.rest_url}/v1/models/digits:predict", data=body, timeout=120)
    return response.status_code, response.json()


def test_rest_large_json_arrays_give_the_grpc_answers_in_every_layout(rest_server):
    """Bodies this large take the server's fast JSON path (numpy's parser for dense numeric arrays)."""
    pixels = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    expected = grpc_predict(rest_server, "serving_default", "images", uint8_tensor(pixels))
    grpc_top = [label.decode() for label in expected.outputs["top_class"].string_val]
    grpc_scores = np.array(expected.outputs["scores"].float_val).reshape(64, 10)
    rows = pixels.tolist()
    compact = json.dumps({"inputs": {"images": rows}}, separators=(",", ":"))
    padded = re.sub(r"(?<=[\[,])\d+", lambda number: number[0].rjust(3), compact)  # as bridge/model/pixels_json.py
    for body in [json.dumps({"inputs": rows}), compact, padded, json.dumps({"instances": rows}, indent=1),
                 json.dumps({"signature_name": "serving_default", "instances": [{"images": row} for row in rows]})]:
        status, answer = post_predict(rest_server, body.encode())
        assert status == 200, answer
        top, scores = top_classes_and_scores(answer)
        assert top == grpc_top
        assert np.allclose(scores, grpc_scores, atol=1e-6)
    status, answer = post_predict(rest_server, json.dumps({"signature_name": "float",
                                                           "inputs": (pixels / 255.0).tolist()}).encode())
    assert status == 200 and top_classes_and_scores(answer)[0] == grpc_top


def test_rest_large_uint8_arrays_wrap_ints_beyond_a_byte_like_tf_serving(rest_server):
    """json_tensor.cc takes any int32 for DT_UINT8 (into int_val, cast to uint8): 256 is 0 and -1 is 255."""
    pixels = np.random.default_rng(2).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    wrapped = pixels.astype(np.int64)
    wrapped[0, 0, 0, 0] += 256
    wrapped[5, 6, 7, 1] -= 256
    status, plain = post_predict(rest_server, json.dumps({"inputs": pixels.tolist()}).encode())
    assert status == 200
    assert post_predict(rest_server, json.dumps({"inputs": wrapped.tolist()}).encode()) == (200, plain)
    wrapped[3, 4, 5, 2] = 2**31
    assert post_predict(rest_server, json.dumps({"inputs": wrapped.tolist()}).encode()) == (
        400, {"error": "JSON Value: 2147483648 Type: Number is not of expected type: uint8"})


def test_rest_large_bad_json_arrays_answer_tf_servings_errors(rest_server):
    rows = np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3)).tolist()
    for leaf, error in [([1, 2], "Encountered list at unexpected size: 2 at level: 3 expected size: 3"),
                        (["7", 0, 0], 'JSON Value: "7" Type: String is not of expected type: uint8'),
                        ([0.5, 0, 0], "JSON Value: 0.5 Type: Number is not of expected type: uint8"),
                        ([None, 0, 0], "JSON Value: null Type: Null is not of expected type: uint8")]:
        bad = json.loads(json.dumps(rows))
        bad[3][5][7] = leaf
        assert post_predict(rest_server, json.dumps({"inputs": bad}).encode()) == (400, {"error": error})
    body = json.dumps({"inputs": rows}).encode()
    leading_zero = body.replace(b"[[[[", b"[[[[0", 1)
    assert post_predict(rest_server, leading_zero) == (
        400, {"error": "JSON Parse error: Expecting ',' delimiter at offset: 16"})
    plus = body.replace(b"[[[[", b"[[[[+", 1)
    assert post_predict(rest_server, plus) == (400, {"error": "JSON Parse error: Expecting value at offset: 15"})
    empty_field = body.replace(b", ", b", , ", 1)
    status, answer = post_predict(rest_server, empty_field)
    assert status == 400 and answer["error"].startswith("JSON Parse error: Expecting value at offset: ")


def predict_calls(server: ModelServerProcess) -> int:
    found = re.findall(r"shutting down after (\d+) Predict calls", server.stderr_tail())
    assert found, server.stderr_tail()[-2000:]
    return int(found[-1])


def test_rest_port_survives_restart_and_rest_predicts_are_counted(models_dir, held_out):
    server = ModelServerProcess(models_dir, port=0, rest_port=0)
    pixels = np.stack([held_out[0].pixels])
    try:
        server.start()
        assert re.fullmatch(r"ready on 127\.0\.0\.1:\d+ rest 127\.0\.0\.1:\d+ models: digits:1", server.ready_line)
        ports = (server.port, server.rest_port)
        assert ports[1] and ports[1] != ports[0] and server.rest_url == f"http://127.0.0.1:{ports[1]}"
        for _ in range(2):
            assert call(server, "POST", "/v1/models/digits:predict", {"inputs": pixels.tolist()})[0] == 200
        assert call(server, "POST", "/v1/models/digits:predict", {"inputs": "bad"})[0] == 400
        grpc_predict(server, "serving_default", "images", uint8_tensor(pixels))
        server.stop()
        assert predict_calls(server) == 4  # three REST calls (answered or not) and one gRPC call

        server.start()  # what restart() does: the same ports again
        assert (server.port, server.rest_port) == ports
        assert call(server, "GET", "/v1/models/digits") == (200, STATUS)
    finally:
        server.stop()


def test_the_ready_line_has_no_rest_part_without_a_rest_port(model_server):
    assert model_server.rest_url is None
    assert re.fullmatch(r"ready on 127\.0\.0\.1:\d+ models: digits:1", model_server.ready_line)
