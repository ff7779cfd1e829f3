"""The model inside the bridge: a .tflite file run with LiteRT's signature runner (ai-edge-litert, no TensorFlow).

LiteRT interpreters are not thread-safe, so the backend keeps a pool of up to `instances` interpreters and each
call borrows one for its whole run. LiteRT releases the GIL while a model runs, so calls in several threads run
on several cores at once (scripts/embedded_inference.py measures it). Interpreters are made when calls need them
(the first at start-up, to read the signature); each holds activation memory for the largest batch it ran
(MobileNetV2 224x224, 32 images: about 185 MB), so the pool hands out the most recently used one first and
interpreters that calls rarely need stay small.

num_threads: LiteRT's threads for one call (None: LiteRT's default, one).

timeout: inference in this process cannot be interrupted once it starts; a call takes as long as the model needs
for its batch (bounded by the largest batch the bridge sends). The timeout bounds only the wait for a free
interpreter: past it the call fails DEADLINE_EXCEEDED (ModelServerUnavailable), like a queued gRPC call.

Only `ai_edge_litert.interpreter` is imported: the package's copies of protobuf's well-known types
(ai_edge_litert/*_pb2.py) would clash with google.protobuf's in the default descriptor pool if imported.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bridge.errors import (ConfigError, ModelRejectedInput, ModelServerError, ModelServerUnavailable, SignatureError,
                           one_line)
from bridge.model import tensors
from bridge.model.backend import ModelTarget, Prediction, VersionStatus
from bridge.model.signature import ImageSignature, InputKind
from bridge.tfs_api import meta_graph_pb2, tensor_shape_pb2

INSTALL_HINT = "the embedded backend needs ai-edge-litert: pip install 'tfs-bridge[embedded]'"


def _one_line(exc: BaseException) -> str:
    return one_line(exc) or type(exc).__name__


def _data_type(dtype: Any) -> int:
    """The TensorFlow DataType of a LiteRT tensor's numpy dtype (DT_INVALID for one TensorFlow has no name for)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return tensors.DataType.DT_STRING
    try:
        return tensors.dtype_of(np.empty(0, dtype))
    except SignatureError:
        return tensors.DataType.DT_INVALID


def _tensor_info(details: dict[str, Any]) -> meta_graph_pb2.TensorInfo:
    """A SignatureDef entry for one tensor of the signature runner, its first (batch) dimension unknown."""
    dims = [int(size) for size in details["shape_signature"]]
    if dims:
        dims[0] = -1
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return meta_graph_pb2.TensorInfo(name=details["name"], dtype=_data_type(details["dtype"]), tensor_shape=shape)


def signature_def(runner: Any) -> meta_graph_pb2.SignatureDef:
    """The signature runner's inputs and outputs as the SignatureDef TF Serving would report for them."""
    return meta_graph_pb2.SignatureDef(
        inputs={name: _tensor_info(d) for name, d in runner.get_input_details().items()},
        outputs={name: _tensor_info(d) for name, d in runner.get_output_details().items()},
        method_name="tensorflow/serving/predict")


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return Interpreter


