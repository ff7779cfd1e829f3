"""Retries and bisection, with a fake model server client (no network)."""

import threading

import grpc
import numpy as np
import pytest

from bridge.errors import (ModelNotFound, ModelRejectedInput, ModelServerError, ModelServerUnavailable,
                           PredictionRejected)
from bridge.model_client import ModelTarget, Prediction as ModelAnswer
from bridge.predictor import Classified, Predictor, RetryPolicy, top_k
from bridge.signature import ImageSignature, InputKind, TensorSpec
from bridge.tensors import DataType

SIGNATURE = ImageSignature("serving_default", TensorSpec("images", DataType.DT_UINT8, (-1, 2, 2, 3)),
                           InputKind.UINT8, "scores", "classes")
LABELS = [b"zero", b"one", b"two"]


class StackingPreprocessor:
    def batch(self, items):
        return np.stack(items)


class FakeClient:
    """Answers like TF Serving: class = the image's first pixel value; images whose pixel is 99 are invalid."""

    def __init__(self, failures=(), signature=SIGNATURE):
        self.failures = list(failures)  # exceptions to raise before answering
        self.calls = []
        self.target = ModelTarget("digits")
        self.current_signature = signature  # what GetModelMetadata says now

    def is_available(self):
        return True

    def signature(self):
        return self.current_signature

    def predict_images(self, signature, batch):
        self.calls.append(len(batch))
        if self.failures:
            raise self.failures.pop(0)
        if (batch[:, 0, 0, 0] == 99).any():
            raise ModelRejectedInput("Predict: INVALID_ARGUMENT: bad image", grpc.StatusCode.INVALID_ARGUMENT)
        scores = np.zeros((len(batch), 3), dtype=np.float32)
        scores[np.arange(len(batch)), batch[:, 0, 0, 0]] = 1.0
        return ModelAnswer({"scores": scores, "classes": np.array([LABELS] * len(batch), dtype=object)},
                           "digits", 4, "serving_default")


def image(value):
    return np.full((2, 2, 3), value, dtype=np.uint8)


def predictor(client, budget=5.0, **kwargs):
    return Predictor(client, SIGNATURE, StackingPreprocessor(), top_k=2,
                     retry=RetryPolicy(budget=budget, initial_backoff=0.001, max_backoff=0.002),
                     sleep=lambda _: None, **kwargs)


def test_each_image_gets_its_top_k_classes_and_the_version_that_answered():
    outcomes = predictor(FakeClient()).predict([image(2), image(0)])
    assert [o.predictions[0].label for o in outcomes] == ["two", "zero"]
    assert all(len(o.predictions) == 2 and o.model_version == 4 for o in outcomes)


def test_bisection_isolates_only_the_rejected_images():
    client = FakeClient()
    images = [image(1), image(2), image(99), image(0), image(1), image(2), image(99), image(0)]
    outcomes = predictor(client).predict(images)
    rejected = [i for i, o in enumerate(outcomes) if isinstance(o, PredictionRejected)]
    assert rejected == [2, 6]
    assert [o.predictions[0].label for o in outcomes if isinstance(o, Classified)] == \
        ["one", "two", "zero", "one", "two", "zero"]
    assert "INVALID_ARGUMENT" in str(outcomes[2])
    assert len(client.calls) < 2 * len(images)  # halves, not one call per image


def test_unavailable_is_retried_then_succeeds():
    unavailable = ModelServerUnavailable("Predict: UNAVAILABLE", grpc.StatusCode.UNAVAILABLE)
    client = FakeClient(failures=[unavailable, unavailable])
    outcomes = predictor(client).predict([image(1)])
    assert outcomes[0].predictions[0].label == "one"
    assert client.calls == [1, 1, 1]


def test_unavailable_beyond_the_retry_budget_goes_up():
    unavailable = ModelServerUnavailable("Predict: UNAVAILABLE", grpc.StatusCode.UNAVAILABLE)
    client = FakeClient(failures=[unavailable] * 10_000)
    with pytest.raises(ModelServerUnavailable):
        predictor(client, budget=0.05).predict([image(1)])
    assert len(client.calls) > 1


def test_an_interrupt_stops_retrying_at_once():
    unavailable = ModelServerUnavailable("Predict: UNAVAILABLE", grpc.StatusCode.UNAVAILABLE)
    client = FakeClient(failures=[unavailable] * 10_000)
    interrupt = threading.Event()
    interrupt.set()
    with pytest.raises(ModelServerUnavailable):
        predictor(client, budget=3600, interrupt=interrupt).predict([image(1)])
    assert len(client.calls) == 1


def test_top_k_orders_by_score_and_falls_back_to_indices():
    scores = np.array([0.1, 0.7, 0.2], dtype=np.float32)
    assert [(p.label, round(p.score, 2)) for p in top_k(scores, None, 2)] == [("1", 0.7), ("2", 0.2)]
    assert [p.label for p in top_k(scores, LABELS, 5)] == ["one", "two", "zero"]


def test_images_all_rejected_by_an_unchanged_model_are_dead_letters():
    outcomes = predictor(FakeClient()).predict([image(99), image(99)])
    assert all(isinstance(o, PredictionRejected) for o in outcomes)


def test_all_rejected_because_the_model_changed_pauses_instead_of_dead_lettering_everything():
    changed = ImageSignature("serving_default", TensorSpec("pixels", DataType.DT_UINT8, (-1, 2, 2, 3)),
                             InputKind.UINT8, "scores", "classes")
    client = FakeClient(signature=changed)
    with pytest.raises(ModelServerUnavailable, match="no longer"):
        predictor(client).predict([image(99), image(99), image(99)])


def test_a_model_unloaded_mid_stream_is_waited_for_not_dead_lettered():
    client = FakeClient(failures=[ModelNotFound("Predict: NOT_FOUND: Servable not found", grpc.StatusCode.NOT_FOUND)])
    with pytest.raises(ModelServerUnavailable, match="NOT_FOUND"):
        predictor(client).predict([image(1), image(2)])


def test_an_internal_error_caused_by_one_image_is_isolated_like_a_rejection():
    client = FakeClient(failures=[ModelServerError("Predict: INTERNAL: boom", grpc.StatusCode.INTERNAL)])
    outcomes = predictor(client).predict([image(1), image(2)])
    assert [type(o).__name__ for o in outcomes] == ["Classified", "Classified"]  # the retry of the halves succeeds
