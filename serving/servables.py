"""Loading SavedModels and running Predict the way TensorFlow Serving does.

Validation order and error codes/messages follow TF Serving's C++ implementation
(server_core.cc, basic_manager.cc, predict_util.cc, tensorflow/cc/saved_model/util.cc).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify",
                   "tensorflow/serving/regress")
QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"


class ServingError(Exception):
    """A request failure carrying the gRPC status code TF Serving would return."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------- loading


@dataclass
class Servable:
    """One loaded version of a model."""

    name: str
    version: int
    path: Path
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]  # from saved_model.pb, incl. init op
    functions: Any  # the loaded SavedModel's `.signatures` mapping
    _loaded: Any = field(repr=False, default=None)  # keeps the variables alive


def read_signature_defs(version_dir: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The MetaGraphDef's signature_def map, exactly as TF Serving sees it."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    meta_graph = next((m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags),
                      saved_model.meta_graphs[0])
    return dict(meta_graph.signature_def)


def latest_version_dir(model_dir: Path) -> tuple[int, Path] | None:
    """Highest integer-named subdirectory holding a saved_model.pb (other names are ignored)."""
    versions = [(int(p.name), p) for p in model_dir.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()]
    return max(versions) if versions else None


def load_servable(name: str, version: int, version_dir: Path) -> Servable:
    loaded = tf.saved_model.load(str(version_dir), tags=["serve"])
    servable = Servable(name, version, version_dir, read_signature_defs(version_dir),
                        loaded.signatures, loaded)
    warm_up(servable)
    return servable


def load_model_base_dir(base_dir: Path) -> dict[str, dict[int, Servable]]:
    """Load the latest version of every model under base_dir/<model>/<version>/."""
    models: dict[str, dict[int, Servable]] = {}
    for model_dir in sorted(p for p in base_dir.iterdir() if p.is_dir()):
        found = latest_version_dir(model_dir)
        if found is None:
            log.warning("no versions found under %s", model_dir)
            continue
        version, version_dir = found
        models[model_dir.name] = {version: load_servable(model_dir.name, version, version_dir)}
    return models


def warm_up(servable: Servable) -> None:
    """Run every predict signature once on a dummy batch so the first request is not slow."""
    tiny_png = tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)).numpy()
    for name, signature in servable.signature_defs.items():
        if name not in servable.functions or signature.method_name not in PREDICT_METHODS:
            continue
        inputs = {}
        for alias, info in signature.inputs.items():
            dims = [1 if d.size < 0 else d.size for d in info.tensor_shape.dim]
            if info.dtype == types_pb2.DT_STRING:
                inputs[alias] = tf.constant(np.full(dims, tiny_png, dtype=object))
            else:
                inputs[alias] = tf.zeros(dims, tf.as_dtype(info.dtype))
        try:
            servable.functions[name](**inputs)
        except Exception as exc:  # noqa: BLE001 - warm-up is best effort
            log.warning("warm-up of %s/%s failed: %s", servable.name, name, exc)


# --------------------------------------------------------------------------- registry


class ModelRegistry:
    """Resolves a ModelSpec to a loaded Servable (ServerCore::GetServableHandle)."""

    def __init__(self, models: dict[str, dict[int, Servable]],
                 version_labels: dict[str, dict[str, int]] | None = None) -> None:
        self.models = models
        self.version_labels = version_labels or {}

    def resolve(self, spec: model_pb2.ModelSpec) -> Servable:
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = self.version_labels.get(spec.name, {}).get(spec.version_label)
            if version is None:
                raise invalid_argument(
                    f"Unrecognized servable version label: {spec.version_label}")
        else:
            version = spec.version.value if choice == "version" else None
        versions = self.models.get(spec.name, {})
        if version is None:
            if versions:
                return versions[max(versions)]
            request = f"Latest({spec.name})"
        elif version in versions:
            return versions[version]
        else:
            request = f"Specific({spec.name}, {version})"
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")

    def versions(self, name: str) -> dict[int, Servable]:
        return self.models.get(name, {})

    def describe(self) -> str:
        return " ".join(f"{name}:{v}" for name, versions in sorted(self.models.items())
                        for v in sorted(versions))


# --------------------------------------------------------------------------- tensors

# TF's DataTypeString names for the messages ("float", not "float32").
_DTYPE_NAMES = {types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double",
                types_pb2.DT_HALF: "half"}

# Typed TensorProto field for each dtype, as Tensor::AsProtoField writes it.
_TYPED_FIELDS = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def dtype_name(dtype: int) -> str:
    return _DTYPE_NAMES.get(dtype) or tf.as_dtype(dtype).name


