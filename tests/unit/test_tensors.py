import numpy as np
import pytest

from bridge.model import tensors
from bridge.errors import SignatureError
from bridge.model.tensors import DataType
from bridge.tfs_api import tensor_pb2


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int32, np.int64, np.float64])
def test_numeric_arrays_round_trip_through_tensor_content(dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    proto = tensors.from_array(array)
    assert proto.tensor_content and not proto.float_val and not proto.int_val
    assert tensors.shape_of(proto) == (2, 3, 4)
    decoded = tensors.to_array(proto)
    assert decoded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded, array)


def test_uint8_images_are_sent_as_dt_uint8_bytes():
    images = np.full((2, 4, 4, 3), 200, dtype=np.uint8)
    proto = tensors.from_array(images)
    assert proto.dtype == DataType.DT_UINT8
    assert proto.tensor_content == images.tobytes()


def test_big_endian_arrays_are_sent_little_endian():
    array = np.array([1.5, -2.0], dtype=">f4")
    proto = tensors.from_array(array)
    assert proto.dtype == DataType.DT_FLOAT
    assert proto.tensor_content == np.array([1.5, -2.0], dtype="<f4").tobytes()


def test_bytes_become_a_1d_string_tensor():
    proto = tensors.from_bytes_list([b"\x89PNG...", b"\xff\xd8..."])
    assert proto.dtype == DataType.DT_STRING
    assert tensors.shape_of(proto) == (2,)
    assert list(tensors.to_array(proto)) == [b"\x89PNG...", b"\xff\xd8..."]


def test_typed_float_fields_decode_like_tf_serving_writes_them():
    proto = tensor_pb2.TensorProto(dtype=DataType.DT_FLOAT, float_val=[0.1, 0.9, 0.5, 0.5])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    np.testing.assert_allclose(tensors.to_array(proto), [[0.1, 0.9], [0.5, 0.5]], rtol=1e-6)


def test_typed_string_matrix_decodes_to_rows_of_labels():
    proto = tensor_pb2.TensorProto(dtype=DataType.DT_STRING, string_val=[b"cat", b"dog", b"cat", b"dog"])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    assert tensors.to_array(proto).tolist() == [[b"cat", b"dog"], [b"cat", b"dog"]]


def test_a_single_typed_value_fills_the_whole_shape_as_in_tensorflow():
    proto = tensor_pb2.TensorProto(dtype=DataType.DT_INT64, int64_val=[7])
    proto.tensor_shape.dim.add(size=3)
    assert tensors.to_array(proto).tolist() == [7, 7, 7]


def test_half_values_are_bit_patterns():
    halves = np.array([1.0, -0.5], dtype=np.float16)
    proto = tensor_pb2.TensorProto(dtype=DataType.DT_HALF, half_val=halves.view(np.uint16).tolist())
    proto.tensor_shape.dim.add(size=2)
    assert tensors.to_array(proto).tolist() == [1.0, -0.5]


def test_too_many_values_for_the_shape_is_an_error():
    proto = tensor_pb2.TensorProto(dtype=DataType.DT_FLOAT, float_val=[1, 2, 3])
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(SignatureError, match="3 values"):
        tensors.to_array(proto)


def test_unsupported_numpy_dtype_is_refused_with_a_clear_message():
    with pytest.raises(SignatureError, match="complex"):
        tensors.from_array(np.zeros(2, dtype=np.complex64))


def test_strings_packed_in_tensor_content_decode_as_tf_serving_writes_them():
    # --enable_serialization_as_tensor_content packs strings as all varint lengths, then all bytes.
    labels = [b"cat", b"", b"x" * 200]
    content = bytes([3, 0, 200, 1]) + b"".join(labels)
    proto = tensor_pb2.TensorProto(dtype=DataType.DT_STRING, tensor_content=content)
    proto.tensor_shape.dim.add(size=1)
    proto.tensor_shape.dim.add(size=3)
    assert tensors.to_array(proto).tolist() == [labels]


def test_truncated_packed_strings_are_an_error():
    proto = tensor_pb2.TensorProto(dtype=DataType.DT_STRING, tensor_content=bytes([5]) + b"abc")
    proto.tensor_shape.dim.add(size=1)
    with pytest.raises(SignatureError, match="do not match"):
        tensors.to_array(proto)
