"""Learn whether a model's labels output is one fixed list of classes, so that Predict need not fetch it each call.

A classifier's labels output is usually the class list repeated on every row: for MobileNetV2 with 1000
classes and a batch of 32 that is 32,000 strings per answer, serialized by the server and parsed by the
bridge, to say the same thing every time. But a model may also return its top classes in score order, where
the labels follow the input. So the labels of a model version count as fixed only once `confirmations`
answers of that version, each of at least two images, had identical label rows and scores that were not
sorted in every row (a top-k model's are). Until then every call fetches labels; any answer that contradicts
it (rows that differ, or a row unlike the learnt one) makes every later call fetch them, for good. One call in
`recheck_every` still fetches labels and is checked against what was learnt.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

log = logging.getLogger(__name__)


class FixedLabels:
    """What has been learnt about one model's labels output, by version. Thread-safe."""

    def __init__(self, confirmations: int = 3, recheck_every: int = 100) -> None:
        self.confirmations = confirmations
        self.recheck_every = recheck_every
        self._lock = threading.Lock()
        self._rows: dict[int, np.ndarray] = {}  # version -> its fixed labels
        self._seen: dict[int, int] = {}  # version -> answers that confirmed fixed labels so far
        self._calls = 0
        self.follow_input = False  # learnt that labels differ between images: always fetch them

    def wanted(self) -> bool:
        """Whether the next call should fetch labels."""
        with self._lock:
            if self.follow_input or not self._rows:
                return True
            self._calls += 1
            return self._calls % self.recheck_every == 0

    def row(self, version: int) -> np.ndarray | None:
        """The fixed labels of a version, once learnt."""
        with self._lock:
            return None if self.follow_input else self._rows.get(version)

    def observe(self, version: int, labels: np.ndarray, scores: np.ndarray) -> None:
        """Learn from an answer that has labels [N, C] beside its scores [N, C]."""
        first = labels[0] if len(labels) else None
        same_rows = first is None or bool((labels == first).all())
        with self._lock:
            known = self._rows.get(version)
            if not same_rows or (known is not None and not np.array_equal(known, first)):
                if not self.follow_input:
                    log.info("the model's labels differ between answers; fetching them on every call")
                self.follow_input, self._rows = True, {}
                return
            if known is not None or len(labels) < 2 or _sorted_rows(scores):
                return
            self._seen[version] = self._seen.get(version, 0) + 1
            if self._seen[version] >= self.confirmations:
                self._rows[version] = first.copy()
                log.info("model version %d has one fixed list of %d labels; no longer fetching them on every call",
                         version, len(first))


def _sorted_rows(scores: np.ndarray) -> bool:
    """Whether every row's scores are in descending order, as a top-k output's are."""
    return bool((np.diff(scores, axis=1) <= 0).all())
