"""The Open Inference Protocol (KServe v2) over gRPC as a model backend: Triton, KServe, MLServer, OpenVINO Model
Server and Seldon Core 2 all serve it.

Readiness is ServerLive, ServerReady and ModelReady (the model name, and the version as a string when one is pinned);
the signature is ModelMetadata's inputs and outputs, read by the same image-signature rules as TF Serving's; a batch
goes to ModelInfer in raw_input_contents. Failures carry the call's gRPC status code, sorted by
bridge.model.backend like TF Serving's. Versions are integers here, as Triton numbers them: a server whose version
names are not numbers is called unpinned and answers with version 0 in the results.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from bridge.errors import ConfigError, ModelServerError, ModelServerUnavailable, SignatureError
from bridge.model import oip_tensors
from bridge.model.backend import ModelTarget, Prediction, VersionStatus
from bridge.model.grpc_backend import CHANNEL_OPTIONS, rpc_error
from bridge.model.servers import ROUND_ROBIN, channel_target
from bridge.model.signature import ImageSignature, InputKind
from bridge.ops.tracing import outgoing_headers
from bridge.oip_api import open_inference_pb2 as oip
from bridge.oip_api import open_inference_pb2_grpc
from bridge.tfs_api import meta_graph_pb2, tensor_shape_pb2

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def signature_def(metadata: oip.ModelMetadataResponse) -> meta_graph_pb2.SignatureDef:
    """ModelMetadata's inputs and outputs as the SignatureDef the image-signature rules read."""

    def info(tensor: oip.ModelMetadataResponse.TensorMetadata) -> meta_graph_pb2.TensorInfo:
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in tensor.shape]
        return meta_graph_pb2.TensorInfo(name=tensor.name, dtype=oip_tensors.data_type(tensor.datatype),
                                         tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims))

    return meta_graph_pb2.SignatureDef(inputs={t.name: info(t) for t in metadata.inputs},
                                       outputs={t.name: info(t) for t in metadata.outputs})


def _version(text: str) -> int:
    return int(text) if text.isascii() and text.isdigit() else 0


