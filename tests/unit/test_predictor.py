"""Retries, bisection and the failure classification, with a fake model server client (no network)."""

import threading

import grpc
import numpy as np
import pytest

from bridge.errors import (ModelGone, ModelNotFound, ModelRejectedInput, ModelServerError, ModelServerRefused,
                           ModelServerUnavailable, ModelUnusable, PredictionRejected)
from bridge.model.backend import ModelTarget, Prediction as ModelAnswer, VersionStatus
from bridge.model.predictor import Classified, Predictor, RetryPolicy, top_k
from bridge.model.signature import ImageSignature, InputKind, TensorSpec
from bridge.model.tensors import DataType

SIGNATURE = ImageSignature("serving_default", TensorSpec("images", DataType.DT_UINT8, (-1, 2, 2, 3)),
                           InputKind.UINT8, "scores", "classes")
LABELS = [b"zero", b"one", b"two"]
PROBE = np.full((2, 2, 3), 0, dtype=np.uint8)


class FakeClient:
    """Answers like TF Serving: class = the image's first pixel value; images whose pixel is 99 are invalid.

    failures: exceptions raised by the next calls, in turn; always: an exception raised by every call."""

    def __init__(self, failures=(), always=None, signature=SIGNATURE, state="AVAILABLE"):
        self.failures = list(failures)
        self.always = always
        self.calls = []
        self.label_calls = []  # whether each call asked for labels
        self.version = 4
        self.target = ModelTarget("digits")
        self.current_signature = signature  # what GetModelMetadata says now
        self.state = state

    def status(self):
        return [VersionStatus(1, self.state)]

    def signature(self):
        return self.current_signature

    def predict_images(self, signature, batch, with_labels=True):
        self.calls.append(len(batch))
        self.label_calls.append(with_labels)
        if self.failures:
            raise self.failures.pop(0)
        if self.always is not None:
            raise self.always
        if (batch[:, 0, 0, 0] == 99).any():
            raise ModelRejectedInput("Predict: INVALID_ARGUMENT: bad image", grpc.StatusCode.INVALID_ARGUMENT)
        scores = np.zeros((len(batch), 3), dtype=np.float32)
        scores[np.arange(len(batch)), batch[:, 0, 0, 0]] = 1.0
        outputs = {"scores": scores}
        if with_labels:
            outputs["classes"] = np.array([LABELS] * len(batch), dtype=object)
        return ModelAnswer(outputs, "digits", self.version, "serving_default")


def image(value):
    return np.full((2, 2, 3), value, dtype=np.uint8)


def predictor(client, budget=5.0, **kwargs):
    return Predictor(client, SIGNATURE, PROBE, top_k=2,
                     retry=RetryPolicy(budget=budget, initial_backoff=0.001, max_backoff=0.002),
                     sleep=lambda _: None, **kwargs)


def error(code):
    kinds = {grpc.StatusCode.INVALID_ARGUMENT: ModelRejectedInput, grpc.StatusCode.UNAVAILABLE: ModelServerUnavailable,
             grpc.StatusCode.NOT_FOUND: ModelNotFound, grpc.StatusCode.UNAUTHENTICATED: ModelServerRefused,
             grpc.StatusCode.PERMISSION_DENIED: ModelServerRefused, grpc.StatusCode.UNIMPLEMENTED: ModelServerRefused}
    return kinds.get(code, ModelServerError)(f"Predict: {code.name}: injected", code)


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


def test_unavailable_beyond_the_retry_budget_makes_the_model_unusable():
    client = FakeClient(always=error(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(ModelUnusable, match="retry budget"):
        predictor(client, budget=0.05).predict([image(1)])
    assert len(client.calls) > 1


def test_an_interrupt_stops_retrying_at_once():
    client = FakeClient(always=error(grpc.StatusCode.UNAVAILABLE))
    interrupt = threading.Event()
    interrupt.set()
    with pytest.raises(ModelUnusable):
        predictor(client, budget=3600, interrupt=interrupt).predict([image(1)])
    assert len(client.calls) == 1


def test_top_k_orders_by_score_and_falls_back_to_indices():
    scores = np.array([0.1, 0.7, 0.2], dtype=np.float32)
    assert [(p.label, round(p.score, 2)) for p in top_k(scores, None, 2)] == [("1", 0.7), ("2", 0.2)]
    assert [p.label for p in top_k(scores, LABELS, 5)] == ["one", "two", "zero"]


def test_images_all_rejected_while_the_probe_passes_are_dead_letters():
    client = FakeClient()
    outcomes = predictor(client).predict([image(99), image(99)])
    assert all(isinstance(o, PredictionRejected) for o in outcomes)
    assert client.calls[-1] == 1  # the probe: one known-good image


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND])
def test_a_server_refusing_the_bridge_is_unusable_at_once_without_bisection(code):
    client = FakeClient(always=error(code))
    with pytest.raises(ModelUnusable, match=code.name):
        predictor(client).predict([image(1), image(2), image(0), image(1)])
    assert client.calls == [4]


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS])
def test_a_server_failing_every_call_is_unusable_after_one_probe_not_a_bisection(code):
    client = FakeClient(always=error(code))
    with pytest.raises(ModelUnusable, match="known-good input"):
        predictor(client).predict([image(1), image(2), image(0), image(1)])
    assert client.calls == [4, 1]


