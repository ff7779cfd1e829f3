"""Talks to a model server with TF Serving's official Python stubs, in a subprocess.

Reads one JSON command per line on stdin and writes one JSON answer per line on stdout.
It imports TensorFlow, so it must never be imported by the test process itself.

Commands (all take "address": "host:port"):
  {"op": "accuracy", "signature": "serving_default"|"bytes"|"float", "format": "png"|"jpeg",
   "count": N, "batch_size": B, "tensor_content": bool}
  {"op": "predict", "model_spec": {...}, "inputs": {alias: INPUT}, "output_filter": [...]}
      INPUT = {"dtype": "uint8", "shape": [..], "fill": 0, "tensor_content": bool}
            | {"digits": N, "encoding": "uint8"|"float"|"png"|"jpeg", "tensor_content": bool}
            | {"strings_hex": ["..."]}
  {"op": "metadata", "model_spec": {...}, "metadata_field": ["signature_def"]}
  {"op": "status", "model_spec": {...}}
  {"op": "flood", "requests": N, "batch": B, "timeout": s}   concurrent Predicts, codes counted
  model_spec = {"name", "version" (int, optional), "version_label", "signature_name"}
Answers carry "code" (gRPC status name) and "details" for RPCs.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import digits  # noqa: E402
from serving.servables import decode_string_list  # noqa: E402

CHANNEL_OPTIONS = [("grpc.max_send_message_length", 2**31 - 1),
                   ("grpc.max_receive_message_length", 2**31 - 1)]
_channels: dict[str, grpc.Channel] = {}
_held_out: tuple[np.ndarray, np.ndarray] | None = None


def channel(address: str) -> grpc.Channel:
    if address not in _channels:
        _channels[address] = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return _channels[address]


def held_out() -> tuple[np.ndarray, np.ndarray]:
    global _held_out
    if _held_out is None:
        _, _, test_x, test_y = digits.load_split()
        _held_out = (test_x, test_y)
    return _held_out


def digit_tensor(count: int, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    test_x, test_y = held_out()
    x = test_x[:count]
    if encoding in ("png", "jpeg"):
        data = np.array([digits.encode_image(digits.digit_to_image(d), encoding.upper()) for d in x],
                        dtype=object)
    else:
        data = digits.images_array(x)
        if encoding == "float":
            data = data.astype(np.float32) / 255.0
    return data, test_y[:count]


def to_proto(array: np.ndarray, tensor_content: bool) -> "tf.core.framework.tensor_pb2.TensorProto":
    """tensor_content (make_tensor_proto's default for numbers) or typed *_val fields."""
    proto = tf.make_tensor_proto(array)
    if not tensor_content and proto.tensor_content:
        proto.ClearField("tensor_content")
        field = {np.float32: "float_val", np.float64: "double_val", np.int64: "int64_val",
                 np.bool_: "bool_val"}.get(array.dtype.type, "int_val")
        getattr(proto, field).extend(array.reshape(-1).tolist())
    return proto


def build_input(spec: dict) -> "tf.core.framework.tensor_pb2.TensorProto":
    tensor_content = spec.get("tensor_content", False)
    if "digits" in spec:
        return to_proto(digit_tensor(spec["digits"], spec["encoding"])[0], tensor_content)
    if "strings_hex" in spec:
        return tf.make_tensor_proto(np.array([bytes.fromhex(s) for s in spec["strings_hex"]],
                                             dtype=object))
    array = np.full(spec["shape"], spec.get("fill", 0), dtype=np.dtype(spec["dtype"]))
    return to_proto(array, tensor_content)


def fill_model_spec(target, spec: dict) -> None:
    target.name = spec.get("name", "")
    if spec.get("version") is not None:
        target.version.value = spec["version"]
    if spec.get("version_label"):
        target.version_label = spec["version_label"]
    if spec.get("signature_name"):
        target.signature_name = spec["signature_name"]


def describe_tensor(proto) -> dict:
    array = tf.make_ndarray(proto) if not (proto.dtype == types_pb2.DT_STRING and proto.tensor_content) else None
    values = None if array is None else [
        v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()[:20]]
    return {"dtype": tf.as_dtype(proto.dtype).name,
            "shape": [d.size for d in proto.tensor_shape.dim],
            "typed": bool(proto.float_val or proto.int_val or proto.string_val),
            "tensor_content": bool(proto.tensor_content), "values": values}


def describe_spec(spec) -> dict:
    return {"name": spec.name, "version": spec.version.value if spec.HasField("version") else None,
            "signature_name": spec.signature_name}


def rpc_error(exc: grpc.RpcError) -> dict:
    return {"code": exc.code().name, "details": exc.details()}


def op_predict(cmd: dict) -> dict:
    request = predict_pb2.PredictRequest()
    fill_model_spec(request.model_spec, cmd.get("model_spec", {"name": "digits"}))
    for alias, spec in cmd.get("inputs", {}).items():
        request.inputs[alias].CopyFrom(build_input(spec))
    request.output_filter.extend(cmd.get("output_filter", []))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel(cmd["address"]))
    try:
        response = stub.Predict(request, timeout=cmd.get("timeout", 60))
    except grpc.RpcError as exc:
        return rpc_error(exc)
    return {"code": "OK", "model_spec": describe_spec(response.model_spec),
            "outputs": {k: describe_tensor(v) for k, v in response.outputs.items()}}