class OipBackend:
    """Talks to one or several Open Inference Protocol servers' gRPC API about one model. Thread-safe."""

    def __init__(self, address: str, target: ModelTarget, *, timeout: float = 10.0,
                 credentials: grpc.ChannelCredentials | None = None, channel: grpc.Channel | None = None) -> None:
        """ConfigError for a version label: the protocol has none."""
        if target.version_label:
            raise ConfigError(f"the Open Inference Protocol has no version labels (got {target.version_label!r}); "
                              "set a model version instead")
        self.address = address
        self.target = target
        self.timeout = timeout
        self._pinned = "" if target.version is None else str(target.version)
        if channel is None:
            options = (*CHANNEL_OPTIONS, ROUND_ROBIN)
            endpoint = channel_target(address)
            channel = (grpc.secure_channel(endpoint, credentials, options=options) if credentials
                       else grpc.insecure_channel(endpoint, options=options))
        self._channel = channel
        self._service = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        # ModelInfer on requests serialized here, so the batch's bytes are copied once.
        self._infer_bytes = channel.unary_unary(INFER_METHOD, request_serializer=None,
                                                response_deserializer=oip.ModelInferResponse.FromString)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> OipBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, name: str, request: object, timeout: float | None) -> object:
        try:
            return getattr(self._service, name)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc, f"{name} for {self.target.describe()} at {self.address}") from None

    def status(self, timeout: float | None = None) -> list[VersionStatus]:
        """The target version's state: AVAILABLE once the server is live and ready and ModelReady says so, else
        NOT_READY. ModelServerUnavailable if the server is not live. Unpinned: the numbered versions ModelMetadata
        lists (version 0 if none is a number)."""
        if not self._call("ServerLive", oip.ServerLiveRequest(), timeout).live:
            raise ModelServerUnavailable(f"ServerLive at {self.address}: the server is not live",
                                         grpc.StatusCode.UNAVAILABLE)
        ready = (self._call("ServerReady", oip.ServerReadyRequest(), timeout).ready
                 and self._call("ModelReady", oip.ModelReadyRequest(name=self.target.name, version=self._pinned),
                                timeout).ready)
        state = "AVAILABLE" if ready else "NOT_READY"
        if self.target.version is not None:
            return [VersionStatus(self.target.version, state)]
        listed = self._metadata(timeout).versions if ready else []
        return [VersionStatus(v, state) for v in sorted({_version(v) for v in listed}) or [0]]

    def _metadata(self, timeout: float | None) -> oip.ModelMetadataResponse:
        return self._call("ModelMetadata", oip.ModelMetadataRequest(name=self.target.name, version=self._pinned),
                          timeout)

    def signature(self, timeout: float | None = None) -> ImageSignature:
        """The model's inputs and outputs from ModelMetadata, read as an image signature."""
        return ImageSignature.from_proto(self.target.signature_name, signature_def(self._metadata(timeout)))

    def predict_images(self, signature: ImageSignature, images: np.ndarray | Sequence[bytes],
                       with_labels: bool = True, timeout: float | None = None) -> Prediction:
        """ModelInfer on a batch shaped for `signature`: pixels as UINT8 or FP32 [N, H, W, 3], or encoded images as
        BYTES [N]. with_labels=False asks only for the scores output."""
        request = oip.ModelInferRequest(model_name=self.target.name, model_version=self._pinned)
        tensor = request.inputs.add(name=signature.input.name)
        if signature.input_kind is InputKind.ENCODED:
            if isinstance(images, np.ndarray):
                raise SignatureError(f"signature {signature.name!r} takes encoded image bytes, not pixels")
            tensor.datatype, blob = oip_tensors.BYTES, oip_tensors.encode_bytes(images)
            tensor.shape.append(len(images))
        else:
            if not isinstance(images, np.ndarray):
                raise SignatureError(f"signature {signature.name!r} takes a pixel array, not encoded bytes")
            batch = np.ascontiguousarray(images)
            tensor.datatype, blob = oip_tensors.datatype_of(batch), batch.tobytes()
            tensor.shape.extend(batch.shape)
        wanted = [signature.scores_output]
        if with_labels and signature.labels_output:
            wanted.append(signature.labels_output)
        for name in wanted:
            request.outputs.add(name=name)
        request.raw_input_contents.append(blob)
        try:
            response = self._infer_bytes(request.SerializeToString(), timeout=timeout or self.timeout,
                                         metadata=outgoing_headers() or None)
        except grpc.RpcError as exc:
            raise rpc_error(exc, f"ModelInfer on {self.target.describe()}") from None
        return Prediction(self._outputs(response), response.model_name or self.target.name,
                          _version(response.model_version), self.target.signature_name)

    def _outputs(self, response: oip.ModelInferResponse) -> dict[str, np.ndarray]:
        """Each output as an array, from raw_output_contents when the server sent them, else typed contents."""
        raw = response.raw_output_contents
        if raw and len(raw) != len(response.outputs):
            raise self._malformed(f"{len(raw)} raw contents for {len(response.outputs)} outputs")
        arrays = {}
        for index, output in enumerate(response.outputs):
            try:
                arrays[output.name] = (oip_tensors.from_raw(output.datatype, output.shape, raw[index]) if raw
                                       else oip_tensors.from_contents(output.datatype, output.shape, output.contents))
            except oip_tensors.MalformedTensor as exc:
                raise self._malformed(f"output {output.name!r}: {exc}") from None
        return arrays

    def _malformed(self, detail: str) -> ModelServerError:
        return ModelServerError(f"ModelInfer on {self.target.describe()}: INTERNAL: malformed answer: {detail}",
                                grpc.StatusCode.INTERNAL)
