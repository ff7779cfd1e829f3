"""TensorProto <-> numpy, as TF Serving reads and writes them.

Requests are encoded compactly (tensor_content for numbers, string_val for bytes). Responses are decoded
from either form: TF Serving writes typed fields (float_val, string_val, ...) unless it runs with
--enable_serialization_as_tensor_content.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bridge.errors import SignatureError
from bridge.tfs_api import tensor_pb2, tensor_shape_pb2, types_pb2

DataType = types_pb2.DataType

# dtype -> (numpy dtype, typed TensorProto field). Little-endian, as tensor_content is on the wire.
_NUMERIC: dict[int, tuple[str, str]] = {
    DataType.DT_FLOAT: ("<f4", "float_val"),
    DataType.DT_DOUBLE: ("<f8", "double_val"),
    DataType.DT_HALF: ("<f2", "half_val"),
    DataType.DT_INT8: ("<i1", "int_val"),
    DataType.DT_UINT8: ("<u1", "int_val"),
    DataType.DT_INT16: ("<i2", "int_val"),
    DataType.DT_UINT16: ("<u2", "int_val"),
    DataType.DT_INT32: ("<i4", "int_val"),
    DataType.DT_INT64: ("<i8", "int64_val"),
    DataType.DT_UINT32: ("<u4", "uint32_val"),
    DataType.DT_UINT64: ("<u8", "uint64_val"),
    DataType.DT_BOOL: ("?", "bool_val"),
}

_FROM_NUMPY = {np.dtype(np_dtype).newbyteorder("="): dtype for dtype, (np_dtype, _) in _NUMERIC.items()
               if dtype != DataType.DT_HALF}
_FROM_NUMPY[np.dtype(np.float16)] = DataType.DT_HALF


def dtype_name(dtype: int) -> str:
    """DT_FLOAT, DT_UINT8, ... (or the number if it is not one the bridge declares)."""
    try:
        return DataType.Name(dtype)
    except ValueError:
        return str(dtype)


def dtype_of(array: np.ndarray) -> int:
    """The TensorFlow DataType of a numeric numpy array; SignatureError for any other array."""
    try:
        return _FROM_NUMPY[array.dtype.newbyteorder("=")]
    except KeyError:
        raise SignatureError(f"cannot send numpy dtype {array.dtype} to TF Serving") from None


def wire_dtype(dtype: int) -> str:
    """The numpy dtype of a DataType's values in tensor_content (little-endian)."""
    return _NUMERIC[dtype][0]


def from_array(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A numeric numpy array as a TensorProto carried in tensor_content."""
    array = np.asarray(array)
    dtype = dtype_of(array)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape)
    proto.tensor_content = np.ascontiguousarray(array, dtype=wire_dtype(dtype)).tobytes()
    return proto


def from_bytes_list(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    """A 1-D DT_STRING tensor, e.g. a batch of encoded images."""
    proto = tensor_pb2.TensorProto(dtype=DataType.DT_STRING)
    proto.tensor_shape.dim.add(size=len(values))
    proto.string_val.extend(values)
    return proto


def shape_of(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    return tuple(dim.size for dim in proto.tensor_shape.dim)


def to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a TensorProto from typed fields or tensor_content. DT_STRING gives an object array of bytes."""
    shape = shape_of(proto)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if proto.dtype == DataType.DT_STRING:
        strings = _packed_strings(proto.tensor_content, count) if proto.tensor_content else list(proto.string_val)
        values = np.empty(len(strings), dtype=object)
        values[:] = strings
        return _fill(values, count, b"").reshape(shape)
    if proto.dtype not in _NUMERIC:
        raise SignatureError(f"cannot decode a {dtype_name(proto.dtype)} tensor")
    np_dtype, field = _NUMERIC[proto.dtype]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape)
    typed = getattr(proto, field)
    if proto.dtype == DataType.DT_HALF:  # half_val holds the float16 bit patterns as int32
        values = np.asarray(typed, dtype=np.uint16).view(np.float16)
    else:
        values = np.asarray(typed, dtype=np_dtype)
    return _fill(values, count, 0).reshape(shape)


def _packed_strings(content: bytes, count: int) -> list[bytes]:
    """TensorFlow's string tensor_content: `count` varint lengths, then the bytes of every string."""
    lengths, position = [], 0
    for _ in range(count):
        length = shift = 0
        while True:
            if position >= len(content) or shift > 63:
                raise SignatureError("truncated string tensor_content")
            byte = content[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        lengths.append(length)
    if position + sum(lengths) != len(content):
        raise SignatureError("string tensor_content lengths do not match its size")
    strings = []
    for length in lengths:
        strings.append(content[position:position + length])
        position += length
    return strings


def _fill(values: np.ndarray, count: int, zero: object) -> np.ndarray:
    """TensorFlow lets a typed field hold fewer values than the shape: the last one repeats (none: zeros)."""
    if len(values) == count:
        return values
    if len(values) > count:
        raise SignatureError(f"tensor has {len(values)} values but its shape holds {count}")
    fill = values[-1] if len(values) else zero
    padded = np.empty(count, dtype=values.dtype)
    padded[: len(values)] = values
    padded[len(values):] = fill
    return padded
