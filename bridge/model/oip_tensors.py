"""Tensors of the Open Inference Protocol: datatype strings, raw contents, typed contents.

Requests carry the batch in `raw_input_contents`: one row-major blob per input, BYTES as elements each prefixed with
its length (4 bytes, little-endian). Answers come as raw blobs or typed contents, whichever the server chooses; both
are decoded here and checked against the shape the server declares, since a server's answer is not trusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bridge.model.tensors import DataType
from bridge.oip_api import open_inference_pb2 as oip

BYTES = "BYTES"
# Datatype string -> (numpy dtype, TensorFlow DataType the signature rules read, typed-contents field)
NUMERIC: dict[str, tuple[np.dtype, int, str]] = {
    "BOOL": (np.dtype(np.bool_), DataType.DT_BOOL, "bool_contents"),
    "UINT8": (np.dtype(np.uint8), DataType.DT_UINT8, "uint_contents"),
    "UINT16": (np.dtype("<u2"), DataType.DT_UINT16, "uint_contents"),
    "UINT32": (np.dtype("<u4"), DataType.DT_UINT32, "uint_contents"),
    "UINT64": (np.dtype("<u8"), DataType.DT_UINT64, "uint64_contents"),
    "INT8": (np.dtype(np.int8), DataType.DT_INT8, "int_contents"),
    "INT16": (np.dtype("<i2"), DataType.DT_INT16, "int_contents"),
    "INT32": (np.dtype("<i4"), DataType.DT_INT32, "int_contents"),
    "INT64": (np.dtype("<i8"), DataType.DT_INT64, "int64_contents"),
    "FP16": (np.dtype("<f2"), DataType.DT_HALF, ""),  # raw only
    "FP32": (np.dtype("<f4"), DataType.DT_FLOAT, "fp32_contents"),
    "FP64": (np.dtype("<f8"), DataType.DT_DOUBLE, "fp64_contents"),
}
LENGTH_PREFIX = 4


class MalformedTensor(ValueError):
    """A tensor in a server's answer does not match its own datatype and shape."""


def data_type(datatype: str) -> int:
    """The TensorFlow DataType standing for an OIP datatype string (DT_INVALID for one the bridge does not know)."""
    if datatype == BYTES:
        return DataType.DT_STRING
    known = NUMERIC.get(datatype)
    return known[1] if known else DataType.DT_INVALID


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype string of a numeric array."""
    for name, (dtype, _, _) in NUMERIC.items():
        if array.dtype == dtype or array.dtype.newbyteorder("<") == dtype:
            return name
    raise ValueError(f"no Open Inference Protocol datatype for {array.dtype}")


def encode_bytes(elements: Sequence[bytes]) -> bytes:
    """BYTES elements as one raw blob: each prefixed with its length, 4 bytes little-endian."""
    return b"".join(len(element).to_bytes(LENGTH_PREFIX, "little") + bytes(element) for element in elements)


def decode_bytes(blob: bytes, count: int) -> list[bytes]:
    """`count` length-prefixed elements from a raw BYTES blob; MalformedTensor unless they fill it exactly."""
    elements, at = [], 0
    view = memoryview(blob)
    for _ in range(count):
        if at + LENGTH_PREFIX > len(blob):
            raise MalformedTensor(f"BYTES blob of {len(blob)} bytes ends inside element {len(elements)}'s length")
        size = int.from_bytes(view[at:at + LENGTH_PREFIX], "little")
        at += LENGTH_PREFIX
        if at + size > len(blob):
            raise MalformedTensor(f"BYTES element {len(elements)} of {size} bytes runs past the blob's end")
        elements.append(bytes(view[at:at + size]))
        at += size
    if at != len(blob):
        raise MalformedTensor(f"BYTES blob has {len(blob) - at} bytes after its {count} elements")
    return elements


def element_count(shape: Sequence[int]) -> int:
    """Elements a tensor of `shape` holds; MalformedTensor for a negative dimension."""
    if any(d < 0 for d in shape):
        raise MalformedTensor(f"shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def from_raw(datatype: str, shape: Sequence[int], blob: bytes) -> np.ndarray:
    """A tensor from its raw blob: an array of `shape` (BYTES: an object array of bytes)."""
    count = element_count(shape)
    if datatype == BYTES:
        elements = decode_bytes(blob, count)  # first: a huge declared count fails here, before any allocation
        values = np.empty(count, dtype=object)
        values[:] = elements
        return values.reshape(tuple(shape))
    dtype = _numeric(datatype)[0]
    if len(blob) != count * dtype.itemsize:
        raise MalformedTensor(f"{datatype} {list(shape)} needs {count * dtype.itemsize} bytes, got {len(blob)}")
    return np.frombuffer(blob, dtype=dtype).reshape(tuple(shape))


def from_contents(datatype: str, shape: Sequence[int], contents: oip.InferTensorContents) -> np.ndarray:
    """A tensor from its typed contents (the field its datatype names)."""
    count = element_count(shape)
    if datatype == BYTES:
        values = np.empty(len(contents.bytes_contents), dtype=object)
        values[:] = list(contents.bytes_contents)
    else:
        dtype, _, field = _numeric(datatype)
        if not field:
            raise MalformedTensor(f"{datatype} has no typed contents; it must come raw")
        values = np.array(getattr(contents, field), dtype=dtype)
    if values.size != count:
        raise MalformedTensor(f"{datatype} {list(shape)} needs {count} values, got {values.size}")
    return values.reshape(tuple(shape))


def _numeric(datatype: str) -> tuple[np.dtype, int, str]:
    known = NUMERIC.get(datatype)
    if known is None:
        raise MalformedTensor(f"unknown datatype {datatype!r}")
    return known
