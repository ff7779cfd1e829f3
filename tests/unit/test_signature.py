import pytest

from bridge.errors import SignatureError
from bridge.model.signature import ImageSignature, InputKind
from bridge.model.tensors import DataType
from bridge.tfs_api import meta_graph_pb2


def signature_def(inputs, outputs):
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for target, specs in ((signature.inputs, inputs), (signature.outputs, outputs)):
        for name, (dtype, shape) in specs.items():
            info = target[name]
            info.name = f"{name}:0"
            info.dtype = dtype
            if shape is None:
                info.tensor_shape.unknown_rank = True
            for size in shape or ():
                info.tensor_shape.dim.add(size=size)
    return signature


CLASSIFIER_OUTPUTS = {"scores": (DataType.DT_FLOAT, [-1, 10]), "classes": (DataType.DT_STRING, [-1, 10]),
                      "top_class": (DataType.DT_STRING, [-1])}


def test_uint8_image_input_gives_its_size_from_the_signature():
    parsed = ImageSignature.from_proto("serving_default", signature_def(
        {"images": (DataType.DT_UINT8, [-1, 224, 160, 3])}, CLASSIFIER_OUTPUTS))
    assert parsed.input_kind is InputKind.UINT8
    assert parsed.input.name == "images"
    assert parsed.image_size == (224, 160)
    assert (parsed.scores_output, parsed.labels_output) == ("scores", "classes")


def test_float_input_is_recognised():
    parsed = ImageSignature.from_proto("float", signature_def(
        {"x": (DataType.DT_FLOAT, [-1, 32, 32, 3])}, CLASSIFIER_OUTPUTS))
    assert parsed.input_kind is InputKind.FLOAT32


def test_string_input_takes_encoded_images_and_has_no_size():
    parsed = ImageSignature.from_proto("bytes", signature_def(
        {"image_bytes": (DataType.DT_STRING, [-1])}, CLASSIFIER_OUTPUTS))
    assert parsed.input_kind is InputKind.ENCODED
    assert parsed.image_size is None


def test_the_only_float_matrix_output_is_taken_as_scores_and_labels_are_optional():
    parsed = ImageSignature.from_proto("s", signature_def(
        {"images": (DataType.DT_UINT8, [-1, 8, 8, 3])}, {"logits_softmax": (DataType.DT_FLOAT, [-1, 3])}))
    assert parsed.scores_output == "logits_softmax"
    assert parsed.labels_output is None


@pytest.mark.parametrize("inputs, message", [
    ({"a": (DataType.DT_UINT8, [-1, 8, 8, 3]), "b": (DataType.DT_UINT8, [-1, 8, 8, 3])}, "2 inputs"),
    ({"images": (DataType.DT_UINT8, [-1, -1, -1, 3])}, "known H and W"),
    ({"images": (DataType.DT_UINT8, [-1, 8, 8, 1])}, r"\[N, H, W, 3\]"),
    ({"images": (DataType.DT_INT64, [-1, 8, 8, 3])}, "neither uint8"),
    ({"images": (DataType.DT_UINT8, None)}, "known H and W"),
    ({"image_bytes": (DataType.DT_STRING, [-1, 2])}, "1-D"),
])
def test_unusable_inputs_are_refused_with_the_reason(inputs, message):
    with pytest.raises(SignatureError, match=message):
        ImageSignature.from_proto("s", signature_def(inputs, CLASSIFIER_OUTPUTS))


def test_a_signature_without_scores_is_refused():
    with pytest.raises(SignatureError, match="no class-score output"):
        ImageSignature.from_proto("s", signature_def(
            {"images": (DataType.DT_UINT8, [-1, 8, 8, 3])}, {"embedding": (DataType.DT_INT64, [-1, 128])}))
