"""Predict on a batch of prepared images with retries, and tell images the model rejects from a model that fails.

Every backend (bridge.model.backend) reports a failed call with a canonical status code: gRPC's own, the one a
REST status stands for (bridge.model.rest_errors), or INVALID_ARGUMENT / INTERNAL from the embedded model.

- UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED: retried with exponential backoff and jitter. One retry
  budget covers the whole batch, bisection included; once it is spent, ModelUnusable goes up (the loop pauses).
- UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED, NOT_FOUND, FAILED_PRECONDITION: the server refuses every
  call, or the model is gone: ModelUnusable at once, nothing is dead-lettered.
- INVALID_ARGUMENT, or any other failure (INTERNAL, UNKNOWN, an answer the bridge cannot read): the batch is split
  in halves until the failing images are alone. An image is dead-lettered only when the model is shown to work:
  another image of the same batch was classified, or a probe with a known-good input succeeds. If the probe
  fails too, the failure is the model's, not the images': ModelUnusable (the breaker), and nothing is
  dead-lettered.

The labels output is fetched until it is learnt to be one fixed class list (bridge.model.labels), then only
now and then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tenacity

from bridge.errors import (ModelGone, ModelNotFound, ModelRejectedInput, ModelServerError, ModelServerRefused,
                           ModelServerUnavailable, ModelUnusable, PredictionRejected, SignatureError, SystemFailure)
from bridge.model.backend import ModelBackend, Prediction
from bridge.model.labels import FixedLabels
from bridge.records import ClassScore
from bridge.model.signature import ImageSignature, InputKind

log = logging.getLogger(__name__)

PreparedImage = np.ndarray | bytes


@dataclass(frozen=True)
class RetryPolicy:
    budget: float = 30.0  # seconds of retrying one batch (bisection included) before giving up
    initial_backoff: float = 0.1
    max_backoff: float = 5.0


@dataclass(frozen=True)
class Classified:
    """The classes of one image, and which model version said so."""

    predictions: list[ClassScore]
    model_name: str
    model_version: int
    signature_name: str


ImageOutcome = Classified | PredictionRejected


def top_k(scores: np.ndarray, labels: Sequence[bytes] | None, k: int) -> list[ClassScore]:
    """The k best (label, score) pairs of one image; labels default to class indices."""
    order = np.argsort(-scores, kind="stable")[:k]
    if labels is None:
        return [ClassScore(str(int(i)), float(scores[i])) for i in order]
    return [ClassScore(labels[i].decode("utf-8", "replace"), float(scores[i])) for i in order]


def stack(signature: ImageSignature, images: Sequence[PreparedImage]) -> np.ndarray | list[bytes]:
    """Prepared images as one Predict input: an [N, H, W, 3] array, or a list of encoded images."""
    if signature.input_kind is InputKind.ENCODED:
        return [bytes(image) for image in images]
    return np.stack(images)


class Predictor:
    """Turns a batch of prepared images into one outcome per image. Safe to call from several threads."""

    def __init__(self, client: ModelBackend, signature: ImageSignature, probe_image: PreparedImage,
                 top_k: int = 5, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] | None = None, interrupt: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_retry: Callable[[str], None] = lambda code: None) -> None:
        """probe_image: a prepared image the model is known to classify (images.preprocess.probe_png(), prepared).
        interrupt: once set (shutdown), retrying stops and ModelUnusable goes up at once.
        on_retry: told the gRPC code name of each failed call that is retried."""
        self.client = client
        self.signature = signature
        self.probe_image = probe_image
        self.top_k = top_k
        self.retry = retry
        self.interrupt = interrupt or threading.Event()
        self.sleep = sleep or self.interrupt.wait  # an interruptible time.sleep
        self.clock = clock
        self.on_retry = on_retry
        self.labels = FixedLabels()

    def predict(self, images: Sequence[PreparedImage]) -> list[ImageOutcome]:
        """One outcome per image, in order. Raises ModelUnusable when the model server fails as a whole."""
        deadline = self.clock() + self.retry.budget
        outcomes = self._bisect(list(images), deadline)
        if outcomes and not any(isinstance(outcome, Classified) for outcome in outcomes):
            self._probe(deadline)
        return outcomes

    def check_health(self) -> None:
        """Whether the model serves again: AVAILABLE, the same signature, and a real Predict that succeeds.

        Raises ModelUnusable if not yet, ModelGone if the signature is no longer the one the bridge started with.
        """
        try:
            if not any(status.state == "AVAILABLE" for status in self.client.status()):
                raise ModelUnusable(f"{self.client.target.describe()} has no AVAILABLE version")
            signature = self.client.signature()
        except ModelServerError as exc:
            raise ModelUnusable(str(exc)) from exc
        except SignatureError as exc:
            raise ModelGone(f"{self.client.target.describe()} changed: {exc}") from exc
        if signature != self.signature:
            raise ModelGone(f"the serving signature changed from {self.signature.describe()} to "
                            f"{signature.describe()}; restart the bridge to use the new one")
        self._probe(deadline=self.clock() + self.retry.initial_backoff)  # one attempt: the pause loop asks again

    def _bisect(self, images: list[PreparedImage], deadline: float) -> list[ImageOutcome]:
        if not images:
            return []
        try:
            return self._classify(images, deadline)
        except SystemFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - INVALID_ARGUMENT, INTERNAL, an unreadable answer: whose fault?
            if len(images) == 1:
                return [PredictionRejected(f"model rejected the image: {exc}")]
            if not isinstance(exc, ModelRejectedInput):
                self._probe(deadline)  # a server failing every call needs no bisection to prove it
            log.info("model rejected a batch of %d (%s); bisecting to find the bad image(s)", len(images), exc)
            middle = len(images) // 2
            return self._bisect(images[:middle], deadline) + self._bisect(images[middle:], deadline)

    def _probe(self, deadline: float) -> None:
        """Predict on the known-good image; ModelUnusable if the model fails it too."""
        try:
            self._classify([self.probe_image], deadline)
        except SystemFailure:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ModelUnusable(f"the model fails a known-good input too: {exc}") from exc

    def _classify(self, images: list[PreparedImage], deadline: float) -> list[Classified]:
        batch = stack(self.signature, images)
        with_labels = self.signature.labels_output is not None and self.labels.wanted()
        prediction = self._call(batch, deadline, with_labels)
        if self.signature.labels_output and not with_labels and self.labels.row(prediction.model_version) is None:
            with_labels = True  # a version whose labels are not learnt yet (the model was reloaded): ask again
            prediction = self._call(batch, deadline, with_labels)
        scores = prediction.outputs.get(self.signature.scores_output)
        if scores is None or scores.ndim != 2 or scores.shape[0] != len(images):
            raise ModelServerError(f"model answered {None if scores is None else scores.shape} for "
                                   f"{len(images)} images in output {self.signature.scores_output!r}")
        labels = self._labels(prediction, scores, with_labels)
        return [
            Classified(top_k(scores[i], None if labels is None else labels[i], self.top_k),
                       prediction.model_name, prediction.model_version, prediction.signature_name)
            for i in range(len(images))
        ]

    def _labels(self, prediction: Prediction, scores: np.ndarray, fetched: bool) -> Sequence[np.ndarray] | None:
        """One labels row per image: from the answer, or the version's fixed row when it was not fetched."""
        if not self.signature.labels_output:
            return None
        if not fetched:
            row = self.labels.row(prediction.model_version)
            return None if row is None else [row] * len(scores)
        labels = prediction.outputs.get(self.signature.labels_output)
        if labels is not None and labels.shape == scores.shape:
            self.labels.observe(prediction.model_version, labels, scores)
        return labels

    def _call(self, batch: np.ndarray | list[bytes], deadline: float, with_labels: bool) -> Prediction:
        if self.clock() >= deadline:  # no call starts after the budget: a batch takes at most budget + one call
            raise ModelUnusable("the retry budget is spent")
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(ModelServerUnavailable),
            wait=tenacity.wait_exponential_jitter(multiplier=self.retry.initial_backoff, max=self.retry.max_backoff,
                                                 jitter=self.retry.initial_backoff),
            stop=self._out_of_time(deadline),
            sleep=self.sleep,
            before_sleep=self._retrying,
            reraise=True,
        )
        try:
            return retrying(self.client.predict_images, self.signature, batch, with_labels=with_labels)
        except ModelServerUnavailable as exc:
            raise ModelUnusable(f"model server unavailable beyond the retry budget: {exc}") from exc
        except (ModelServerRefused, ModelNotFound) as exc:
            raise ModelUnusable(str(exc)) from exc

    def _retrying(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("Predict failed (%s); retry %d", error, state.attempt_number)
        code = getattr(error, "code", None)
        self.on_retry(code.name if code is not None else "UNKNOWN")

    def _out_of_time(self, deadline: float) -> Callable[[tenacity.RetryCallState], bool]:
        def stop(state: tenacity.RetryCallState) -> bool:
            wait = state.upcoming_sleep or 0.0
            return self.interrupt.is_set() or self.clock() + wait >= deadline
        return stop
