"""The Open Inference Protocol backend against an in-process gRPC servicer that answers as scripted: what it
sends (raw batch, datatypes, shapes, pinned version, requested outputs), how it reads raw and typed answers, and how
status codes become the bridge's errors. Real servers (MLServer, KServe) are in tests/integration/test_oip.py."""

from concurrent import futures

import grpc
import numpy as np
import pytest

from bridge.errors import ConfigError, ModelNotFound, ModelRejectedInput, ModelServerError, ModelServerUnavailable
from bridge.model.backend import ModelTarget
from bridge.model.oip_backend import OipBackend
from bridge.model.oip_tensors import encode_bytes
from bridge.model.signature import InputKind
from bridge.oip_api import open_inference_pb2 as oip
from bridge.oip_api import open_inference_pb2_grpc

Tensor = oip.ModelMetadataResponse.TensorMetadata


class ScriptedServer(open_inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self):
        self.live = self.ready = self.model_ready = True
        self.requests = []
        self.versions = ["1", "2"]
        self.inputs = [Tensor(name="images", datatype="UINT8", shape=[-1, 32, 32, 3])]
        self.raw = True
        self.fail = None  # (code, details) for ModelInfer
        self.answer = None  # a ModelInferResponse to send as it is

    def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=self.live)

    def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=self.ready)

    def ModelReady(self, request, context):
        self.requests.append(request)
        return oip.ModelReadyResponse(ready=self.model_ready)

    def ModelMetadata(self, request, context):
        if request.name != "digits":
            context.abort(grpc.StatusCode.NOT_FOUND, f"Model {request.name} not found")
        return oip.ModelMetadataResponse(name="digits", versions=self.versions, platform="litert", inputs=self.inputs,
                                         outputs=[Tensor(name="scores", datatype="FP32", shape=[-1, 10]),
                                                  Tensor(name="classes", datatype="BYTES", shape=[-1, 10])])

    def ModelInfer(self, request, context):
        self.requests.append(request)
        if self.fail:
            context.abort(*self.fail)
        if self.answer is not None:
            return self.answer
        n = request.inputs[0].shape[0]
        scores = np.tile(np.eye(10, dtype="<f4")[7], (n, 1))
        labels = [str(d).encode() for d in range(10)] * n
        response = oip.ModelInferResponse(model_name="digits", model_version="2")
        response.outputs.add(name="scores", datatype="FP32", shape=[n, 10])
        response.outputs.add(name="classes", datatype="BYTES", shape=[n, 10])
        if self.raw:
            response.raw_output_contents.extend([scores.tobytes(), encode_bytes(labels)])
        else:
            response.outputs[0].contents.fp32_contents.extend(scores.ravel().tolist())
            response.outputs[1].contents.bytes_contents.extend(labels)
        return response


@pytest.fixture
def server():
    scripted = ScriptedServer()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(2))
    open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(scripted, grpc_server)
    scripted.port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield scripted
    grpc_server.stop(None)


def backend(server, **target):
    return OipBackend(f"127.0.0.1:{server.port}", ModelTarget("digits", **target), timeout=5)


def test_a_ready_model_is_available_in_each_listed_version_or_the_pinned_one(server):
    assert [(s.version, s.state) for s in backend(server).status()] == [(1, "AVAILABLE"), (2, "AVAILABLE")]
    assert [(s.version, s.state) for s in backend(server, version=2).status()] == [(2, "AVAILABLE")]
    assert server.requests[-1].version == "2"  # ModelReady asked about the pinned version, as a string
    server.model_ready = False
    assert [s.state for s in backend(server, version=2).status()] == ["NOT_READY"]
    server.model_ready, server.ready = True, False
    assert [s.state for s in backend(server).status()] == ["NOT_READY"]


def test_a_server_that_is_not_live_is_unavailable(server):
    server.live = False
    with pytest.raises(ModelServerUnavailable, match="not live"):
        backend(server).status()


def test_the_signature_comes_from_model_metadata(server):
    signature = backend(server).signature()
    assert signature.input_kind is InputKind.UINT8 and signature.image_size == (32, 32)
    assert (signature.scores_output, signature.labels_output) == ("scores", "classes")
    server.inputs = [Tensor(name="image_bytes", datatype="BYTES", shape=[-1])]
    assert backend(server).signature().input_kind is InputKind.ENCODED


@pytest.mark.parametrize("raw", [True, False])
def test_a_batch_goes_raw_and_the_answer_is_read_raw_or_typed(server, raw):
    server.raw = raw
    client = backend(server, version=2)
    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    prediction = client.predict_images(client.signature(), images)
    [request] = [r for r in server.requests if isinstance(r, oip.ModelInferRequest)]
    assert request.model_name == "digits" and request.model_version == "2"
    assert (request.inputs[0].name, request.inputs[0].datatype, list(request.inputs[0].shape)) == (
        "images", "UINT8", [2, 32, 32, 3])
    assert request.raw_input_contents == [images.tobytes()]
    assert [o.name for o in request.outputs] == ["scores", "classes"]
    assert prediction.model_version == 2
    assert prediction.outputs["scores"].argmax(axis=1).tolist() == [7, 7]
    assert prediction.outputs["classes"][1, 7] == b"7"


def test_encoded_images_go_as_length_prefixed_bytes(server):
    server.inputs = [Tensor(name="image_bytes", datatype="BYTES", shape=[-1])]
    client = backend(server)
    client.predict_images(client.signature(), [b"png-1", b"jpeg"], with_labels=False)
    request = server.requests[-1]
    assert (request.inputs[0].datatype, list(request.inputs[0].shape)) == ("BYTES", [2])
    assert request.raw_input_contents == [encode_bytes([b"png-1", b"jpeg"])]
    assert [o.name for o in request.outputs] == ["scores"]


@pytest.mark.parametrize("code, kind", [
    (grpc.StatusCode.INVALID_ARGUMENT, ModelRejectedInput),
    (grpc.StatusCode.NOT_FOUND, ModelNotFound),
    (grpc.StatusCode.UNAVAILABLE, ModelServerUnavailable),
])
def test_failures_are_sorted_by_their_status_code(server, code, kind):
    client = backend(server)
    signature = client.signature()
    server.fail = (code, "scripted")
    with pytest.raises(kind, match="ModelInfer.*scripted"):
        client.predict_images(signature, np.zeros((1, 32, 32, 3), np.uint8))


def test_an_unknown_model_is_not_found(server):
    with pytest.raises(ModelNotFound):
        OipBackend(f"127.0.0.1:{server.port}", ModelTarget("nope"), timeout=5).signature()


def test_a_malformed_answer_is_the_servers_failure_not_the_images(server):
    client = backend(server)
    signature = client.signature()
    server.answer = oip.ModelInferResponse(outputs=[oip.ModelInferResponse.InferOutputTensor(
        name="scores", datatype="FP32", shape=[1, 10])], raw_output_contents=[b"\x00" * 12])
    with pytest.raises(ModelServerError, match="malformed answer") as failed:
        client.predict_images(signature, np.zeros((1, 32, 32, 3), np.uint8))
    assert failed.value.code is grpc.StatusCode.INTERNAL and not isinstance(failed.value, ModelRejectedInput)


def test_the_protocol_has_no_version_labels():
    with pytest.raises(ConfigError, match="no version labels"):
        OipBackend("127.0.0.1:1", ModelTarget("digits", version_label="stable"))
