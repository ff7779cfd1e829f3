"""The REST backend against TF Serving's documented JSON, served by a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import (ModelNotFound, ModelRejectedInput, ModelServerError, ModelServerRefused,
                           ModelServerUnavailable)
from bridge.model.backend import ModelTarget
from bridge.model.rest_backend import RestBackend, model_path, predict_body, predict_outputs
from bridge.model.pixels_json import uint8_json
from bridge.model.rest_errors import MAX_MESSAGE_CHARS, error_message, http_error
from bridge.model.signature import ImageSignature, InputKind, TensorSpec
from bridge.model.tensors import DataType
from bridge.tfs_api import get_model_metadata_pb2, meta_graph_pb2

PIXELS = ImageSignature("serving_default", TensorSpec("images", DataType.DT_UINT8, (-1, 2, 2, 3)), InputKind.UINT8,
                        "scores", "classes")
ENCODED = ImageSignature("serving_default", TensorSpec("image_bytes", DataType.DT_STRING, (-1,)), InputKind.ENCODED,
                         "scores", None)

# The status answer as TF Serving's REST API documents it (api_rest.md, "Model status API").
STATUS = {"model_version_status": [{"version": "2", "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""}},
                                   {"version": "1", "state": "END", "status": {"error_code": "OK"}}]}


def signature_def() -> meta_graph_pb2.SignatureDef:
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    images = signature.inputs["images"]
    images.name, images.dtype = "serving_default_images:0", DataType.DT_UINT8
    for size in (-1, 2, 2, 3):
        images.tensor_shape.dim.add(size=size)
    for name, dtype in (("scores", DataType.DT_FLOAT), ("classes", DataType.DT_STRING)):
        output = signature.outputs[name]
        output.name, output.dtype = f"StatefulPartitionedCall:{name}", dtype
        output.tensor_shape.dim.add(size=-1)
        output.tensor_shape.dim.add(size=10)
    return signature


def metadata(proto_field_names: bool) -> dict:
    """GetModelMetadataResponse in protobuf's JSON mapping: camelCase by default, as TF Serving prints it."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "digits"
    response.model_spec.version.value = 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def["serving_default"].CopyFrom(signature_def())
    response.metadata["signature_def"].Pack(signatures)
    return json_format.MessageToDict(response, preserving_proto_field_name=proto_field_names)


class FakeTFServing(ThreadingHTTPServer):
    """Answers each request with `answer(handler)` -> (status, body); counts requests and connections."""

    daemon_threads = True

    def __init__(self) -> None:
        self.answer: Callable[[BaseHTTPRequestHandler], tuple[int, bytes]] = lambda _: (200, b"{}")
        self.requests: list[tuple[str, str, bytes, dict]] = []
        self.connections = 0
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reply(self, status: int, body: object) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answer = lambda _: (status, data)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeTFServing

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_GET(self) -> None:  # noqa: N802
        self._serve(b"")

    def do_POST(self) -> None:  # noqa: N802
        self._serve(self.rfile.read(int(self.headers["Content-Length"])))

    def _serve(self, body: bytes) -> None:
        self.server.requests.append((self.command, self.path, body, dict(self.headers)))
        status, data = self.server.answer(self)
        if status == 0:
            return  # the answer already wrote (and trickled) the response itself
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tfs() -> Iterator[FakeTFServing]:
    server = FakeTFServing()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def backend(url: str, timeout: float = 5.0, **target) -> RestBackend:
    return RestBackend(url, ModelTarget(**{"name": "digits", **target}), timeout=timeout)


@pytest.mark.parametrize("target, path", [
    ({}, "/v1/models/digits"),
    ({"version": 3}, "/v1/models/digits/versions/3"),
    ({"version_label": "canary"}, "/v1/models/digits/labels/canary"),
    ({"name": "a b/c"}, "/v1/models/a%20b%2Fc"),
])
def test_the_model_path_names_the_version_or_label(target, path):
    assert model_path(ModelTarget(**{"name": "digits", **target})) == path


def test_status_reads_the_documented_answer_and_remembers_the_served_version(tfs):
    tfs.reply(200, STATUS)
    with backend(tfs.url, version_label="stable") as rest:
        statuses = rest.status()
    assert [(s.version, s.state) for s in statuses] == [(2, "AVAILABLE"), (1, "END")]
    assert tfs.requests[0][:2] == ("GET", "/v1/models/digits/labels/stable")
    assert rest._served_version == 2


