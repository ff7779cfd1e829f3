"""MLServer runtimes that serve the digits model (a LiteRT .tflite file) over the Open Inference Protocol, as two
models of one server: "digits" (DigitsRuntime) and "digits-bytes" (DigitsBytesRuntime), both from model.tflite.

Each model's model-settings.json names its class as the implementation (`digits_runtime.DigitsRuntime`,
`digits_runtime.DigitsBytesRuntime`) and points `parameters.uri` at model.tflite; serving/oip_servers.py writes
those settings and runs `mlserver start`.

"digits": one input `images`, UINT8 [N, 32, 32, 3]. "digits-bytes": one input `image_bytes`, BYTES [N], each
element an encoded image file (PNG, JPEG, ...), decoded by Pillow to RGB and resized to 32x32 (bilinear).
Both answer `scores` FP32 [N, 10] and `classes` BYTES [N, 10] (labels b"0".."9"), or only those named in the
request's `outputs`. A wrong name, datatype or shape, or an element Pillow cannot fully decode (the whole
request fails, naming the element's index), answers INVALID_ARGUMENT (MLServer's InferenceError). The response's
model_version is the model's version ("1").
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from mlserver.utils import get_model_uri
from PIL import Image, ImageFile, UnidentifiedImageError

INPUT = "images"
BYTES_INPUT = "image_bytes"
IMAGE_SHAPE = (32, 32, 3)
OUTPUTS = ("scores", "classes")


class DigitsRuntime(MLModel):
    """The digits classifier, run by a LiteRT signature runner in the server's process."""

    async def load(self) -> bool:
        model_file = await get_model_uri(self.settings)
        self._runner = Interpreter(model_path=model_file).get_signature_runner("serving_default")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = self._images(payload)
        wanted = [out.name for out in payload.outputs or []] or list(OUTPUTS)
        unknown = sorted(set(wanted) - set(OUTPUTS))
        if unknown:
            raise InferenceError(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
        # Called on the event loop (no parallel workers): requests run one at a time, as LiteRT needs.
        result = self._runner(images=images)
        outputs = []
        for name in wanted:
            if name == "scores":
                outputs.append(NumpyCodec.encode_output("scores", result["scores"].astype(np.float32)))
            else:
                classes = result["classes"]
                # One element per label: NumpyCodec would pack a bytes array into a single blob.
                outputs.append(ResponseOutput(name="classes", datatype="BYTES", shape=list(classes.shape),
                                              data=[bytes(label) for label in classes.ravel()]))
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

    @staticmethod
    def _images(payload: InferenceRequest) -> np.ndarray:
        inputs = {tensor.name: tensor for tensor in payload.inputs}
        if set(inputs) != {INPUT}:
            raise InferenceError(f"expected one input named {INPUT!r}, got {sorted(inputs)}")
        tensor = inputs[INPUT]
        if tensor.datatype != "UINT8":
            raise InferenceError(f"input {INPUT!r} must be UINT8, got {tensor.datatype}")
        shape = tuple(tensor.shape)
        if len(shape) != 4 or shape[1:] != IMAGE_SHAPE or shape[0] < 1:
            raise InferenceError(f"input {INPUT!r} must have shape [N, 32, 32, 3], got {list(shape)}")
        try:
            return NumpyCodec.decode_input(tensor).astype(np.uint8, copy=False)
        except ValueError as err:  # element count does not match the shape
            raise InferenceError(f"input {INPUT!r}: {err}") from err


class DigitsBytesRuntime(DigitsRuntime):
    """The digits classifier fed encoded image files (input `image_bytes`), decoded by Pillow; its own runner."""

    async def load(self) -> bool:
        # A cut-short file must fail to decode, not come back part grey: PIL's default, set again to be sure.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        return await super().load()

    @staticmethod
    def _images(payload: InferenceRequest) -> np.ndarray:
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
        return np.stack([_decode(index, element) for index, element in enumerate(elements)])


def _decode(index: int, element: object) -> np.ndarray:
    """Element `index` of `image_bytes` as uint8 [32, 32, 3]; InferenceError if Pillow cannot fully decode it."""
    if not isinstance(element, (bytes, bytearray)):
        raise InferenceError(f"input {BYTES_INPUT!r} element {index}: expected bytes, got {type(element).__name__}")
    try:
        with Image.open(BytesIO(element)) as image:
            image.load()  # the whole file now: a truncated scan raises OSError here
            rgb = image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    except UnidentifiedImageError as err:  # its message names the BytesIO object
        raise InferenceError(f"input {BYTES_INPUT!r} element {index}: not an image file Pillow knows") from err
    except Exception as err:  # whatever else Pillow raises for a client's bad bytes is the client's error
        raise InferenceError(f"input {BYTES_INPUT!r} element {index}: not a decodable image "
                             f"({type(err).__name__}: {err})") from err
    return np.asarray(rgb, dtype=np.uint8)
