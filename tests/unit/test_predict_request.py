"""The hand-framed PredictRequest parses to exactly the message protobuf builds, for any batch."""

import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from bridge.model import tensors
from bridge.model.backend import ModelTarget
from bridge.model.predict_request import predict_request_bytes
from bridge.tfs_api import predict_pb2

NUMERIC_DTYPES = st.sampled_from([np.uint8, np.float32, np.float16, np.float64, np.int8, np.int16, np.int32,
                                  np.int64, np.uint16, np.uint32, np.uint64, np.bool_, ">f4", ">i4"])
SHAPES = hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)
NAMES = st.text(min_size=1, max_size=20)
FILTERS = st.lists(st.text(max_size=10), max_size=3)


def protobuf_built(target: ModelTarget, name: str, batch, output_filter) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=target.spec(), output_filter=list(output_filter))
    proto = tensors.from_array(batch) if isinstance(batch, np.ndarray) else tensors.from_bytes_list(batch)
    request.inputs[name].CopyFrom(proto)
    return request


@settings(max_examples=200, deadline=None)
@given(arrays=hnp.arrays(NUMERIC_DTYPES, SHAPES), name=NAMES, output_filter=FILTERS,
       version=st.none() | st.integers(0, 2**62))
def test_numeric_batches_parse_to_the_protobuf_message(arrays, name, output_filter, version):
    target = ModelTarget("model-é", version=version)
    framed = predict_pb2.PredictRequest.FromString(
        predict_request_bytes(target.spec(), name, arrays, output_filter))
    assert framed == protobuf_built(target, name, arrays, output_filter)
    assert np.array_equal(tensors.to_array(framed.inputs[name]), arrays, equal_nan=arrays.dtype.kind == "f")


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.binary(max_size=300), max_size=8), name=NAMES, output_filter=FILTERS)
def test_encoded_batches_parse_to_the_protobuf_message(values, name, output_filter):
    target = ModelTarget("digits", version_label="stable", signature_name="bytes")
    framed = predict_pb2.PredictRequest.FromString(predict_request_bytes(target.spec(), name, values, output_filter))
    assert framed == protobuf_built(target, name, values, output_filter)
    assert list(framed.inputs[name].string_val) == values


def test_a_batch_of_several_megabytes_needs_multi_byte_lengths():
    batch = np.arange(32 * 224 * 224 * 3, dtype=np.uint32).astype(np.uint8).reshape(32, 224, 224, 3)
    framed = predict_pb2.PredictRequest.FromString(predict_request_bytes(ModelTarget("m").spec(), "images", batch))
    assert framed == protobuf_built(ModelTarget("m"), "images", batch, ())


def test_a_non_contiguous_batch_is_sent_in_row_order():
    batch = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)[:, ::-1]
    framed = predict_pb2.PredictRequest.FromString(predict_request_bytes(ModelTarget("m").spec(), "x", batch))
    assert np.array_equal(tensors.to_array(framed.inputs["x"]), batch)
