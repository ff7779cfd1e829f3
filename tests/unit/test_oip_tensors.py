"""The Open Inference Protocol's tensors: BYTES framing, raw and typed contents, checked against their shape.
A server's answer is untrusted input: any bytes either decode to the declared shape or raise MalformedTensor."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.model import oip_tensors
from bridge.model.oip_tensors import MalformedTensor, decode_bytes, encode_bytes, from_contents, from_raw
from bridge.model.tensors import DataType
from bridge.oip_api import open_inference_pb2 as oip

DATATYPES = [*oip_tensors.NUMERIC, "BYTES", "FP8", ""]
shapes = st.lists(st.integers(-2, 5), max_size=4)


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_bytes_elements_survive_their_length_prefixed_framing(elements):
    assert decode_bytes(encode_bytes(elements), len(elements)) == elements


def test_a_bytes_element_is_its_length_little_endian_then_its_bytes():
    assert encode_bytes([b"ab", b""]) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


@given(st.binary(max_size=200), st.integers(0, 30))
def test_any_blob_either_frames_exactly_count_elements_or_is_malformed(blob, count):
    try:
        elements = decode_bytes(blob, count)
    except MalformedTensor:
        return
    assert len(elements) == count and encode_bytes(elements) == blob


@given(st.sampled_from(DATATYPES), shapes, st.binary(max_size=300))
def test_any_raw_output_is_an_array_of_its_shape_or_malformed(datatype, shape, blob):
    try:
        array = from_raw(datatype, shape, blob)
    except MalformedTensor:
        return
    assert array.shape == tuple(shape)


@given(st.sampled_from(DATATYPES), shapes, st.lists(st.integers(0, 255), max_size=30))
def test_any_typed_output_is_an_array_of_its_shape_or_malformed(datatype, shape, values):
    contents = oip.InferTensorContents(uint_contents=values, fp32_contents=[float(v) for v in values],
                                       bytes_contents=[bytes([v]) for v in values])
    try:
        array = from_contents(datatype, shape, contents)
    except MalformedTensor:
        return
    assert array.shape == tuple(shape)


def test_raw_numbers_are_little_endian_row_major():
    scores = np.arange(6, dtype="<f4").reshape(2, 3)
    assert np.array_equal(from_raw("FP32", [2, 3], scores.tobytes()), scores)
    with pytest.raises(MalformedTensor, match="needs 24 bytes, got 20"):
        from_raw("FP32", [2, 3], scores.tobytes()[:20])


def test_typed_contents_come_from_the_field_the_datatype_names():
    contents = oip.InferTensorContents(fp32_contents=[0.25, 0.75], bytes_contents=[b"3", b"7"])
    assert from_contents("FP32", [1, 2], contents).tolist() == [[0.25, 0.75]]
    assert from_contents("BYTES", [2], contents).tolist() == [b"3", b"7"]
    with pytest.raises(MalformedTensor, match="needs 4 values, got 2"):
        from_contents("FP32", [2, 2], contents)


@pytest.mark.parametrize("datatype, dtype", [("UINT8", DataType.DT_UINT8), ("FP32", DataType.DT_FLOAT),
                                             ("BYTES", DataType.DT_STRING), ("FP8", DataType.DT_INVALID)])
def test_datatype_strings_name_the_signature_rules_types(datatype, dtype):
    assert oip_tensors.data_type(datatype) == dtype


def test_image_batches_go_as_uint8_or_fp32():
    assert oip_tensors.datatype_of(np.zeros((1, 2, 2, 3), np.uint8)) == "UINT8"
    assert oip_tensors.datatype_of(np.zeros((1, 2, 2, 3), np.float32)) == "FP32"


def test_a_huge_declared_shape_fails_before_anything_that_size_is_allocated():
    with pytest.raises(MalformedTensor):
        from_raw("BYTES", [10**6, 10**6], b"\x01\x00\x00\x00a")
    with pytest.raises(MalformedTensor):
        from_raw("FP32", [10**9, 10**9], b"")
