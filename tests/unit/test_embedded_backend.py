"""bridge.model.embedded_backend on tiny .tflite models (tests/unit/tflite_models.py, made by TensorFlow in a
subprocess once per session): the signature, predictions against numpy, batch sizes, threads, errors, and
LiteRT beside the bridge's protos in one process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from bridge.config import parse_settings
from bridge.errors import ConfigError, ModelRejectedInput, ModelServerError, ModelServerUnavailable, SignatureError
from bridge.model.backend import ModelTarget, Prediction, open_backend
from bridge.model.embedded_backend import INSTALL_HINT, EmbeddedBackend
from bridge.model.signature import ImageSignature, InputKind, TensorSpec
from bridge.model.tensors import DataType
from tests.unit.tflite_models import LABELS, PROJECT_ROOT, SIZE, expected_scores, make_models

TARGET = ModelTarget("tiny")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_models(tmp_path_factory.mktemp("tflite"))


@pytest.fixture
def linear(models: Path) -> Iterator[EmbeddedBackend]:
    backend = EmbeddedBackend(models / "linear.tflite", TARGET, instances=3)
    yield backend
    backend.close()


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def assert_answers(prediction: Prediction, batch: np.ndarray) -> None:
    np.testing.assert_allclose(prediction.outputs["scores"], expected_scores(batch), atol=1e-5)


# --- what the file says ------------------------------------------------------------------------------------------

def test_the_signature_is_read_from_the_file(models, linear):
    assert linear.address == str(models / "linear.tflite")
    assert linear.signature() == ImageSignature(
        "serving_default", TensorSpec("images", DataType.DT_UINT8, (-1, SIZE, SIZE, 3)), InputKind.UINT8,
        "scores", "classes")
    floats = EmbeddedBackend(models / "float.tflite", TARGET)
    assert floats.signature() == ImageSignature(
        "serving_default", TensorSpec("pixels", DataType.DT_FLOAT, (-1, SIZE, SIZE, 3)), InputKind.FLOAT32,
        "probabilities", None)


def test_a_model_the_bridge_cannot_feed_is_a_signature_error(models):
    with pytest.raises(SignatureError, match=r"values DT_FLOAT \[-1,4\] must be \[N, H, W, 3\]"):
        EmbeddedBackend(models / "vector.tflite", TARGET).signature()


def test_the_file_is_the_targets_one_available_version(models, linear):
    assert [(s.version, s.state) for s in linear.status()] == [(1, "AVAILABLE")]
    seven = EmbeddedBackend(models / "linear.tflite", ModelTarget("tiny", version=7))
    assert [(s.version, s.state) for s in seven.status()] == [(7, "AVAILABLE")]
    assert seven.predict_images(seven.signature(), images(1)).model_version == 7


# --- predictions -------------------------------------------------------------------------------------------------

def test_predict_gives_the_models_scores_and_labels(linear):
    batch = images(6)
    prediction = linear.predict_images(linear.signature(), batch)
    assert (prediction.model_name, prediction.model_version, prediction.signature_name) == ("tiny", 1,
                                                                                           "serving_default")
    assert sorted(prediction.outputs) == ["classes", "scores"]
    assert prediction.outputs["scores"].dtype == np.float32
    assert_answers(prediction, batch)
    assert prediction.outputs["classes"].tolist() == [[label.encode() for label in LABELS]] * 6


def test_without_labels_only_the_scores_come_back(linear):
    prediction = linear.predict_images(linear.signature(), images(2), with_labels=False)
    assert list(prediction.outputs) == ["scores"]


def test_batch_sizes_vary_from_call_to_call(models):
    backend = EmbeddedBackend(models / "linear.tflite", TARGET)  # one interpreter, resized for each batch
    for count in (1, 5, 2, 32, 1, 7):
        batch = images(count, seed=count)
        assert_answers(backend.predict_images(backend.signature(), batch), batch)


def test_a_float_input_model(models):
    backend = EmbeddedBackend(models / "float.tflite", TARGET)
    batch = images(3)
    prediction = backend.predict_images(backend.signature(), batch.astype(np.float32) / 255.0)
    np.testing.assert_allclose(prediction.outputs["probabilities"], expected_scores(batch), atol=1e-5)


def test_concurrent_calls_each_get_their_own_answer(linear):
    signature = linear.signature()
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def work(thread: int) -> None:
        start.wait()
        try:
            for call in range(25):
                batch = images(1 + (thread + call) % 9, seed=thread * 100 + call)
                assert_answers(linear.predict_images(signature, batch), batch)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]
    assert linear._created <= 3  # interpreters made as calls needed them, never more than instances


# --- failures ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [
    images(2).astype(np.float32),  # wrong dtype
    np.zeros((2, SIZE + 1, SIZE, 3), np.uint8),  # wrong image size
    np.zeros((SIZE, SIZE, 3), np.uint8),  # no batch dimension
], ids=["dtype", "size", "rank"])
def test_a_bad_input_is_rejected_as_invalid_argument(linear, batch):
    with pytest.raises(ModelRejectedInput, match=r"INVALID_ARGUMENT: input 'images' must be DT_UINT8 \[-1,8,8,3\]") \
            as caught:
        linear.predict_images(linear.signature(), batch)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert_answers(linear.predict_images(linear.signature(), images(2)), images(2))  # the interpreters still work


def test_encoded_bytes_for_a_pixel_signature_are_a_signature_error(linear):
    with pytest.raises(SignatureError, match="takes a pixel array"):
        linear.predict_images(linear.signature(), [b"\x89PNG"])


def test_a_litert_failure_is_internal(linear, monkeypatch):
    def broken(**inputs: np.ndarray) -> dict:
        raise RuntimeError("tensorflow/lite/kernels/softmax.cc:\nNode number 3 (SOFTMAX) failed to invoke.")

    monkeypatch.setattr(linear, "_borrow", lambda timeout: broken)
    with pytest.raises(ModelServerError, match=r"INTERNAL: LiteRT: .* Node number 3 \(SOFTMAX\) failed") as caught:
        linear.predict_images(linear.signature(), images(1))
    assert type(caught.value) is ModelServerError and caught.value.code == grpc.StatusCode.INTERNAL


def test_a_call_waits_at_most_its_timeout_for_a_busy_interpreter(models):
    backend = EmbeddedBackend(models / "linear.tflite", TARGET, instances=1)
    busy = backend._borrow(None)  # the only interpreter, as a running call holds it
    with pytest.raises(ModelServerUnavailable, match="DEADLINE_EXCEEDED") as caught:
        backend.predict_images(backend.signature(), images(1), timeout=0.05)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    backend._give_back(busy)
    assert_answers(backend.predict_images(backend.signature(), images(1), timeout=0.05), images(1))


def test_a_closed_backend_fails_calls_as_cancelled(linear):
    linear.close()
    for _ in range(2):
        with pytest.raises(ModelServerUnavailable, match="closed") as caught:
            linear.predict_images(linear.signature(), images(1))
        assert caught.value.code == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("content, reason", [
    (None, "No such file or directory"),
    (b"", "cannot load model file"),
    (b"not a flatbuffer at all" * 10, "cannot load model file"),
], ids=["missing", "empty", "garbage"])
def test_a_file_that_does_not_load_is_a_one_line_config_error(tmp_path, content, reason):
    path = tmp_path / "model.tflite"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=reason) as caught:
        EmbeddedBackend(path, TARGET)
    message = str(caught.value)
    assert message.startswith(f"cannot load model file {path}: ") and "\n" not in message and len(message) < 400


def test_a_missing_signature_is_a_config_error(models):
    with pytest.raises(ConfigError, match=r"linear.tflite has no signature 'float'; it has serving_default$"):
        EmbeddedBackend(models / "linear.tflite", ModelTarget("tiny", signature_name="float"))


def test_a_version_label_is_a_config_error(models):
    with pytest.raises(ConfigError, match="no version labels"):
        EmbeddedBackend(models / "linear.tflite", ModelTarget("tiny", version_label="stable"))


def test_without_ai_edge_litert_the_error_says_what_to_install(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # makes the import fail
    with pytest.raises(ConfigError) as caught:
        EmbeddedBackend(models / "linear.tflite", TARGET)
    assert str(caught.value) == INSTALL_HINT


def test_model_server_naming_a_tflite_file_opens_the_embedded_backend(models):
    path = models / "linear.tflite"
    settings = parse_settings(["--model-server", str(path), "--max-in-flight", "3"], {})
    backend = open_backend(settings)
    assert isinstance(backend, EmbeddedBackend)
    # An interpreter per call in flight, but no more than there are cores.
    assert backend.address == str(path) and backend._instances == min(3, os.cpu_count() or 1)


# --- one process, two copies of protobuf's well-known types ------------------------------------------------------

COEXISTENCE = """
import sys

