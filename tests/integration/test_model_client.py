"""The bridge's gRPC client against the TF-Serving-compatible model server on real TensorFlow."""

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from bridge.errors import ModelNotFound, ModelRejectedInput, ModelServerUnavailable
from bridge.model.backend import ModelTarget
from bridge.model.grpc_backend import MAX_RECONNECT_BACKOFF_MS, GrpcBackend
from bridge.model.signature import InputKind
from scripts.kafka_local import free_port

pytestmark = pytest.mark.integration

BATCH = 32


def client_for(model_server, **target) -> GrpcBackend:
    return GrpcBackend(model_server.address, ModelTarget(**{"name": "digits", **target}), timeout=30)


def accuracy(labels, expected) -> float:
    return float(np.mean([got == want for got, want in zip(labels, expected)]))


def top_labels(prediction, signature) -> list[str]:
    scores = prediction.outputs[signature.scores_output]
    classes = prediction.outputs[signature.labels_output]
    return [row[np.argmax(s)].decode() for row, s in zip(classes, scores)]


def test_status_and_signature_describe_the_served_model(model_server):
    with client_for(model_server) as client:
        assert [(s.version, s.state) for s in client.status()] == [(1, "AVAILABLE")]
        assert client.is_available()
        signature = client.signature()
    assert signature.input_kind is InputKind.UINT8
    assert signature.image_size == (32, 32)
    assert (signature.scores_output, signature.labels_output) == ("scores", "classes")


@pytest.mark.parametrize("signature_name", ["serving_default", "float"])
def test_pixel_batches_are_classified_correctly(model_server, held_out, signature_name):
    with client_for(model_server, signature_name=signature_name) as client:
        signature = client.signature()
        labels = []
        for start in range(0, len(held_out), BATCH):
            pixels = np.stack([image.pixels for image in held_out[start:start + BATCH]])
            if signature.input_kind is InputKind.FLOAT32:
                pixels = pixels.astype(np.float32) / 255.0
            prediction = client.predict_images(signature, pixels)
            assert prediction.model_version == 1
            assert prediction.signature_name == signature_name
            labels += top_labels(prediction, signature)
    assert len(labels) == len(held_out)
    assert accuracy(labels, [image.label for image in held_out]) >= 0.90


def test_encoded_png_and_jpeg_batches_are_classified_correctly(model_server, held_out):
    with client_for(model_server, signature_name="bytes") as client:
        signature = client.signature()
        assert signature.input_kind is InputKind.ENCODED
        labels = []
        for start in range(0, len(held_out), BATCH):
            batch = [image.body for image in held_out[start:start + BATCH]]
            labels += top_labels(client.predict_images(signature, batch), signature)
    assert accuracy(labels, [image.label for image in held_out]) >= 0.90


def test_a_batch_bigger_than_grpcs_default_4mb_goes_through(model_server):
    with client_for(model_server) as client:
        signature = client.signature()
        pixels = np.random.default_rng(0).integers(0, 255, (2048, 32, 32, 3), dtype=np.uint8)  # 6.3 MB
        prediction = client.predict_images(signature, pixels)
    assert prediction.outputs["scores"].shape == (2048, 10)


def one_image(dtype=np.uint8):
    return np.zeros((1, 32, 32, 3), dtype=dtype)


@pytest.mark.parametrize("target, inputs, error, code", [
    ({"name": "nosuch"}, {"images": one_image()}, ModelNotFound, grpc.StatusCode.NOT_FOUND),
    ({"version": 7}, {"images": one_image()}, ModelNotFound, grpc.StatusCode.NOT_FOUND),
    ({"version_label": "canary"}, {"images": one_image()}, ModelRejectedInput, grpc.StatusCode.INVALID_ARGUMENT),
    ({"signature_name": "nosuch"}, {"images": one_image()}, ModelNotFound, grpc.StatusCode.FAILED_PRECONDITION),
    ({}, {"pixels": one_image()}, ModelRejectedInput, grpc.StatusCode.INVALID_ARGUMENT),
    ({}, {"images": one_image(np.float32)}, ModelRejectedInput, grpc.StatusCode.INVALID_ARGUMENT),
    ({"signature_name": "bytes"}, {"image_bytes": [b"definitely not an image"]}, ModelRejectedInput,
     grpc.StatusCode.INVALID_ARGUMENT),
])
def test_model_server_errors_reach_the_client_with_tf_servings_codes(model_server, target, inputs, error, code):
    with client_for(model_server, **target) as client:
        with pytest.raises(error) as raised:
            client.predict(inputs)
    assert raised.value.code == code


def test_status_of_an_unknown_model_is_not_found(model_server):
    with client_for(model_server, name="nosuch") as client:
        with pytest.raises(ModelNotFound, match="NOT_FOUND"):
            client.status()


def test_an_unreachable_server_is_unavailable_not_a_crash():
    with GrpcBackend(f"127.0.0.1:{free_port()}", ModelTarget("digits"), timeout=1) as client:
        assert not client.is_available()
        with pytest.raises(ModelServerUnavailable):
            client.predict({"images": one_image()})


def test_a_server_back_after_an_outage_is_found_within_the_reconnect_backoff_cap(models_dir):
    from serving.process import ModelServerProcess

    server = ModelServerProcess(models_dir, free_port())
    server.start()
    try:
        with client_for(server) as client:
            assert client.is_available()
            server.stop()
            down_until = time.monotonic() + 10  # long enough for gRPC's default backoff to grow past 5 s
            while time.monotonic() < down_until:
                assert not client.is_available(timeout=0.5)
                time.sleep(0.5)
            server.start()
            back = time.monotonic()
            while not client.is_available(timeout=0.5) and time.monotonic() - back < 30:
                time.sleep(0.05)
            found_after = time.monotonic() - back
    finally:
        server.stop()
    assert found_after < 1 + MAX_RECONNECT_BACKOFF_MS / 1000, f"found the server {found_after:.1f} s after it was back"


def test_a_full_request_queue_answers_unavailable(models_dir):
    from serving.process import ModelServerProcess

    server = ModelServerProcess(models_dir, free_port(), extra_args=("--max-queued-requests", "1", "--workers", "1"))
    server.start()
    try:
        pixels = np.zeros((512, 32, 32, 3), dtype=np.uint8)
        with client_for(server) as client, ThreadPoolExecutor(16) as pool:
            def attempt(_):
                try:
                    client.predict({"images": pixels})
                    return "ok"
                except ModelServerUnavailable as exc:
                    return exc.code
            outcomes = list(pool.map(attempt, range(32)))
    finally:
        server.stop()
    assert "ok" in outcomes
    assert grpc.StatusCode.UNAVAILABLE in outcomes


def test_responses_in_tensor_content_form_decode_the_same(models_dir, held_out):
    """A server started like TF Serving with --enable_serialization_as_tensor_content (strings packed too)."""
    from serving.process import ModelServerProcess

    server = ModelServerProcess(models_dir, free_port(), extra_args=("--tensor-content",))
    server.start()
    try:
        with client_for(server) as client:
            signature = client.signature()
            prediction = client.predict_images(signature, np.stack([image.pixels for image in held_out[:64]]))
    finally:
        server.stop()
    assert prediction.outputs["classes"][0].tolist() == [str(d).encode() for d in range(10)]
    assert accuracy(top_labels(prediction, signature), [image.label for image in held_out[:64]]) >= 0.90