def shape_str(dims: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def encode_string_list(values: Iterable[bytes]) -> bytes:
    """TF's port::EncodeStringList: all varint32 lengths, then all bytes (string tensor_content)."""
    values = list(values)
    header = bytearray()
    for value in values:
        n = len(value)
        while n >= 0x80:
            header.append((n & 0x7F) | 0x80)
            n >>= 7
        header.append(n)
    return bytes(header) + b"".join(values)


def decode_string_list(data: bytes, count: int) -> list[bytes]:
    """Inverse of encode_string_list; raises ValueError on malformed data."""
    lengths, pos = [], 0
    for _ in range(count):
        n, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 28:
                raise ValueError("truncated string list")
            byte = data[pos]
            pos += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        lengths.append(n)
    if pos + sum(lengths) != len(data):
        raise ValueError("string list length mismatch")
    values = []
    for n in lengths:
        values.append(data[pos:pos + n])
        pos += n
    return values


def tensor_proto_to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Tensor::FromProto: typed fields or tensor_content (strings too); ValueError if malformed."""
    if proto.dtype == types_pb2.DT_STRING and proto.tensor_content:
        shape = [d.size for d in proto.tensor_shape.dim]
        values = decode_string_list(proto.tensor_content, int(np.prod(shape, dtype=np.int64)))
        return np.array(values, dtype=object).reshape(shape)
    try:
        return tf.make_ndarray(proto)
    except Exception as exc:  # noqa: BLE001 - any parse failure is "tensor parsing error"
        raise ValueError(str(exc)) from exc


def ndarray_to_tensor_proto(array: np.ndarray, as_tensor_content: bool) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoField (typed *_val fields) or Tensor::AsProtoTensorContent."""
    dtype = tf.as_dtype(array.dtype).as_datatype_enum
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape)
    flat = array.reshape(-1)
    if as_tensor_content:
        proto.tensor_content = (encode_string_list(flat.tolist()) if dtype == types_pb2.DT_STRING
                                else np.ascontiguousarray(flat).tobytes())
    elif dtype in _TYPED_FIELDS:
        getattr(proto, _TYPED_FIELDS[dtype]).extend(flat.tolist())
    elif dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        proto.half_val.extend(flat.view(np.uint16).tolist())
    else:
        return tf.make_tensor_proto(array)
    return proto


def shape_compatible(actual: tuple[int, ...], expected: tensor_shape_pb2.TensorShapeProto) -> bool:
    if expected.unknown_rank:
        return True
    dims = [d.size for d in expected.dim]
    return len(actual) == len(dims) and all(e < 0 or e == a for a, e in zip(actual, dims))


# --------------------------------------------------------------------------- predict


def get_signature(servable: Servable, signature_name: str) -> meta_graph_pb2.SignatureDef:
    signature = servable.signature_defs.get(signature_name)
    if signature is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found.')
    if signature.method_name not in PREDICT_METHODS or signature_name not in servable.functions:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           "Expected prediction signature method_name to be one of {"
                           + ", ".join(PREDICT_METHODS) + "}. Was: " + signature.method_name)
    return signature


def check_inputs_size(signature: meta_graph_pb2.SignatureDef,
                      request: predict_pb2.PredictRequest) -> None:
    sent, expected = set(request.inputs), set(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")


def parse_inputs(signature: meta_graph_pb2.SignatureDef,
                 request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """saved_model::GetInputValues, plus dtype and shape checks against the signature."""
    inputs: dict[str, np.ndarray] = {}
    for index, alias in enumerate(sorted(signature.inputs)):
        info = signature.inputs[alias]
        if alias in request.inputs:
            proto = request.inputs[alias]
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request "
                f"{{{','.join(sorted(request.inputs))}}}, or default input alias set: "
                f"{','.join(sorted(signature.defaults))}")
        if proto.dtype != info.dtype:  # what the session's call frame reports
            raise invalid_argument(f"Expects arg[{index}] to be {dtype_name(info.dtype)} but "
                                   f"{dtype_name(proto.dtype)} is provided")
        try:
            array = tensor_proto_to_ndarray(proto)
        except ValueError:
            raise invalid_argument(f"tensor parsing error: {alias}") from None
        if not shape_compatible(array.shape, info.tensor_shape):
            raise invalid_argument(
                f"Input {alias} has shape {shape_str(array.shape)}, which is incompatible with "
                f"the signature's shape {shape_str(d.size for d in info.tensor_shape.dim)}")
        inputs[alias] = array
    unused = set(request.inputs) - set(inputs)
    if request.inputs and unused:
        used = sorted(set(request.inputs) & set(inputs))
        raise invalid_argument(f"Inputs contains invalid name. Used request inputs: "
                               f"{','.join(used)}, request input: {','.join(sorted(request.inputs))}")
    return inputs


def output_aliases(signature: meta_graph_pb2.SignatureDef,
                   request: predict_pb2.PredictRequest) -> list[str]:
    seen: list[str] = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen or sorted(signature.outputs)


def run_signature(servable: Servable, signature_name: str,
                  inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the concrete function; TF errors keep their code (TF and gRPC codes coincide)."""
    try:
        outputs = servable.functions[signature_name](
            **{alias: tf.constant(value) for alias, value in inputs.items()})
    except tf.errors.OpError as exc:
        try:
            code = next(c for c in grpc.StatusCode if c.value[0] == exc.error_code)
        except StopIteration:
            code = grpc.StatusCode.INTERNAL
        if code == grpc.StatusCode.OK:
            code = grpc.StatusCode.INTERNAL
        raise ServingError(code, exc.message) from None
    except Exception as exc:  # noqa: BLE001 - anything else is an internal error
        raise ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}") from None
    return {alias: tensor.numpy() for alias, tensor in outputs.items()}


class Predictor:
    """Predict with TF Serving semantics, a bounded admission queue and limited parallelism."""

    def __init__(self, registry: ModelRegistry, max_queued_requests: int = 64, workers: int = 2,
                 tensor_content: bool = False) -> None:
        self.registry = registry
        self.tensor_content = tensor_content
        self._admission = threading.BoundedSemaphore(max_queued_requests)
        self._running = threading.BoundedSemaphore(workers)

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        if not self._admission.acquire(blocking=False):
            raise ServingError(grpc.StatusCode.UNAVAILABLE, QUEUE_FULL_MESSAGE)
        try:
            return self._predict(request)
        finally:
            self._admission.release()

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        servable = self.registry.resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = get_signature(servable, signature_name)
        check_inputs_size(signature, request)
        inputs = parse_inputs(signature, request)
        aliases = output_aliases(signature, request)
        with self._running:
            outputs = run_signature(servable, signature_name, inputs)

        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for alias in aliases:
            response.outputs[alias].CopyFrom(
                ndarray_to_tensor_proto(outputs[alias], self.tensor_content))
        return response