def litert():
    from ai_edge_litert.interpreter import Interpreter

def bridge_protos():
    from bridge.tfs_api import get_model_metadata_pb2, predict_pb2

for load in sys.argv[2].split(","):
    {"litert": litert, "bridge": bridge_protos}[load]()

from concurrent import futures

import grpc
import numpy as np
from google.protobuf import any_pb2
from bridge.model.backend import ModelTarget
from bridge.model.embedded_backend import EmbeddedBackend
from bridge.model.predict_request import predict_request_bytes
from bridge.model.tensors import to_array
from bridge.tfs_api import get_model_metadata_pb2, meta_graph_pb2, predict_pb2

backend = EmbeddedBackend(__import__("pathlib").Path(sys.argv[1]), ModelTarget("tiny"))
signature = backend.signature()
pixels = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
scores = backend.predict_images(signature, pixels).outputs["scores"]

request = predict_pb2.PredictRequest.FromString(
    predict_request_bytes(ModelTarget("tiny").spec(), "images", pixels, ["scores"]))
assert request.model_spec.name == "tiny" and list(request.output_filter) == ["scores"]
assert (to_array(request.inputs["images"]) == pixels).all()

signatures = get_model_metadata_pb2.SignatureDefMap(signature_def={"serving_default": meta_graph_pb2.SignatureDef()})
packed = any_pb2.Any()
packed.Pack(signatures)
unpacked = get_model_metadata_pb2.SignatureDefMap()
assert packed.Unpack(unpacked) and list(unpacked.signature_def) == ["serving_default"]

def predict(request, context):
    return predict_pb2.PredictResponse(model_spec=request.model_spec)

server = grpc.server(futures.ThreadPoolExecutor(2))
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
    "Predict": grpc.unary_unary_rpc_method_handler(predict, predict_pb2.PredictRequest.FromString,
                                                   predict_pb2.PredictResponse.SerializeToString)})])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                               predict_pb2.PredictRequest.SerializeToString, predict_pb2.PredictResponse.FromString)
    assert call(request, timeout=10).model_spec.name == "tiny"
server.stop(None)

litert_protos = sorted(name for name in sys.modules if name.startswith("ai_edge_litert.") and name.endswith("_pb2"))
print(scores.shape, "tensorflow" in sys.modules, litert_protos)
"""


@pytest.mark.parametrize("order", ["litert,bridge", "bridge,litert"])
def test_litert_and_the_bridges_protos_work_in_one_process(models, order):
    result = subprocess.run([sys.executable, "-c", COEXISTENCE, str(models / "linear.tflite"), order], check=False,
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[0] == "(2, 5) False []"  # no TensorFlow, none of LiteRT's protobuf copies
