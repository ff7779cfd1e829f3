"""The model backend seam: what the bridge asks of a model, and which backend --model-server chooses.

Every backend answers the same four questions (status, signature, Predict on a batch, close) and reports a failed
call as one of the ModelServerError classes, with the canonical status code that names it (grpc.StatusCode, the
codes TF Serving's REST statuses come from too). The predictor turns those into per-image dead letters or a
server-wide pause (bridge.model.predictor); no backend decides that itself.

--model-server chooses the backend:

| value                                         | backend                                   |
|-----------------------------------------------|-------------------------------------------|
| HOST:PORT, a list of them, dns:///NAME:PORT, grpc://HOST:PORT | TF Serving's gRPC API (grpc_backend) |
| http://HOST:PORT or https://HOST[:PORT][/PREFIX] | TF Serving's REST API (rest_backend)   |
| a path ending in .tflite                      | the model inside the bridge, with LiteRT (embedded_backend) |
| oip://HOST:PORT (or a list, or oip://dns:///NAME:PORT) | the Open Inference Protocol's gRPC API (oip_backend) |
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import grpc
import numpy as np

from bridge.errors import (ModelNotFound, ModelRejectedInput, ModelServerError, ModelServerRefused,
                           ModelServerUnavailable, SignatureError)
from bridge.model.servers import valid_model_servers
from bridge.model.signature import ImageSignature
from bridge.tfs_api import get_model_metadata_pb2, model_pb2

if TYPE_CHECKING:
    from bridge.config import Settings

GRPC_SCHEME = "grpc://"
OIP_SCHEME = "oip://"
TFLITE_SUFFIX = ".tflite"


@dataclass(frozen=True)
class ModelTarget:
    """Which model, version and signature to call. version and version_label are exclusive."""

    name: str
    version: int | None = None
    version_label: str | None = None
    signature_name: str = "serving_default"

    def spec(self, with_signature: bool = True) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.name)
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label:
            spec.version_label = self.version_label
        if with_signature:
            spec.signature_name = self.signature_name
        return spec

    def describe(self) -> str:
        version = (f" version {self.version}" if self.version is not None
                   else f" label {self.version_label}" if self.version_label else "")
        return f"model {self.name!r}{version} signature {self.signature_name!r}"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # AVAILABLE, LOADING, ...
    error: str = ""


@dataclass(frozen=True)
class Prediction:
    """One Predict answer: outputs by name, and which model version answered."""

    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: int
    signature_name: str


# What a failed call's canonical code says about the model server; the predictor acts on the class.
ERROR_CLASSES: dict[grpc.StatusCode, type[ModelServerError]] = {
    grpc.StatusCode.UNAVAILABLE: ModelServerUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ModelServerUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: ModelServerUnavailable,
    grpc.StatusCode.CANCELLED: ModelServerUnavailable,
    grpc.StatusCode.ABORTED: ModelServerUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: ModelServerRefused,
    grpc.StatusCode.PERMISSION_DENIED: ModelServerRefused,
    grpc.StatusCode.UNIMPLEMENTED: ModelServerRefused,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: ModelRejectedInput,
}


def model_server_error(code: grpc.StatusCode | None, message: str) -> ModelServerError:
    """The ModelServerError class a canonical status code stands for (ModelServerError itself if none)."""
    return ERROR_CLASSES.get(code, ModelServerError)(message, code)  # type: ignore[arg-type]


def signature_from_metadata(response: get_model_metadata_pb2.GetModelMetadataResponse,
                            target: ModelTarget) -> ImageSignature:
    """The target's signature from a GetModelMetadata answer (gRPC, or REST's JSON parsed into the proto)."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signatures):
        raise SignatureError(f"the metadata of {target.describe()} hold no SignatureDefMap")
    name = target.signature_name
    if name not in signatures.signature_def:
        raise ModelNotFound(f"{target.describe()}: no signature {name!r}; the model has "
                            + ", ".join(sorted(signatures.signature_def)), grpc.StatusCode.FAILED_PRECONDITION)
    return ImageSignature.from_proto(name, signatures.signature_def[name])


class ModelBackend(Protocol):
    """A model the bridge can ask about and predict with. Implementations are safe to call from several threads.

    Each call raises a ModelServerError subclass when it fails (see bridge.errors)."""

    address: str  # where the model is, as it may be logged (no credentials)
    target: ModelTarget

    def status(self, timeout: float | None = None) -> list[VersionStatus]:
        """The state of each version of the target model."""

    def signature(self, timeout: float | None = None) -> ImageSignature:
        """The target's serving signature."""

    def predict_images(self, signature: ImageSignature, images: np.ndarray | Sequence[bytes],
                       with_labels: bool = True, timeout: float | None = None) -> Prediction:
        """Predict on a batch shaped for `signature`; with_labels=False may leave the labels output out."""

    def close(self) -> None:
        """Release connections, interpreters and worker processes."""


class BackendKind(enum.Enum):
    GRPC = "grpc"
    REST = "rest"
    EMBEDDED = "embedded"
    OIP = "oip"


def backend_kind(model_server: str) -> BackendKind:
    """Which backend a --model-server value chooses (the value is assumed valid)."""
    if model_server.startswith(("http://", "https://")):
        return BackendKind.REST
    if model_server.startswith(OIP_SCHEME):
        return BackendKind.OIP
    if model_server.endswith(TFLITE_SUFFIX):
        return BackendKind.EMBEDDED
    return BackendKind.GRPC


def grpc_servers(model_server: str) -> str:
    """The gRPC form of --model-server without its optional grpc:// prefix."""
    return model_server[len(GRPC_SCHEME):] if model_server.startswith(GRPC_SCHEME) else model_server


def valid_model_server(value: object) -> bool:
    """A gRPC address form (also after oip://), one http(s):// URL with a host, or a path ending in .tflite."""
    if not isinstance(value, str) or not value:
        return False
    kind = backend_kind(value)
    if kind is BackendKind.REST:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            return False
        return bool(parts.hostname) and "," not in value and not parts.query and not parts.fragment
    if kind is BackendKind.EMBEDDED:
        return True  # whether it loads is checked when it is opened
    if kind is BackendKind.OIP:
        return valid_model_servers(value[len(OIP_SCHEME):])
    return valid_model_servers(grpc_servers(value))


def open_backend(settings: Settings) -> ModelBackend:
    """The backend --model-server names. ConfigError when it cannot be set up (e.g. a .tflite that does not load)."""
    kind = backend_kind(settings.model_server)
    timeout = settings.seconds("grpc_timeout_ms")
    if kind is BackendKind.REST:
        from bridge.model.rest_backend import RestBackend
        return RestBackend(settings.model_server, settings.model_target(), timeout=timeout,
                           ca_cert=settings.grpc_ca_cert, pool_size=settings.max_in_flight + 2)
    if kind is BackendKind.EMBEDDED:
        from bridge.model.embedded_backend import EmbeddedBackend
        # More interpreters than cores add memory (a model's worth each), not speed.
        return EmbeddedBackend(Path(settings.model_server), settings.model_target(),
                               instances=min(settings.max_in_flight, os.cpu_count() or 1))
    if kind is BackendKind.OIP:
        from bridge.model.oip_backend import OipBackend
        return OipBackend(settings.model_server[len(OIP_SCHEME):], settings.model_target(), timeout=timeout,
                          credentials=settings.grpc_credentials())
    from bridge.model.grpc_backend import GrpcBackend
    return GrpcBackend(grpc_servers(settings.model_server), settings.model_target(), timeout=timeout,
                       credentials=settings.grpc_credentials())