def decode_string_content(proto) -> list[str]:
    """TF's string tensor_content encoding (all varint lengths, then all bytes), decoded by the server's own code."""
    count = int(np.prod([d.size for d in proto.tensor_shape.dim]))
    return [value.decode() for value in decode_string_list(proto.tensor_content, count)]


def op_accuracy(cmd: dict) -> dict:
    signature = cmd.get("signature", "serving_default")
    encoding = {"serving_default": "uint8", "float": "float"}.get(signature, cmd.get("format", "png"))
    data, labels = digit_tensor(cmd.get("count", 450), encoding)
    alias = "image_bytes" if signature == "bytes" else "images"
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel(cmd["address"]))
    batch_size, predicted, last = cmd.get("batch_size", 64), [], None
    for start in range(0, len(data), batch_size):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.model_spec.signature_name = signature
        request.inputs[alias].CopyFrom(
            to_proto(data[start:start + batch_size], cmd.get("tensor_content", False)))
        try:
            last = stub.Predict(request, timeout=60)
        except grpc.RpcError as exc:
            return rpc_error(exc)
        top = last.outputs["top_class"]
        predicted += (decode_string_content(top) if top.tensor_content
                      else [v.decode() for v in top.string_val])
    correct = sum(p == str(y) for p, y in zip(predicted, labels))
    return {"code": "OK", "accuracy": correct / len(labels), "count": len(labels),
            "model_spec": describe_spec(last.model_spec),
            "outputs": {k: describe_tensor(v) if k != "top_class" or not v.tensor_content
                        else {"tensor_content": True, "shape": [d.size for d in v.tensor_shape.dim]}
                        for k, v in last.outputs.items()}}


def op_metadata(cmd: dict) -> dict:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    if "model_spec" in cmd:
        fill_model_spec(request.model_spec, cmd["model_spec"])
    request.metadata_field.extend(cmd.get("metadata_field", ["signature_def"]))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel(cmd["address"]))
    try:
        response = stub.GetModelMetadata(request, timeout=30)
    except grpc.RpcError as exc:
        return rpc_error(exc)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    any_msg = response.metadata["signature_def"]
    unpacked = any_msg.Unpack(signature_map)

    def tensors(infos) -> dict:
        return {alias: {"dtype": types_pb2.DataType.Name(info.dtype),
                        "shape": [d.size for d in info.tensor_shape.dim]}
                for alias, info in infos.items()}

    return {"code": "OK", "type_url": any_msg.type_url, "unpacked": unpacked,
            "model_spec": describe_spec(response.model_spec),
            "signatures": {name: {"method_name": sig.method_name, "inputs": tensors(sig.inputs),
                                  "outputs": tensors(sig.outputs)}
                           for name, sig in signature_map.signature_def.items()}}


def op_status(cmd: dict) -> dict:
    request = get_model_status_pb2.GetModelStatusRequest()
    if "model_spec" in cmd:
        fill_model_spec(request.model_spec, cmd["model_spec"])
    stub = model_service_pb2_grpc.ModelServiceStub(channel(cmd["address"]))
    try:
        response = stub.GetModelStatus(request, timeout=30)
    except grpc.RpcError as exc:
        return rpc_error(exc)
    return {"code": "OK", "model_version_status": [
        {"version": s.version, "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
         "has_status": s.HasField("status"), "error_code": s.status.error_code,
         "error_message": s.status.error_message}
        for s in response.model_version_status]}


def op_flood(cmd: dict) -> dict:
    """Fire many big-batch Predicts at once; count the resulting status codes."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    batch = np.random.default_rng(0).integers(0, 256, (cmd.get("batch", 256), 32, 32, 3),
                                              dtype=np.uint8)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel(cmd["address"]))
    calls = [stub.Predict.future(request, timeout=cmd.get("timeout", 120))
             for _ in range(cmd.get("requests", 32))]
    codes, details = Counter(), {}
    for call in calls:
        code = call.code()
        codes[code.name] += 1
        details.setdefault(code.name, call.details())
    return {"code": "OK", "codes": dict(codes), "details": details}


OPS = {"accuracy": op_accuracy, "predict": op_predict, "metadata": op_metadata,
       "status": op_status, "flood": op_flood, "ping": lambda cmd: {"code": "OK"}}


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            answer = OPS[cmd["op"]](cmd)
        except Exception as exc:  # noqa: BLE001 - report to the test instead of dying
            answer = {"code": "CLIENT_ERROR", "details": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
