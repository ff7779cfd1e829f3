"""TF Serving's gRPC API as a model backend: model status, the serving signature, and Predict on a batch of images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from bridge.errors import ModelServerError, SignatureError
from bridge.model import tensors
from bridge.model.backend import (ModelTarget, Prediction, VersionStatus, model_server_error,
                                  signature_from_metadata)
from bridge.model.predict_request import predict_request_bytes
from bridge.ops.tracing import outgoing_headers
from bridge.model.servers import ROUND_ROBIN, channel_target
from bridge.model.signature import ImageSignature, InputKind
from bridge.tfs_api import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                            prediction_service_pb2_grpc)

# TF Serving accepts messages up to 2 GiB; Python gRPC's default of 4 MB would reject a batch of big images.
MAX_MESSAGE_BYTES = 2**31 - 1
# gRPC's reconnect backoff grows to 120 s by default: after a 10 s outage the bridge found the server back
# only 10 s after it was (scripts/benchmark.py --backends, outages). Capped, reconnecting costs a few attempts.
MAX_RECONNECT_BACKOFF_MS = 1000
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
)
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE



def rpc_error(exc: grpc.RpcError, what: str) -> ModelServerError:
    """Map a gRPC failure onto the bridge's exception tree, keeping the server's message."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    return model_server_error(code, f"{what}: {name}: {details}")


class GrpcBackend:
    """Talks to TF Serving's gRPC API (one or several servers) about one model. Thread-safe (gRPC channels are)."""

    def __init__(self, address: str, target: ModelTarget, *, timeout: float = 10.0,
                 credentials: grpc.ChannelCredentials | None = None,
                 channel: grpc.Channel | None = None) -> None:
        self.address = address
        self.target = target
        self.timeout = timeout
        if channel is None:
            target, options = channel_target(address), (*CHANNEL_OPTIONS, ROUND_ROBIN)
            channel = (grpc.secure_channel(target, credentials, options=options) if credentials
                       else grpc.insecure_channel(target, options=options))
        self._channel = channel
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        # Predict on requests already serialized (predict_request.predict_request_bytes): no serializer.
        self._predict_bytes = channel.unary_unary(PREDICT_METHOD, request_serializer=None,
                                                  response_deserializer=predict_pb2.PredictResponse.FromString)
        self._models = model_service_pb2_grpc.ModelServiceStub(channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def status(self, timeout: float | None = None) -> list[VersionStatus]:
        """GetModelStatus for the target's model (and version or label, if set)."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self.target.spec(with_signature=False))
        try:
            response = self._models.GetModelStatus(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc, f"GetModelStatus for {self.target.describe()} at {self.address}") from None
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [VersionStatus(s.version, state_name(s.state), s.status.error_message)
                for s in response.model_version_status]

    def is_available(self, timeout: float | None = None) -> bool:
        """True when some version of the model is AVAILABLE; False when the server is unreachable, loading, or
        does not know the model (yet)."""
        try:
            return any(status.state == "AVAILABLE" for status in self.status(timeout))
        except ModelServerError:
            return False

    def signature(self, timeout: float | None = None) -> ImageSignature:
        """The target's serving signature, from GetModelMetadata(signature_def)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self.target.spec(with_signature=False), metadata_field=["signature_def"])
        try:
            response = self._predictions.GetModelMetadata(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc, f"GetModelMetadata for {self.target.describe()} at {self.address}") from None
        return signature_from_metadata(response, self.target)

    def predict(self, inputs: Mapping[str, np.ndarray | Sequence[bytes]], output_filter: Sequence[str] = (),
                timeout: float | None = None) -> Prediction:
        """Predict with named inputs: numeric arrays go as tensor_content, lists of bytes as DT_STRING."""
        request = predict_pb2.PredictRequest(model_spec=self.target.spec(), output_filter=list(output_filter))
        for name, value in inputs.items():
            proto = tensors.from_array(value) if isinstance(value, np.ndarray) else tensors.from_bytes_list(value)
            request.inputs[name].CopyFrom(proto)
        return self._answer(self._predictions.Predict, request, timeout)

    def predict_images(self, signature: ImageSignature, images: np.ndarray | Sequence[bytes],
                       with_labels: bool = True, timeout: float | None = None) -> Prediction:
        """Predict on a batch shaped for `signature`: an [N, H, W, 3] array, or encoded images for ENCODED.

        with_labels=False asks only for the scores output."""
        if signature.input_kind is InputKind.ENCODED:
            if isinstance(images, np.ndarray):
                raise SignatureError(f"signature {signature.name!r} takes encoded image bytes, not pixels")
        elif not isinstance(images, np.ndarray):
            raise SignatureError(f"signature {signature.name!r} takes a pixel array, not encoded bytes")
        wanted = [signature.scores_output]
        if with_labels and signature.labels_output:
            wanted.append(signature.labels_output)
        request = predict_request_bytes(self.target.spec(), signature.input.name, images, wanted)
        return self._answer(self._predict_bytes, request, timeout)

    def _answer(self, call: grpc.UnaryUnaryMultiCallable, request: object, timeout: float | None) -> Prediction:
        try:
            response = call(request, timeout=timeout or self.timeout, metadata=outgoing_headers() or None)
        except grpc.RpcError as exc:
            raise rpc_error(exc, f"Predict on {self.target.describe()}") from None
        return Prediction(
            outputs={name: tensors.to_array(proto) for name, proto in response.outputs.items()},
            model_name=response.model_spec.name or self.target.name,
            model_version=response.model_spec.version.value,
            signature_name=response.model_spec.signature_name or self.target.signature_name,
        )
