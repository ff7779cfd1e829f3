"""MLServer runtimes that serve image classifiers (LiteRT .tflite files) over the Open Inference Protocol: the
digits model as two models of one server, "digits" (DigitsRuntime) and "digits-bytes" (DigitsBytesRuntime), both
from model.tflite, and any other .tflite as a pixel model (ImageRuntime), e.g. MobileNetV2 for the benchmark.

Each model's model-settings.json names its class as the implementation (`digits_runtime.DigitsRuntime`,
`digits_runtime.DigitsBytesRuntime`, `digits_runtime.ImageRuntime`) and points `parameters.uri` at its .tflite;
serving/oip_servers.py writes those settings and runs `mlserver start`.

A pixel model's input and outputs are those of the file's serving_default signature, read at load (the settings
declare none; ModelMetadata answers what was read): one input NAME, its datatype (UINT8, FP32, ...) and shape
[-1, H, W, 3]; each output's name, datatype and shape with -1 first. "digits": input `images` UINT8
[N, 32, 32, 3], outputs `scores` FP32 [N, 10] and `classes` BYTES [N, 10] (labels b"0".."9"; the file's other
outputs, such as top_class, are not served). "digits-bytes": input `image_bytes`, BYTES [N], each element an
encoded image file (PNG, JPEG, ...), decoded by Pillow to RGB and resized to the file's H x W (bilinear), the same
outputs as "digits". Each answers all its outputs, or only those named in the request's `outputs`. A wrong
name, datatype or shape, or an element Pillow cannot fully decode (the whole request fails, naming the element's
index), answers INVALID_ARGUMENT (MLServer's InferenceError). The response's model_version is the model's version
("1").
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import (InferenceRequest, InferenceResponse, MetadataModelResponse, MetadataTensor,
                            ResponseOutput)
from mlserver.utils import get_model_uri
from PIL import Image, ImageFile, UnidentifiedImageError

SIGNATURE = "serving_default"
BYTES_INPUT = "image_bytes"
DIGITS_OUTPUTS = ("scores", "classes")
_DATATYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32",
              np.dtype(np.int64): "INT64"}


@dataclass(frozen=True)
class Tensor:
    """One tensor of the signature as ModelMetadata declares it (shape: -1 first)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def metadata(self) -> MetadataTensor:
        return MetadataTensor(name=self.name, datatype=self.datatype, shape=list(self.shape))


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


class ImageRuntime(MLModel):
    """An image classifier (any .tflite whose serving_default takes one [-1, H, W, 3] input), run by a LiteRT
    signature runner in the server's process; its input and outputs are the file's."""

    # The outputs served, in this order; None: all of the file's, in its order.
    OUTPUT_NAMES: tuple[str, ...] | None = None

    async def load(self) -> bool:
        model_file = await get_model_uri(self.settings)
        self._runner = Interpreter(model_path=model_file).get_signature_runner(SIGNATURE)
        inputs = [_tensor(name, d) for name, d in self._runner.get_input_details().items()]
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[3] != 3 or inputs[0].datatype == "BYTES":
            raise ValueError(f"{model_file}: {SIGNATURE} must take one image input [-1, H, W, 3], "
                             f"has {[(t.name, t.datatype, list(t.shape)) for t in inputs]}")
        self._pixels = inputs[0]
        outputs = {name: _tensor(name, d) for name, d in self._runner.get_output_details().items()}
        names = list(self.OUTPUT_NAMES or outputs)
        missing = [name for name in names if name not in outputs]
        if missing:
            raise ValueError(f"{model_file}: {SIGNATURE} has no output(s) {missing}; it has {list(outputs)}")
        self._outputs = {name: outputs[name] for name in names}
        return True

    @property
    def input_tensor(self) -> Tensor:
        """The input requests send (the file's pixel input here; image_bytes for DigitsBytesRuntime)."""
        return self._pixels

    async def metadata(self) -> MetadataModelResponse:
        # What was read from the file, not the settings' (empty) inputs and outputs.
        response = await super().metadata()
        response.inputs = [self.input_tensor.metadata()]
        response.outputs = [tensor.metadata() for tensor in self._outputs.values()]
        return response

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = self._images(payload)
        wanted = [out.name for out in payload.outputs or []] or list(self._outputs)
        unknown = sorted(set(wanted) - set(self._outputs))
        if unknown:
            raise InferenceError(f"unknown output(s) {unknown}; this model has {list(self._outputs)}")
        # Called on the event loop (no parallel workers): requests run one at a time, as LiteRT needs.
        result = self._runner(**{self._pixels.name: images})
        outputs = []
        for name in wanted:
            tensor, array = self._outputs[name], result[name]
            if tensor.datatype == "BYTES":
                # One element per label: NumpyCodec would pack a bytes array into a single blob.
                outputs.append(ResponseOutput(name=name, datatype="BYTES", shape=list(array.shape),
                                              data=[bytes(element) for element in array.ravel()]))
            else:
                output = NumpyCodec.encode_output(name, array.astype(tensor.dtype, copy=False))
                output.shape = list(array.shape)  # the codec pads a 1-D [N] to [N, 1]; metadata says [-1]
                outputs.append(output)
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

    def _images(self, payload: InferenceRequest) -> np.ndarray:
        spec = self._pixels
        inputs = {tensor.name: tensor for tensor in payload.inputs}
        if set(inputs) != {spec.name}:
            raise InferenceError(f"expected one input named {spec.name!r}, got {sorted(inputs)}")
        tensor = inputs[spec.name]
        if tensor.datatype != spec.datatype:
            raise InferenceError(f"input {spec.name!r} must be {spec.datatype}, got {tensor.datatype}")
        shape = tuple(tensor.shape)
        if (len(shape) != len(spec.shape) or shape[0] < 1
                or any(want >= 0 and got != want for got, want in zip(shape[1:], spec.shape[1:]))):
            raise InferenceError(f"input {spec.name!r} must have shape {_shape_text(spec.shape)}, got {list(shape)}")
        try:
            return np.ascontiguousarray(NumpyCodec.decode_input(tensor), dtype=spec.dtype)
        except ValueError as err:  # element count does not match the shape
            raise InferenceError(f"input {spec.name!r}: {err}") from err


