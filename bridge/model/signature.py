"""What a model's serving signature asks for and answers with, read from GetModelMetadata.

The bridge never hard-codes an input size or name: it feeds the signature's single image input
(uint8 or float32 [N, H, W, 3], or encoded image bytes as DT_STRING [N]) and reads class scores
from a float [N, C] output, with labels from a DT_STRING [N, C] output when the model has one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bridge.errors import SignatureError
from bridge.model.tensors import DataType, dtype_name
from bridge.tfs_api import meta_graph_pb2

SCORE_OUTPUT_NAMES = ("scores", "probabilities", "predictions")
LABEL_OUTPUT_NAMES = ("classes", "labels")


class InputKind(enum.Enum):
    UINT8 = "uint8"  # decoded RGB pixels, 0..255
    FLOAT32 = "float32"  # decoded RGB pixels, scaled (see preprocess)
    ENCODED = "encoded"  # the image file's bytes (PNG, JPEG, ...), decoded by the model


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: int
    shape: tuple[int, ...] | None  # -1 for an unknown dimension; None for unknown rank

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ",".join(str(d) for d in self.shape) + "]"
        return f"{self.name} {dtype_name(self.dtype)} {dims}"


def _spec(name: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(name, info.dtype, shape)


@dataclass(frozen=True)
class ImageSignature:
    """A serving signature the bridge can feed images to and read classes from."""

    name: str
    input: TensorSpec
    input_kind: InputKind
    scores_output: str
    labels_output: str | None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) the model wants, or None when it takes encoded bytes."""
        if self.input_kind is InputKind.ENCODED:
            return None
        assert self.input.shape is not None
        return self.input.shape[1], self.input.shape[2]

    @classmethod
    def from_proto(cls, name: str, signature: meta_graph_pb2.SignatureDef) -> ImageSignature:
        inputs = [_spec(key, info) for key, info in sorted(signature.inputs.items())]
        outputs = {key: _spec(key, info) for key, info in signature.outputs.items()}
        if len(inputs) != 1:
            raise SignatureError(
                f"signature {name!r} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                "the bridge feeds exactly one image input")
        spec = inputs[0]
        return cls(name, spec, _input_kind(name, spec), _scores_output(name, outputs), _labels_output(outputs))

    def describe(self) -> str:
        labels = f", labels {self.labels_output}" if self.labels_output else ""
        return f"{self.name}: input {self.input.describe()} ({self.input_kind.value}), scores {self.scores_output}{labels}"


def _input_kind(signature: str, spec: TensorSpec) -> InputKind:
    if spec.dtype == DataType.DT_STRING:
        if spec.shape is not None and len(spec.shape) != 1:
            raise SignatureError(f"signature {signature!r}: string input {spec.describe()} must be 1-D [N]")
        return InputKind.ENCODED
    kinds = {DataType.DT_UINT8: InputKind.UINT8, DataType.DT_FLOAT: InputKind.FLOAT32}
    if spec.dtype not in kinds:
        raise SignatureError(f"signature {signature!r}: input {spec.describe()} is neither uint8, float32 nor string")
    shape = spec.shape
    if shape is None or len(shape) != 4 or shape[3] != 3 or shape[1] <= 0 or shape[2] <= 0:
        raise SignatureError(
            f"signature {signature!r}: image input {spec.describe()} must be [N, H, W, 3] with known H and W")
    return kinds[spec.dtype]


def _scores_output(signature: str, outputs: dict[str, TensorSpec]) -> str:
    floats = {name: spec for name, spec in outputs.items()
              if spec.dtype == DataType.DT_FLOAT and spec.shape is not None and len(spec.shape) == 2}
    for name in SCORE_OUTPUT_NAMES:
        if name in floats:
            return name
    if len(floats) == 1:
        return next(iter(floats))
    raise SignatureError(
        f"signature {signature!r} has no class-score output (a float [N, C] output named one of "
        f"{', '.join(SCORE_OUTPUT_NAMES)}, or the only float [N, C] output); outputs: "
        + ", ".join(spec.describe() for spec in outputs.values()))


def _labels_output(outputs: dict[str, TensorSpec]) -> str | None:
    for name in LABEL_OUTPUT_NAMES:
        spec = outputs.get(name)
        if spec is not None and spec.dtype == DataType.DT_STRING and spec.shape is not None and len(spec.shape) == 2:
            return name
    return None