@pytest.mark.parametrize("proto_field_names", [False, True], ids=["camelCase", "proto names"])
def test_the_signature_comes_from_metadata_with_type_and_either_field_spelling(tfs, proto_field_names):
    answer = metadata(proto_field_names)
    signature_map = answer["metadata"]["signature_def"]
    assert signature_map["@type"] == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    assert ("signature_def" if proto_field_names else "signatureDef") in signature_map
    assert answer["model_spec" if proto_field_names else "modelSpec"]["version"] == "2"  # int64 as a string
    tfs.reply(200, answer)
    with backend(tfs.url) as rest:
        signature = rest.signature()
    assert tfs.requests[0][1] == "/v1/models/digits/metadata"
    assert signature.input == TensorSpec("images", DataType.DT_UINT8, (-1, 2, 2, 3))
    assert (signature.input_kind, signature.scores_output, signature.labels_output) == \
        (InputKind.UINT8, "scores", "classes")


def test_metadata_without_a_type_on_the_signature_map_is_read_too(tfs):
    answer = metadata(True)
    del answer["metadata"]["signature_def"]["@type"]
    tfs.reply(200, answer)
    with backend(tfs.url) as rest:
        assert rest.signature().input.name == "images"


def test_an_unreadable_metadata_answer_is_a_model_server_error(tfs):
    tfs.reply(200, {"metadata": {"signature_def": {"signature_def": "not a map"}}})
    with backend(tfs.url) as rest, pytest.raises(ModelServerError, match="cannot read the answer"):
        rest.signature()


def test_a_missing_signature_is_model_not_found(tfs):
    tfs.reply(200, metadata(False))
    with backend(tfs.url, signature_name="other") as rest, pytest.raises(ModelNotFound, match="no signature 'other'"):
        rest.signature()


def test_predict_sends_the_columnar_inputs_and_reads_named_outputs(tfs):
    images = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3)
    labels = [[str(i) for i in range(10)]] * 2
    scores = np.linspace(0, 1, 20, dtype=np.float32).reshape(2, 10)
    tfs.reply(200, {"outputs": {"scores": scores.tolist(), "classes": labels}})
    with backend(tfs.url, version=4) as rest:
        prediction = rest.predict_images(PIXELS, images)
    method, path, body, headers = tfs.requests[0]
    assert (method, path, headers["Content-Type"]) == ("POST", "/v1/models/digits/versions/4:predict",
                                                       "application/json")
    assert json.loads(body) == {"signature_name": "serving_default", "inputs": {"images": images.tolist()}}
    np.testing.assert_array_equal(prediction.outputs["scores"], scores)
    assert prediction.outputs["classes"].tolist() == [[label.encode() for label in row] for row in labels]
    assert (prediction.model_name, prediction.model_version, prediction.signature_name) == \
        ("digits", 4, "serving_default")


def test_a_single_output_is_not_wrapped_in_its_name(tfs):
    tfs.reply(200, {"outputs": [[0.25, 0.75]]})
    with backend(tfs.url) as rest:
        prediction = rest.predict_images(PIXELS, np.zeros((1, 2, 2, 3), np.uint8))
    assert list(prediction.outputs) == ["scores"]
    assert prediction.outputs["scores"].tolist() == [[0.25, 0.75]]


def test_encoded_images_go_as_b64(tfs):
    tfs.reply(200, {"outputs": [[1.0]]})
    with backend(tfs.url) as rest:
        rest.predict_images(ENCODED, [b"\x89PNG\r\n", b"\xff\xd8\xff"])
    sent = json.loads(tfs.requests[0][2])["inputs"]["image_bytes"]
    assert [base64.b64decode(item["b64"]) for item in sent] == [b"\x89PNG\r\n", b"\xff\xd8\xff"]


def test_float_inputs_survive_the_json_round_trip():
    images = np.random.default_rng(1).random((2, 2, 2, 3), dtype=np.float32)
    signature = ImageSignature("s", TensorSpec("x", DataType.DT_FLOAT, (-1, 2, 2, 3)), InputKind.FLOAT32, "p", None)
    sent = np.asarray(json.loads(predict_body(signature, images))["inputs"]["x"], dtype=np.float32)
    np.testing.assert_array_equal(sent, images)


def test_labels_are_left_undecoded_when_not_wanted():
    outputs = predict_outputs(PIXELS, {"outputs": {"scores": [[1.0]], "classes": [["cat"]]}}, with_labels=False)
    assert list(outputs) == ["scores"]


def test_string_outputs_may_come_as_b64():
    outputs = predict_outputs(PIXELS, {"outputs": {"scores": [[1.0]], "classes": [[{"b64": "Y2F0"}]]}})
    assert outputs["classes"].tolist() == [[b"cat"]]


