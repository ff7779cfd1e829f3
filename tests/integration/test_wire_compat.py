"""The bridge's own protos against TF Serving's official ones (tensorflow-serving-api, run in a subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, symbol_database

from bridge.model import tensors
from bridge.model.backend import ModelTarget
from bridge.tfs_api import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2,  # noqa: F401
                            predict_pb2, prediction_service_pb2)

pytestmark = pytest.mark.integration

MESSAGES = [
    "tensorflow.TensorProto", "tensorflow.TensorShapeProto", "tensorflow.TensorShapeProto.Dim",
    "tensorflow.TensorInfo", "tensorflow.SignatureDef", "tensorflow.serving.ModelSpec",
    "tensorflow.serving.PredictRequest", "tensorflow.serving.PredictResponse", "tensorflow.serving.SignatureDefMap",
    "tensorflow.serving.GetModelMetadataRequest", "tensorflow.serving.GetModelMetadataResponse",
    "tensorflow.serving.GetModelStatusRequest", "tensorflow.serving.GetModelStatusResponse",
    "tensorflow.serving.ModelVersionStatus", "tensorflow.serving.StatusProto",
]
ENUMS = ["tensorflow.DataType", "tensorflow.error.Code", "tensorflow.serving.ModelVersionStatus.State"]
SERVICES = ["tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"]
OFFICIAL_RESPONSE = {
    "modelSpec": {"name": "digits", "version": "3", "signatureName": "serving_default"},
    "outputs": {
        "scores": {"dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "1"}, {"size": "2"}]},
                   "floatVal": [0.25, 0.75]},
        "classes": {"dtype": "DT_STRING", "tensorShape": {"dim": [{"size": "1"}, {"size": "2"}]},
                    "stringVal": ["Y2F0", "ZG9n"]},
    },
}


def our_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=ModelTarget("digits", version=3, signature_name="bytes").spec(),
                                         output_filter=["scores"])
    request.inputs["images"].CopyFrom(tensors.from_array(np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)))
    request.inputs["image_bytes"].CopyFrom(tensors.from_bytes_list([b"\x89PNG", b"\xff\xd8\xff"]))
    return request


@pytest.fixture(scope="module")
def official() -> dict:
    query = {"messages": MESSAGES, "enums": ENUMS, "services": SERVICES,
             "predict_request": our_request().SerializeToString().hex(), "predict_response": OFFICIAL_RESPONSE}
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("official_protos.py"))],
                            input=json.dumps(query), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def pool():
    return symbol_database.Default().pool


@pytest.mark.parametrize("name", MESSAGES)
def test_every_field_we_declare_has_the_official_number_and_type(official, name):
    ours = pool().FindMessageTypeByName(name)
    theirs = official["messages"][name]
    for field in ours.fields:
        type_name = (field.message_type.full_name if field.message_type
                     else field.enum_type.full_name if field.enum_type else "")
        assert theirs.get(field.name) == [field.number, field.type, field.is_repeated, type_name], field.name


@pytest.mark.parametrize("name", ENUMS)
def test_enum_values_match(official, name):
    ours = {value.name: value.number for value in pool().FindEnumTypeByName(name).values}
    assert ours.items() <= official["enums"][name].items()


@pytest.mark.parametrize("name", SERVICES)
def test_service_methods_have_the_official_paths_and_types(official, name):
    ours = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in pool().FindServiceByName(name).methods}
    assert ours.items() <= official["services"][name].items()


def test_official_protos_decode_our_predict_request_exactly(official):
    assert official["predict_request"] == json_format.MessageToDict(our_request())


def test_we_decode_an_official_typed_field_response(official):
    response = predict_pb2.PredictResponse.FromString(bytes.fromhex(official["predict_response"]))
    assert response.model_spec.version.value == 3
    np.testing.assert_allclose(tensors.to_array(response.outputs["scores"]), [[0.25, 0.75]])
    assert tensors.to_array(response.outputs["classes"]).tolist() == [[b"cat", b"dog"]]