class DigitsRuntime(ImageRuntime):
    """The digits classifier ("digits"): its file's pixel input, outputs scores and classes."""

    OUTPUT_NAMES = DIGITS_OUTPUTS


class DigitsBytesRuntime(DigitsRuntime):
    """The digits classifier fed encoded image files (input `image_bytes`), decoded by Pillow; its own runner."""

    async def load(self) -> bool:
        # A cut-short file must fail to decode, not come back part grey: PIL's default, set again to be sure.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        loaded = await super().load()
        height, width = self._pixels.shape[1:3]
        if self._pixels.datatype != "UINT8" or height < 1 or width < 1:
            raise ValueError(f"{self.name}: decoded images need a UINT8 [-1, H, W, 3] input, the file has "
                             f"{self._pixels.datatype} {list(self._pixels.shape)}")
        return loaded

    @property
    def input_tensor(self) -> Tensor:
        return Tensor(BYTES_INPUT, "BYTES", (-1,), np.dtype(object))

    def _images(self, payload: InferenceRequest) -> np.ndarray:
        inputs = {tensor.name: tensor for tensor in payload.inputs}
        if set(inputs) != {BYTES_INPUT}:
            raise InferenceError(f"expected one input named {BYTES_INPUT!r}, got {sorted(inputs)}")
        tensor = inputs[BYTES_INPUT]
        if tensor.datatype != "BYTES":
            raise InferenceError(f"input {BYTES_INPUT!r} must be BYTES, got {tensor.datatype}")
        shape = list(tensor.shape)
        elements = list(tensor.data)
        if len(shape) != 1 or shape[0] < 1 or len(elements) != shape[0]:
            raise InferenceError(f"input {BYTES_INPUT!r} must have shape [N] and N elements, got shape {shape} "
                                 f"and {len(elements)} element(s)")
        height, width = self._pixels.shape[1:3]
        return np.stack([_decode(index, element, (width, height)) for index, element in enumerate(elements)])


def _decode(index: int, element: object, size: tuple[int, int]) -> np.ndarray:
    """Element `index` of `image_bytes` as uint8 [H, W, 3] (size: (W, H)); InferenceError if Pillow cannot fully
    decode it."""
    if not isinstance(element, (bytes, bytearray)):
        raise InferenceError(f"input {BYTES_INPUT!r} element {index}: expected bytes, got {type(element).__name__}")
    try:
        with Image.open(BytesIO(element)) as image:
            image.load()  # the whole file now: a truncated scan raises OSError here
            rgb = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    except UnidentifiedImageError as err:  # its message names the BytesIO object
        raise InferenceError(f"input {BYTES_INPUT!r} element {index}: not an image file Pillow knows") from err
    except Exception as err:  # whatever else Pillow raises for a client's bad bytes is the client's error
        raise InferenceError(f"input {BYTES_INPUT!r} element {index}: not a decodable image "
                             f"({type(err).__name__}: {err})") from err
    return np.asarray(rgb, dtype=np.uint8)
