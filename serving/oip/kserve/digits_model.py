"""KServe's Python model server serving image classifiers (LiteRT .tflite files) over the Open Inference Protocol:
the digits model as two models of one server, both from the same file, "digits" (DigitsModel) and "digits-bytes"
(DigitsBytesModel), and any other .tflite as a pixel model (ImageModel), e.g. MobileNetV2 for the benchmark.

    python digits_model.py --model_file PATH [--extra_model NAME=PATH ...] --grpc_port N --http_port M
                           [kserve.ModelServer's other flags]

(ports also from OIP_GRPC_PORT / OIP_HTTP_PORT, the file from OIP_MODEL_FILE). Not `--model`: kserve parses
sys.argv on import and would read it as an abbreviation of its own --model_name. Both servers listen on 127.0.0.1
only: kserve 0.21 binds gRPC to [::] and HTTP to 0.0.0.0 unconditionally, so __main__ swaps in loopback versions of
its two server classes (the gRPC one without kserve's log line per call). One process, one uvicorn worker;
serving/oip_servers.py starts it.

A pixel model's input and outputs are those of the file's serving_default signature, read at load, and are what
ModelMetadata declares: one input NAME, its datatype (UINT8, FP32, ...) and shape [-1, H, W, 3]; each output's
name, datatype and shape with -1 first. Model "digits": input `images` UINT8 [N, 32, 32, 3], outputs `scores` FP32
[N, 10] and `classes` BYTES [N, 10] (labels b"0".."9"; the file's other outputs, such as top_class, are not
served). Model "digits-bytes": input `image_bytes` BYTES [N], each element an encoded image file (PNG, JPEG, ...),
decoded by Pillow to RGB and resized to the file's H x W (bilinear), the same outputs as "digits". Each answers all
its outputs, or only those named in the request's `outputs`. A wrong name, datatype or shape, or an element Pillow
cannot fully decode (the whole request fails, naming the element's index), answers INVALID_ARGUMENT (kserve's
InvalidInput). Outputs come back raw (raw_output_contents) when the request's inputs were raw, typed otherwise.
The response's model_version is "1"; kserve itself has no model versions.
"""

from __future__ import annotations

import argparse
import os
import struct
from concurrent import futures
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from grpc import aio
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server as kserve_model_server
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer
from PIL import Image, ImageFile, UnidentifiedImageError

NAME = "digits"
BYTES_NAME = "digits-bytes"
VERSION = "1"
SIGNATURE = "serving_default"
BYTES_INPUT = "image_bytes"
DIGITS_OUTPUTS = ("scores", "classes")
HOST = "127.0.0.1"
_DATATYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32",
              np.dtype(np.int64): "INT64"}


@dataclass(frozen=True)
class Tensor:
    """One tensor of the signature as ModelMetadata declares it (shape: -1 first)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def oip_datatype(dtype: object) -> str:
    """numpy dtype -> OIP datatype: uint8 UINT8, float32 FP32, int32 INT32, int64 INT64, bytes/object BYTES."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SO":
        return "BYTES"
    if dtype not in _DATATYPES:
        raise ValueError(f"no OIP datatype for {dtype}")
    return _DATATYPES[dtype]


def _tensor(name: str, details: dict) -> Tensor:
    shape = [int(dim) for dim in details["shape_signature"]]
    if shape:
        shape[0] = -1  # the batch
    return Tensor(name, oip_datatype(details["dtype"]), tuple(shape), np.dtype(details["dtype"]))


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(["N", *("?" if dim < 0 else str(dim) for dim in shape[1:])]) + "]"