@pytest.mark.parametrize("status, error, code", [
    (400, ModelRejectedInput, grpc.StatusCode.INVALID_ARGUMENT),
    (401, ModelServerRefused, grpc.StatusCode.UNAUTHENTICATED),
    (403, ModelServerRefused, grpc.StatusCode.PERMISSION_DENIED),
    (404, ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (429, ModelServerUnavailable, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (500, ModelServerError, grpc.StatusCode.INTERNAL),
    (501, ModelServerRefused, grpc.StatusCode.UNIMPLEMENTED),
    (502, ModelServerUnavailable, grpc.StatusCode.UNAVAILABLE),
    (503, ModelServerUnavailable, grpc.StatusCode.UNAVAILABLE),
    (504, ModelServerUnavailable, grpc.StatusCode.DEADLINE_EXCEEDED),
    (418, ModelServerError, None),
])
def test_error_statuses_map_onto_the_grpc_failure_classes(tfs, status, error, code):
    tfs.reply(status, {"error": "Servable not found for request: Latest(digits)"})
    with backend(tfs.url) as rest, pytest.raises(ModelServerError) as raised:
        rest.predict_images(PIXELS, np.zeros((1, 2, 2, 3), np.uint8))
    assert type(raised.value) is error and raised.value.code == code
    assert f"(HTTP {status}): Servable not found for request: Latest(digits)" in str(raised.value)


def test_a_proxy_page_is_shown_in_short():
    failure = http_error(502, b"<html>" + b"x" * 5000 + b"</html>", "Predict")
    assert isinstance(failure, ModelServerUnavailable) and len(str(failure)) < MAX_MESSAGE_CHARS + 50


def test_an_unreachable_server_is_unavailable(tfs):
    url = tfs.url
    tfs.shutdown()
    tfs.server_close()
    with backend(url, timeout=2) as rest, pytest.raises(ModelServerUnavailable) as raised:
        rest.status()
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_the_deadline_holds_against_a_server_trickling_its_answer(tfs):
    # A byte every 50 ms never trips the per-read timeout (also the 1 s deadline), and the whole answer would take
    # 10 s: only the wall-clock deadline can end the call, and at 1 s.
    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "200")
        handler.end_headers()
        try:
            for _ in range(200):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass
        return 0, b""

    tfs.answer = trickle
    with backend(tfs.url, timeout=1.0) as rest:
        started = time.monotonic()
        with pytest.raises(ModelServerUnavailable) as raised:
            rest.status()
        took = time.monotonic() - started
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.9 <= took < 2.0


def test_calls_reuse_one_keep_alive_connection(tfs):
    tfs.reply(200, STATUS)
    with backend(tfs.url) as rest:
        for _ in range(5):
            rest.status()
    assert len(tfs.requests) == 5 and tfs.connections == 1


def test_credentials_in_the_url_become_basic_auth_and_are_never_shown(tfs):
    tfs.reply(503, {"error": "overloaded"})
    with backend(tfs.url.replace("http://", "http://user:s3cret@") + "/prefix/") as rest:
        assert "s3cret" not in rest.address and "user" not in rest.address
        with pytest.raises(ModelServerUnavailable) as raised:
            rest.status()
    _, path, _, headers = tfs.requests[0]
    assert path == "/prefix/v1/models/digits"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert "s3cret" not in str(raised.value)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=5).flatmap(
    lambda shape: st.lists(st.integers(0, 255), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))
    .map(lambda values: np.array(values, dtype=np.uint8).reshape(shape))))
def test_pixels_go_as_the_json_of_their_nested_lists(pixels):
    assert json.loads(uint8_json(pixels)) == pixels.tolist()


@pytest.mark.parametrize("array", [np.zeros((0, 2, 2, 3), np.uint8), np.float32([[0.5, 1.25]]), np.uint8(7)],
                         ids=["empty", "float32", "scalar"])
def test_other_arrays_go_as_orjson_writes_them(array):
    assert json.loads(uint8_json(array)) == array.tolist()


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=20)


@given(st.dictionaries(st.sampled_from(["outputs", "error", "predictions"]), JSON_VALUES))
def test_any_predict_answer_gives_arrays_or_a_model_server_error(answer):
    try:
        outputs = predict_outputs(PIXELS, answer)
    except ModelServerError:
        return
    assert all(isinstance(value, np.ndarray) for value in outputs.values())


@given(st.binary(max_size=2000))
def test_any_error_body_gives_a_short_one_line_message(body):
    message = error_message(body)
    assert message and len(message) <= MAX_MESSAGE_CHARS and "\n" not in message
