"""KServe's Python model server serving the digits model (a LiteRT .tflite file) over the Open Inference Protocol,
as two models of one server, both from the same file: "digits" (DigitsModel) and "digits-bytes" (DigitsBytesModel).

    python digits_model.py --model_file PATH --grpc_port N --http_port M [kserve.ModelServer's other flags]

(ports also from OIP_GRPC_PORT / OIP_HTTP_PORT, the file from OIP_MODEL_FILE). Both servers listen on 127.0.0.1
only: kserve 0.21 binds gRPC to [::] and HTTP to 0.0.0.0 unconditionally, so __main__ swaps in loopback
versions of its two server classes (the gRPC one without kserve's log line per call). One process, one uvicorn
worker; serving/oip_servers.py starts it.

Model "digits": input `images` UINT8 [N, 32, 32, 3]. Model "digits-bytes": input `image_bytes` BYTES [N], each
element an encoded image file (PNG, JPEG, ...), decoded by Pillow to RGB and resized to 32x32 (bilinear). Both
answer `scores` FP32 [N, 10] and `classes` BYTES [N, 10] (labels b"0".."9"), or only those named in the request's
`outputs`. A wrong name, datatype or shape, or an element Pillow cannot fully decode (the whole request fails,
naming the element's index), answers INVALID_ARGUMENT (kserve's InvalidInput). Outputs come back raw
(raw_output_contents) when the request's inputs were raw, typed otherwise. The response's model_version is "1";
kserve itself has no model versions.
"""

from __future__ import annotations

import argparse
import os
import struct
from concurrent import futures
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
INPUT = "images"
BYTES_INPUT = "image_bytes"
IMAGE_SHAPE = (32, 32, 3)
OUTPUTS = ("scores", "classes")
HOST = "127.0.0.1"


class DigitsModel(Model):
    """The digits classifier, run by a LiteRT signature runner in the server's process."""

    def __init__(self, model_file: str, name: str = NAME) -> None:
        super().__init__(name)
        self.model_file = model_file
        self._runner = None

    def load(self) -> bool:
        self._runner = Interpreter(model_path=self.model_file).get_signature_runner("serving_default")
        self.ready = True
        return self.ready

    # What ModelMetadata (gRPC and REST) declares: kserve's defaults are empty lists.
    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "scores", "datatype": "FP32", "shape": [-1, 10]},
                {"name": "classes", "datatype": "BYTES", "shape": [-1, 10]}]

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        # Synchronous: kserve calls it on its event loop, so requests run one at a time, as LiteRT needs.
        images = self._images(payload)
        wanted = [out.name for out in payload.request_outputs or []] or list(OUTPUTS)
        unknown = sorted(set(wanted) - set(OUTPUTS))
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
        result = self._runner(images=images)
        outputs = []
        for name in wanted:
            array = result[name].astype(np.float32) if name == "scores" else result[name]
            output = InferOutput(name=name, shape=list(array.shape), datatype="FP32" if name == "scores" else "BYTES")
            # Typed lists here; InferResponse.to_grpc turns them into raw_output_contents for raw requests.
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, model_version=VERSION,
                             infer_outputs=outputs, use_binary_outputs=payload.use_binary_outputs)

    @staticmethod
    def _images(payload: InferRequest) -> np.ndarray:
        inputs = {tensor.name: tensor for tensor in payload.inputs}
        if set(inputs) != {INPUT}:
            raise InvalidInput(f"expected one input named {INPUT!r}, got {sorted(inputs)}")
        tensor = inputs[INPUT]
        if tensor.datatype != "UINT8":
            raise InvalidInput(f"input {INPUT!r} must be UINT8, got {tensor.datatype}")
        shape = tuple(tensor.shape)
        if len(shape) != 4 or shape[1:] != IMAGE_SHAPE or shape[0] < 1:
            raise InvalidInput(f"input {INPUT!r} must have shape [N, 32, 32, 3], got {list(shape)}")
        try:
            return np.ascontiguousarray(tensor.as_numpy(), dtype=np.uint8)
        except ValueError as err:  # element count does not match the shape
            raise InvalidInput(f"input {INPUT!r}: {err}") from err


class DigitsBytesModel(DigitsModel):
    """The digits classifier fed encoded image files (input `image_bytes`), decoded by Pillow; its own runner."""

    def __init__(self, model_file: str) -> None:
        super().__init__(model_file, BYTES_NAME)

    def load(self) -> bool:
        # A cut-short file must fail to decode, not come back part grey: PIL's default, set again to be sure.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        return super().load()

    def get_input_types(self) -> list[dict]:
        return [{"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]}]

    @staticmethod
    def _images(payload: InferRequest) -> np.ndarray:
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
        return np.stack([_decode(index, element) for index, element in enumerate(elements)])


def _decode(index: int, element: object) -> np.ndarray:
    """Element `index` of `image_bytes` as uint8 [32, 32, 3]; InvalidInput if Pillow cannot fully decode it."""
    if not isinstance(element, (bytes, bytearray)):
        raise InvalidInput(f"input {BYTES_INPUT!r} element {index}: expected bytes, got {type(element).__name__}")
    try:
        with Image.open(BytesIO(element)) as image:
            image.load()  # the whole file now: a truncated scan raises OSError here
            rgb = image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
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


def main() -> None:
    # kserve parses its own flags (--grpc_port, --http_port, --workers, ...) from sys.argv when imported.
    parser = argparse.ArgumentParser(parents=[kserve_model_server.parser])
    parser.add_argument("--model_file", default=os.environ.get("OIP_MODEL_FILE"))
    parser.set_defaults(**{flag: int(os.environ[env]) for flag, env in
                           (("grpc_port", "OIP_GRPC_PORT"), ("http_port", "OIP_HTTP_PORT")) if env in os.environ})
    args, _ = parser.parse_known_args()
    if not args.model_file:
        parser.error("--model_file (or OIP_MODEL_FILE) is required")

    kserve_model_server.RESTServer = LoopbackRESTServer
    kserve_model_server.GRPCServer = LoopbackGRPCServer
    models = [DigitsModel(args.model_file), DigitsBytesModel(args.model_file)]
    for model in models:
        model.load()
    # grace_period: how long a SIGTERM waits for in-flight calls (kserve's default is 30 s). No latency log line
    # per request.
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1, grace_period=2,
                enable_latency_logging=False).start(models)


if __name__ == "__main__":
    main()
