"""serving.model_server answers like TF Serving; checked with the official stubs in a subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.process import ModelServerProcess

pytestmark = pytest.mark.integration

DIGIT = {"digits": 4, "encoding": "uint8"}
SCORES_SHAPE = {"scores": [4, 10], "classes": [4, 10], "top_class": [4]}


@pytest.fixture(scope="module")
def small_server(exported_models_dir: Path) -> Iterator[ModelServerProcess]:
    """One worker, one admitted request at a time, outputs as tensor_content."""
    server = ModelServerProcess(exported_models_dir, port=0,
                                extra_args=["--max-queued-requests", "1", "--workers", "1", "--tensor-content"])
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("signature, fmt, tensor_content", [
    ("serving_default", None, False),
    ("serving_default", None, True),
    ("bytes", "png", False),
    ("bytes", "jpeg", False),
    ("float", None, True),
])
def test_held_out_accuracy(serving_server, official_client, signature, fmt, tensor_content) -> None:
    answer = official_client("accuracy", serving_server.address, signature=signature, format=fmt,
                             tensor_content=tensor_content, batch_size=100)
    assert answer["code"] == "OK", answer
    assert answer["count"] == 450 and answer["accuracy"] >= 0.90
    assert answer["model_spec"] == {"name": "digits", "version": 1, "signature_name": signature}


def test_predict_outputs_are_typed_fields(serving_server, official_client) -> None:
    answer = official_client("predict", serving_server.address, model_spec={"name": "digits"},
                             inputs={"images": DIGIT})
    assert answer["code"] == "OK", answer
    assert answer["model_spec"] == {"name": "digits", "version": 1, "signature_name": "serving_default"}
    outputs = answer["outputs"]
    assert {k: v["shape"] for k, v in outputs.items()} == SCORES_SHAPE
    assert {k: v["dtype"] for k, v in outputs.items()} == {"scores": "float32", "classes": "string",
                                                           "top_class": "string"}
    assert all(v["typed"] and not v["tensor_content"] for v in outputs.values())
    assert outputs["classes"]["values"][:10] == [str(d) for d in range(10)]
    scores = outputs["scores"]["values"][:10]
    assert abs(sum(scores) - 1) < 1e-4
    assert outputs["top_class"]["values"][0] == str(scores.index(max(scores)))


def test_predict_with_version_and_output_filter(serving_server, official_client) -> None:
    answer = official_client("predict", serving_server.address,
                             model_spec={"name": "digits", "version": 1, "signature_name": "bytes"},
                             inputs={"image_bytes": {"digits": 3, "encoding": "jpeg"}}, output_filter=["top_class"])
    assert answer["code"] == "OK", answer
    assert list(answer["outputs"]) == ["top_class"] and answer["outputs"]["top_class"]["shape"] == [3]
    assert answer["model_spec"] == {"name": "digits", "version": 1, "signature_name": "bytes"}


@pytest.mark.parametrize("model_spec, inputs, output_filter, code, details", [
    ({"name": "nosuch"}, {"images": DIGIT}, [], "NOT_FOUND", "Servable not found for request: Latest(nosuch)"),
    ({"name": "digits", "version": 7}, {"images": DIGIT}, [], "NOT_FOUND",
     "Servable not found for request: Specific(digits, 7)"),
    ({"name": "digits", "version_label": "canary"}, {"images": DIGIT}, [], "INVALID_ARGUMENT",
     "Unrecognized servable version label: canary"),
    ({"name": "digits", "signature_name": "x"}, {"images": DIGIT}, [], "FAILED_PRECONDITION",
     'Serving signature key "x" not found.'),
    ({"name": "digits"}, {"imgs": DIGIT}, [], "INVALID_ARGUMENT",
     "Signature input alias: images(feed name: serving_default_images:0) not found in request"),
    ({"name": "digits"}, {"images": DIGIT, "extra": DIGIT}, [], "INVALID_ARGUMENT",
     "input size does not match signature: 2!=1 len({extra,images}) != len({images}). Sent extra: {extra}."),
    ({"name": "digits"}, {"images": {"digits": 2, "encoding": "float"}}, [], "INVALID_ARGUMENT",
     "Expects arg[0] to be uint8 but float is provided"),
    ({"name": "digits", "signature_name": "float"}, {"images": DIGIT}, [], "INVALID_ARGUMENT",
     "Expects arg[0] to be float but uint8 is provided"),
    ({"name": "digits"}, {"images": {"dtype": "uint8", "shape": [1, 28, 28, 3]}}, [], "INVALID_ARGUMENT",
     "Input images has shape [1,28,28,3]"),
    ({"name": "digits", "signature_name": "bytes"}, {"image_bytes": {"strings_hex": ["00112233"]}}, [],
     "INVALID_ARGUMENT", "Unknown image file format"),
    ({"name": "digits"}, {"images": DIGIT}, ["nope"], "INVALID_ARGUMENT",
     "output tensor alias not found in signature: nope Outputs expected to be in the set "
     "{classes,scores,top_class}."),
])
def test_predict_errors(serving_server, official_client, model_spec, inputs, output_filter, code, details) -> None:
    answer = official_client("predict", serving_server.address, model_spec=model_spec, inputs=inputs,
                             output_filter=output_filter)
    assert answer["code"] == code, answer
    assert details in answer["details"]


def test_get_model_metadata(serving_server, official_client) -> None:
    answer = official_client("metadata", serving_server.address, model_spec={"name": "digits"})
    assert answer["code"] == "OK", answer
    assert answer["type_url"] == "type.googleapis.com/tensorflow.serving.SignatureDefMap" and answer["unpacked"]
    assert answer["model_spec"] == {"name": "digits", "version": 1, "signature_name": ""}
    signatures = answer["signatures"]
    assert {"serving_default", "bytes", "float"} <= set(signatures)
    outputs = {"scores": {"dtype": "DT_FLOAT", "shape": [-1, 10]},
               "classes": {"dtype": "DT_STRING", "shape": [-1, 10]},
               "top_class": {"dtype": "DT_STRING", "shape": [-1]}}
    expected_inputs = {"serving_default": {"images": {"dtype": "DT_UINT8", "shape": [-1, 32, 32, 3]}},
                       "bytes": {"image_bytes": {"dtype": "DT_STRING", "shape": [-1]}},
                       "float": {"images": {"dtype": "DT_FLOAT", "shape": [-1, 32, 32, 3]}}}
    for name, inputs in expected_inputs.items():
        assert signatures[name] == {"method_name": "tensorflow/serving/predict", "inputs": inputs,
                                    "outputs": outputs}


@pytest.mark.parametrize("model_spec, fields, code, details", [
    ({"name": "digits"}, [], "INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field"),
    ({"name": "digits"}, ["signature_def", "x"], "INVALID_ARGUMENT", "Metadata field x is not supported"),
    ({"name": "nosuch"}, ["signature_def"], "NOT_FOUND", "Servable not found for request: Latest(nosuch)"),
    ({"name": "digits", "version": 2}, ["signature_def"], "NOT_FOUND",
     "Servable not found for request: Specific(digits, 2)"),
])
def test_get_model_metadata_errors(serving_server, official_client, model_spec, fields, code, details) -> None:
    answer = official_client("metadata", serving_server.address, model_spec=model_spec, metadata_field=fields)
    assert (answer["code"], answer["details"]) == (code, details)


def test_get_model_status(serving_server, official_client) -> None:
    for spec in ({"name": "digits"}, {"name": "digits", "version": 1}):
        answer = official_client("status", serving_server.address, model_spec=spec)
        assert answer == {"code": "OK", "model_version_status": [
            {"version": 1, "state": "AVAILABLE", "has_status": True, "error_code": 0, "error_message": ""}]}
    assert official_client("status", serving_server.address, model_spec={"name": "nosuch"}) == {
        "code": "NOT_FOUND", "details": "Could not find any versions of model nosuch"}
    assert official_client("status", serving_server.address, model_spec={"name": "digits", "version": 3}) == {
        "code": "NOT_FOUND", "details": "Could not find version 3 of model digits"}


def test_tensor_content_outputs(small_server, official_client) -> None:
    answer = official_client("predict", small_server.address, model_spec={"name": "digits"}, inputs={"images": DIGIT})
    assert answer["code"] == "OK", answer
    assert all(v["tensor_content"] and not v["typed"] for v in answer["outputs"].values())
    accuracy = official_client("accuracy", small_server.address, signature="bytes", format="png", count=100)
    assert accuracy["code"] == "OK" and accuracy["accuracy"] >= 0.9  # string outputs decoded from tensor_content


def test_full_queue_answers_unavailable(small_server, official_client) -> None:
    answer = official_client("flood", small_server.address, requests=16, batch=512)
    assert answer["code"] == "OK", answer
    codes = answer["codes"]
    assert set(codes) == {"OK", "UNAVAILABLE"} and codes["OK"] >= 1 and codes["UNAVAILABLE"] >= 1, codes
    assert answer["details"]["UNAVAILABLE"] == "The batch scheduling queue to which this task was submitted is full"


def test_restart_keeps_the_port_and_sigterm_exits_cleanly(small_server, official_client) -> None:
    address = small_server.address
    small_server.restart()
    assert small_server.address == address
    assert official_client("status", address, model_spec={"name": "digits"})["code"] == "OK"
    assert small_server.stop() == 0
    assert not small_server.running


def test_start_fails_with_the_servers_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match=r"exited with 2 before becoming ready(.|\n)*no <model>/<version>"):
        ModelServerProcess(tmp_path / "empty", port=0).start()