class ImageModel(Model):
    """An image classifier (any .tflite whose serving_default takes one [-1, H, W, 3] input), run by a LiteRT
    signature runner in the server's process; its input and outputs are the file's."""

    # The outputs served, in this order; None: all of the file's, in its order.
    OUTPUT_NAMES: tuple[str, ...] | None = None

    def __init__(self, name: str, model_file: str) -> None:
        super().__init__(name)
        self.model_file = model_file
        self._runner = None

    def load(self) -> bool:
        self._runner = Interpreter(model_path=self.model_file).get_signature_runner(SIGNATURE)
        inputs = [_tensor(name, d) for name, d in self._runner.get_input_details().items()]
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[3] != 3 or inputs[0].datatype == "BYTES":
            raise ValueError(f"{self.model_file}: {SIGNATURE} must take one image input [-1, H, W, 3], "
                             f"has {[(t.name, t.datatype, list(t.shape)) for t in inputs]}")
        self._pixels = inputs[0]
        outputs = {name: _tensor(name, d) for name, d in self._runner.get_output_details().items()}
        names = list(self.OUTPUT_NAMES or outputs)
        missing = [name for name in names if name not in outputs]
        if missing:
            raise ValueError(f"{self.model_file}: {SIGNATURE} has no output(s) {missing}; it has {list(outputs)}")
        self._outputs = {name: outputs[name] for name in names}
        self.ready = True
        return self.ready

    @property
    def input_tensor(self) -> Tensor:
        """The input requests send (the file's pixel input here; image_bytes for DigitsBytesModel)."""
        return self._pixels

    # What ModelMetadata (gRPC and REST) declares: kserve's defaults are empty lists.
    def get_input_types(self) -> list[dict]:
        return [self.input_tensor.metadata()]

    def get_output_types(self) -> list[dict]:
        return [tensor.metadata() for tensor in self._outputs.values()]

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        # Synchronous: kserve calls it on its event loop, so requests run one at a time, as LiteRT needs.
        images = self._images(payload)
        wanted = [out.name for out in payload.request_outputs or []] or list(self._outputs)
        unknown = sorted(set(wanted) - set(self._outputs))
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; this model has {list(self._outputs)}")
        result = self._runner(**{self._pixels.name: images})
        outputs = []
        for name in wanted:
            tensor = self._outputs[name]
            array = result[name] if tensor.datatype == "BYTES" else result[name].astype(tensor.dtype, copy=False)
            output = InferOutput(name=name, shape=list(array.shape), datatype=tensor.datatype)
            # Typed lists here; InferResponse.to_grpc turns them into raw_output_contents for raw requests.
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, model_version=VERSION,
                             infer_outputs=outputs, use_binary_outputs=payload.use_binary_outputs)

    def _images(self, payload: InferRequest) -> np.ndarray:
        spec = self._pixels
        inputs = {tensor.name: tensor for tensor in payload.inputs}
        if set(inputs) != {spec.name}:
            raise InvalidInput(f"expected one input named {spec.name!r}, got {sorted(inputs)}")
        tensor = inputs[spec.name]
        if tensor.datatype != spec.datatype:
            raise InvalidInput(f"input {spec.name!r} must be {spec.datatype}, got {tensor.datatype}")
        shape = tuple(tensor.shape)
        if (len(shape) != len(spec.shape) or shape[0] < 1
                or any(want >= 0 and got != want for got, want in zip(shape[1:], spec.shape[1:]))):
            raise InvalidInput(f"input {spec.name!r} must have shape {_shape_text(spec.shape)}, got {list(shape)}")
        try:
            return np.ascontiguousarray(tensor.as_numpy(), dtype=spec.dtype)
        except ValueError as err:  # element count does not match the shape
            raise InvalidInput(f"input {spec.name!r}: {err}") from err


class DigitsModel(ImageModel):
    """The digits classifier ("digits"): its file's pixel input, outputs scores and classes."""

    OUTPUT_NAMES = DIGITS_OUTPUTS

    def __init__(self, model_file: str, name: str = NAME) -> None:
        super().__init__(name, model_file)