class EmbeddedBackend:
    """A .tflite model run in this process by a pool of LiteRT interpreters, each running one call at a time."""

    def __init__(self, path: Path, target: ModelTarget, instances: int = 1, num_threads: int | None = None) -> None:
        """ConfigError (one line) when ai-edge-litert is missing, the file does not load or lacks the signature."""
        if instances < 1 or (num_threads is not None and num_threads < 1):
            raise ValueError(f"instances ({instances}) and num_threads ({num_threads}) must be >= 1")
        self.address = str(path)
        self.target = target
        if target.version_label:
            raise ConfigError(f"a .tflite model has no version labels (got {target.version_label!r}); "
                              "set a model version instead")
        self.version = target.version if target.version is not None else 1
        self._interpreter = _interpreter_class()
        self._num_threads = num_threads
        try:
            self._content = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot load model file {path}: {exc.strerror or _one_line(exc)}") from None
        first = self._new_runner()
        self._signature_def = signature_def(first)
        self._input_details = first.get_input_details()
        self._instances = instances
        self._created = 1
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()  # runners; None once closed, to wake the waiting
        self._idle.put(first)
        self._lock = threading.Lock()
        self._closed = False

    def _new_runner(self) -> Any:
        """A fresh interpreter's runner for the target signature; ConfigError if the model or signature is bad."""
        try:
            interpreter = self._interpreter(model_content=self._content, num_threads=self._num_threads)
        except Exception as exc:  # noqa: BLE001 - LiteRT raises ValueError or RuntimeError for a bad file
            raise ConfigError(f"cannot load model file {self.address}: {_one_line(exc)}") from None
        signatures = interpreter.get_signature_list()
        name = self.target.signature_name
        if name not in signatures:
            raise ConfigError(f"model file {self.address} has no signature {name!r}; it has "
                              + (", ".join(sorted(signatures)) or "none"))
        return interpreter.get_signature_runner(name)

    def status(self, timeout: float | None = None) -> list[VersionStatus]:
        """The file's one version, always AVAILABLE (it loaded)."""
        return [VersionStatus(self.version, "AVAILABLE")]

    def signature(self, timeout: float | None = None) -> ImageSignature:
        """The target signature as ImageSignature reads it; SignatureError if the bridge cannot feed it."""
        return ImageSignature.from_proto(self.target.signature_name, self._signature_def)

    def predict_images(self, signature: ImageSignature, images: np.ndarray | Sequence[bytes],
                       with_labels: bool = True, timeout: float | None = None) -> Prediction:
        """Run the model on a batch shaped for `signature`; ModelRejectedInput when the batch does not fit the model's
        input, ModelServerError(INTERNAL) when LiteRT fails. with_labels=False leaves the labels output out."""
        batch = self._batch(signature, images)
        runner = self._borrow(timeout)
        try:
            outputs = runner(**{signature.input.name: batch})
        except Exception as exc:  # noqa: BLE001 - whatever LiteRT raises is the model's failure
            raise ModelServerError(f"Predict on {self.target.describe()}: INTERNAL: LiteRT: {_one_line(exc)}",
                                   grpc.StatusCode.INTERNAL) from None
        finally:
            self._give_back(runner)
        wanted = [signature.scores_output]
        if with_labels and signature.labels_output:
            wanted.append(signature.labels_output)
        return Prediction({name: outputs[name] for name in wanted if name in outputs},
                          self.target.name, self.version, self.target.signature_name)

    def _batch(self, signature: ImageSignature, images: np.ndarray | Sequence[bytes]) -> np.ndarray:
        """The input array, checked against the model's input as TF Serving checks a request."""
        name = signature.input.name
        if signature.input_kind is InputKind.ENCODED:
            if isinstance(images, np.ndarray):
                raise SignatureError(f"signature {signature.name!r} takes encoded image bytes, not pixels")
            batch = np.array([bytes(image) for image in images], dtype=object)
        elif not isinstance(images, np.ndarray):
            raise SignatureError(f"signature {signature.name!r} takes a pixel array, not encoded bytes")
        else:
            batch = np.ascontiguousarray(images)
        details = self._input_details.get(name)
        if details is None:
            raise ModelRejectedInput(f"Predict on {self.target.describe()}: INVALID_ARGUMENT: no input {name!r}; "
                                     f"the model takes {', '.join(self._input_details)}",
                                     grpc.StatusCode.INVALID_ARGUMENT)
        wanted = self._signature_def.inputs[name]
        dims = tuple(d.size for d in wanted.tensor_shape.dim)
        expected = np.dtype(details["dtype"])
        dtype_ok = batch.dtype == expected or (expected.kind in "SO" and batch.dtype.kind in "SO")
        shape_ok = len(batch.shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims, batch.shape))
        if not (dtype_ok and shape_ok):
            raise ModelRejectedInput(
                f"Predict on {self.target.describe()}: INVALID_ARGUMENT: input {name!r} must be "
                f"{tensors.dtype_name(wanted.dtype)} [{','.join(map(str, dims))}], got {batch.dtype} "
                f"[{','.join(map(str, batch.shape))}]", grpc.StatusCode.INVALID_ARGUMENT)
        return batch

    def _borrow(self, timeout: float | None) -> Any:
        """An idle interpreter's runner, a new one while fewer than `instances` exist, else the next one freed."""
        try:
            runner = self._idle.get_nowait()
        except queue.Empty:
            runner = self._grow()
            if runner is None:
                try:
                    runner = self._idle.get(timeout=timeout)
                except queue.Empty:
                    raise ModelServerUnavailable(
                        f"Predict on {self.target.describe()}: DEADLINE_EXCEEDED: all {self._instances} "
                        f"interpreters stayed busy for {timeout}s", grpc.StatusCode.DEADLINE_EXCEEDED) from None
        if runner is None or self._closed:
            self._idle.put(None)  # the next waiting call learns it too
            raise ModelServerUnavailable(f"Predict on {self.target.describe()}: CANCELLED: {self.address} is closed",
                                         grpc.StatusCode.CANCELLED)
        return runner

    def _grow(self) -> Any | None:
        """A new interpreter's runner if fewer than `instances` exist, else None."""
        with self._lock:
            if self._created >= self._instances:
                return None
            self._created += 1
        try:
            return self._new_runner()
        except ConfigError as exc:
            with self._lock:
                self._created -= 1
            raise ModelServerError(f"Predict on {self.target.describe()}: INTERNAL: {exc}",
                                   grpc.StatusCode.INTERNAL) from None

    def _give_back(self, runner: Any) -> None:
        if not self._closed:
            self._idle.put(runner)

    def close(self) -> None:
        """Drop the idle interpreters; calls still running finish on theirs, later calls fail CANCELLED."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        self._idle.put(None)