def test_every_image_rejected_and_the_probe_rejected_too_is_the_models_failure():
    client = FakeClient(always=error(grpc.StatusCode.INVALID_ARGUMENT))
    with pytest.raises(ModelUnusable, match="known-good input"):
        predictor(client).predict([image(1), image(2)])


def test_a_single_image_failing_with_internal_while_the_probe_passes_is_its_dead_letter():
    client = FakeClient(failures=[error(grpc.StatusCode.INTERNAL)])
    outcomes = predictor(client).predict([image(1)])
    assert isinstance(outcomes[0], PredictionRejected) and "INTERNAL" in str(outcomes[0])


def test_an_internal_error_that_a_sub_batch_does_not_reproduce_is_not_dead_lettered():
    client = FakeClient(failures=[error(grpc.StatusCode.INTERNAL)])
    outcomes = predictor(client).predict([image(1), image(2)])
    assert [type(o).__name__ for o in outcomes] == ["Classified", "Classified"]  # probe, then the halves succeed


def test_bisection_shares_one_retry_budget():
    clock = FakeClock()
    # The batch is rejected, then every call of the bisection finds the server unavailable.
    client = FakeClient(failures=[error(grpc.StatusCode.INVALID_ARGUMENT)], always=error(grpc.StatusCode.UNAVAILABLE))
    client.predict_images = clock.ticking(client.predict_images, 1.0)  # every call takes 1 s
    with pytest.raises(ModelUnusable, match="retry budget"):
        Predictor(client, SIGNATURE, PROBE, retry=RetryPolicy(budget=10, initial_backoff=0.5, max_backoff=0.5),
                  sleep=clock.sleep, clock=clock).predict([image(1), image(99), image(2), image(99)])
    assert len(client.calls) > 2  # it did bisect
    assert clock.now <= 11.0  # budget + at most the one call that started before it ran out


def test_an_answer_without_the_scores_output_is_not_an_image_rejection():
    client = FakeClient()
    client.predict_images = lambda signature, batch, with_labels: ModelAnswer({}, "digits", 4, "serving_default")
    with pytest.raises(ModelUnusable, match="known-good input"):
        predictor(client).predict([image(1), image(2)])


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def ticking(self, call, seconds):
        def timed(*args, **kwargs):
            self.now += seconds
            return call(*args, **kwargs)
        return timed


def test_health_needs_available_the_same_signature_and_a_real_predict():
    assert predictor(FakeClient()).check_health() is None
    with pytest.raises(ModelUnusable, match="no AVAILABLE"):
        predictor(FakeClient(state="LOADING")).check_health()
    with pytest.raises(ModelUnusable, match="UNAUTHENTICATED"):
        predictor(FakeClient(always=error(grpc.StatusCode.UNAUTHENTICATED))).check_health()
    with pytest.raises(ModelUnusable, match="known-good input"):
        predictor(FakeClient(always=error(grpc.StatusCode.INTERNAL))).check_health()


def test_health_with_a_changed_signature_means_the_model_is_gone():
    changed = ImageSignature("serving_default", TensorSpec("pixels", DataType.DT_UINT8, (-1, 2, 2, 3)),
                             InputKind.UINT8, "scores", "classes")
    with pytest.raises(ModelGone, match="signature changed"):
        predictor(FakeClient(signature=changed)).check_health()


def test_a_health_check_is_one_attempt_not_a_retry_budget():
    client = FakeClient(always=error(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(ModelUnusable):
        predictor(client, budget=3600).check_health()
    assert client.calls == [1]