class DigitsBytesModel(DigitsModel):
    """The digits classifier fed encoded image files (input `image_bytes`), decoded by Pillow; its own runner."""

    def __init__(self, model_file: str) -> None:
        super().__init__(model_file, BYTES_NAME)

    def load(self) -> bool:
        # A cut-short file must fail to decode, not come back part grey: PIL's default, set again to be sure.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        loaded = super().load()
        height, width = self._pixels.shape[1:3]
        if self._pixels.datatype != "UINT8" or height < 1 or width < 1:
            raise ValueError(f"{self.name}: decoded images need a UINT8 [-1, H, W, 3] input, the file has "
                             f"{self._pixels.datatype} {list(self._pixels.shape)}")
        return loaded

    @property
    def input_tensor(self) -> Tensor:
        return Tensor(BYTES_INPUT, "BYTES", (-1,), np.dtype(object))

    def _images(self, payload: InferRequest) -> np.ndarray:
        inputs = {tensor.name: tensor for tensor in payload.inputs}
        if set(inputs) != {BYTES_INPUT}:
            raise InvalidInput(f"expected one input named {BYTES_INPUT!r}, got {sorted(inputs)}")
        tensor = inputs[BYTES_INPUT]
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {BYTES_INPUT!r} must be BYTES, got {tensor.datatype}")
        shape = list(tensor.shape)
        if len(shape) != 1 or shape[0] < 1:
            raise InvalidInput(f"input {BYTES_INPUT!r} must have shape [N], got {shape}")
        try:
            elements = tensor.as_numpy()
        except (ValueError, struct.error) as err:  # element count does not match the shape; bad length prefixes
            raise InvalidInput(f"input {BYTES_INPUT!r}: {err}") from err
        height, width = self._pixels.shape[1:3]
        return np.stack([_decode(index, element, (width, height)) for index, element in enumerate(elements)])


def _decode(index: int, element: object, size: tuple[int, int]) -> np.ndarray:
    """Element `index` of `image_bytes` as uint8 [H, W, 3] (size: (W, H)); InvalidInput if Pillow cannot fully
    decode it."""
    if not isinstance(element, (bytes, bytearray)):
        raise InvalidInput(f"input {BYTES_INPUT!r} element {index}: expected bytes, got {type(element).__name__}")
    try:
        with Image.open(BytesIO(element)) as image:
            image.load()  # the whole file now: a truncated scan raises OSError here
            rgb = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    except UnidentifiedImageError as err:  # its message names the BytesIO object
        raise InvalidInput(f"input {BYTES_INPUT!r} element {index}: not an image file Pillow knows") from err
    except Exception as err:  # whatever else Pillow raises for a client's bad bytes is the client's error
        raise InvalidInput(f"input {BYTES_INPUT!r} element {index}: not a decodable image "
                           f"({type(err).__name__}: {err})") from err
    return np.asarray(rgb, dtype=np.uint8)


class LoopbackRESTServer(RESTServer):
    """kserve's HTTP server, bound to 127.0.0.1 instead of 0.0.0.0 (uvicorn reads the host when it starts)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = HOST


class LoopbackGRPCServer(GRPCServer):
    """kserve's gRPC server (its servicer and error interceptor), bound to 127.0.0.1 instead of [::]."""

    async def start(self, max_workers):
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # kserve's error -> status mapping; not its LoggingInterceptor (an INFO line for every call).
            interceptors=(ExceptionToStatusInterceptor(),),
            options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                     ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length"))])
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
        self._server.add_insecure_port(f"{HOST}:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()


def _name_and_path(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
    return name, path


def main() -> None:
    # kserve parses its own flags (--grpc_port, --http_port, --workers, ...) from sys.argv when imported.
    parser = argparse.ArgumentParser(parents=[kserve_model_server.parser])
    parser.add_argument("--model_file", default=os.environ.get("OIP_MODEL_FILE"))
    parser.add_argument("--extra_model", action="append", default=[], metavar="NAME=PATH", type=_name_and_path,
                        help="also serve PATH (a .tflite) as pixel model NAME; repeatable")
    parser.set_defaults(**{flag: int(os.environ[env]) for flag, env in
                           (("grpc_port", "OIP_GRPC_PORT"), ("http_port", "OIP_HTTP_PORT")) if env in os.environ})
    args, _ = parser.parse_known_args()
    if not args.model_file:
        parser.error("--model_file (or OIP_MODEL_FILE) is required")

    kserve_model_server.RESTServer = LoopbackRESTServer
    kserve_model_server.GRPCServer = LoopbackGRPCServer
    models = [DigitsModel(args.model_file), DigitsBytesModel(args.model_file),
              *(ImageModel(name, path) for name, path in args.extra_model)]
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        parser.error(f"model names must differ, got {names}")
    for model in models:
        model.load()
    # grace_period: how long a SIGTERM waits for in-flight calls (kserve's default is 30 s). No latency log line
    # per request.
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1, grace_period=2,
                enable_latency_logging=False).start(models)


if __name__ == "__main__":
    main()
