"""Predict on a batch of prepared images with retries, and isolate bad images by bisection.

- UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED: retried with exponential backoff and jitter until the
  retry budget is spent, then ModelServerUnavailable goes up (the run loop pauses and waits for the server).
- INVALID_ARGUMENT for a batch: split it in halves and retry each, until the image(s) the model rejects are
  alone; only they become PredictionRejected, the rest are classified.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tenacity

from bridge.errors import (ModelNotFound, ModelServerError, ModelServerUnavailable, PredictionRejected,
                           SignatureError)
from bridge.model_client import ModelServerClient
from bridge.preprocess import Preprocessor
from bridge.records import Prediction
from bridge.signature import ImageSignature

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    budget: float = 30.0  # seconds of retrying one Predict before giving up
    initial_backoff: float = 0.1
    max_backoff: float = 5.0


@dataclass(frozen=True)
class Classified:
    """The classes of one image, and which model version said so."""

    predictions: list[Prediction]
    model_name: str
    model_version: int
    signature_name: str


ImageOutcome = Classified | PredictionRejected


def top_k(scores: np.ndarray, labels: Sequence[bytes] | None, k: int) -> list[Prediction]:
    """The k best (label, score) pairs of one image; labels default to class indices."""
    order = np.argsort(-scores, kind="stable")[:k]
    if labels is None:
        return [Prediction(str(int(i)), float(scores[i])) for i in order]
    return [Prediction(labels[i].decode("utf-8", "replace"), float(scores[i])) for i in order]


class Predictor:
    """Turns a batch of prepared images into one outcome per image."""

    def __init__(self, client: ModelServerClient, signature: ImageSignature, preprocessor: Preprocessor,
                 top_k: int = 5, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] | None = None, interrupt: threading.Event | None = None) -> None:
        """interrupt: once set (shutdown), retrying stops and ModelServerUnavailable goes up at once."""
        self.client = client
        self.signature = signature
        self.preprocessor = preprocessor
        self.top_k = top_k
        self.retry = retry
        self.interrupt = interrupt or threading.Event()
        self.sleep = sleep or self.interrupt.wait  # an interruptible time.sleep

    def predict(self, images: Sequence[np.ndarray | bytes]) -> list[ImageOutcome]:
        """One outcome per image, in order.

        Raises ModelServerUnavailable when the retry budget is spent, or when the model itself became unusable
        (unloaded, or every image rejected because its signature changed): then nothing is dead-lettered.
        """
        outcomes = self._bisect(images)
        if outcomes and all(isinstance(o, PredictionRejected) for o in outcomes) and not self._model_unchanged():
            raise ModelServerUnavailable(f"{self.client.target.describe()} rejects every image and is no longer "
                                         "the model the bridge started with")
        return outcomes

    def _bisect(self, images: Sequence[np.ndarray | bytes]) -> list[ImageOutcome]:
        if not images:
            return []
        try:
            return self._classify(images)
        except ModelNotFound as exc:  # unloaded while running: wait for it rather than dead-letter everything
            raise ModelServerUnavailable(str(exc), exc.code) from exc
        except ModelServerUnavailable:
            raise
        except ModelServerError as exc:  # INVALID_ARGUMENT, or INTERNAL/UNKNOWN: find the image(s) that cause it
            if len(images) == 1:
                return [PredictionRejected(f"model rejected the image: {exc}")]
            middle = len(images) // 2
            log.info("model rejected a batch of %d (%s); bisecting to find the bad image(s)", len(images), exc)
            return self._bisect(images[:middle]) + self._bisect(images[middle:])

    def _model_unchanged(self) -> bool:
        try:
            return self.client.is_available() and self.client.signature() == self.signature
        except (ModelServerError, SignatureError):
            return False

    def _classify(self, images: Sequence[np.ndarray | bytes]) -> list[ImageOutcome]:
        batch = self.preprocessor.batch(list(images))
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(ModelServerUnavailable),
            wait=tenacity.wait_exponential_jitter(multiplier=self.retry.initial_backoff, max=self.retry.max_backoff,
                                                 jitter=self.retry.initial_backoff),
            stop=tenacity.stop_after_delay(self.retry.budget) | tenacity.stop_when_event_set(self.interrupt),
            sleep=self.sleep,
            before_sleep=lambda state: log.warning("Predict failed (%s); retry %d",
                                                   state.outcome.exception(), state.attempt_number),
            reraise=True,
        )
        prediction = retrying(self.client.predict_images, self.signature, batch)
        scores = prediction.outputs[self.signature.scores_output]
        labels = prediction.outputs.get(self.signature.labels_output) if self.signature.labels_output else None
        if scores.shape[0] != len(images):
            raise SignatureError(f"model answered {scores.shape[0]} rows for {len(images)} images")
        return [
            Classified(top_k(scores[i], None if labels is None else labels[i], self.top_k),
                       prediction.model_name, prediction.model_version, prediction.signature_name)
            for i in range(len(images))
        ]
