"""The transform: records in, one Result or DeadLetter per record out, in the same order.

parse -> fetch + preprocess (a bounded thread pool) -> Predict batches (up to max_batch_size images, or whatever
is ready after batch_linger; at most max_in_flight batches at once) -> top-k. Pure with respect to Kafka: it
never touches a consumer or producer. If the model server stays unavailable beyond the retry budget, the whole
call raises ModelServerUnavailable and produces nothing, so the caller can redo the records later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from bridge.errors import RecordError
from bridge.fetch import ImageFetcher
from bridge.predictor import Classified, Predictor
from bridge.preprocess import Preprocessor
from bridge.records import DeadLetter, ImageRequest, Outcome, Record, Result, parse_request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int = 32
    linger: float = 0.02  # seconds to wait for a fuller batch once one image is ready
    max_in_flight: int = 2


class Pipeline:
    def __init__(self, fetcher: ImageFetcher, preprocessor: Preprocessor, predictor: Predictor,
                 batching: BatchingPolicy = BatchingPolicy(), fetch_concurrency: int = 16,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fetcher = fetcher
        self.preprocessor = preprocessor
        self.predictor = predictor
        self.batching = batching
        self.clock = clock
        self._loaders = ThreadPoolExecutor(fetch_concurrency, thread_name_prefix="fetch")
        self._predictors = ThreadPoolExecutor(batching.max_in_flight, thread_name_prefix="predict")

    def close(self) -> None:
        self._loaders.shutdown(cancel_futures=True)
        self._predictors.shutdown(cancel_futures=True)
        self.fetcher.close()

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        started = self.clock()
        outcomes: list[Outcome | None] = [None] * len(records)
        requests: dict[int, ImageRequest] = {}
        loading: dict[Future, int] = {}
        for index, record in enumerate(records):
            try:
                requests[index] = parse_request(record)
            except RecordError as error:
                outcomes[index] = DeadLetter.from_error(record, error)
                continue
            loading[self._loaders.submit(self._load, requests[index].url)] = index

        predicting = self._load_and_batch(records, loading, outcomes)
        try:
            for future, indices in predicting.items():
                for index, answer in zip(indices, future.result()):
                    record = records[index]
                    if isinstance(answer, Classified):
                        outcomes[index] = Result(record, requests[index], answer.predictions, answer.model_name,
                                                 answer.model_version, answer.signature_name,
                                                 (self.clock() - started) * 1000)
                    else:
                        outcomes[index] = DeadLetter.from_error(record, answer)
        finally:
            for future in predicting:
                future.cancel()
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def _load(self, url: str) -> np.ndarray | bytes:
        return self.preprocessor.prepare(self.fetcher.fetch(url))

    def _load_and_batch(self, records: Sequence[Record], loading: dict[Future, int],
                        outcomes: list[Outcome | None]) -> dict[Future, list[int]]:
        """Collect loaded images into Predict batches as they become ready; returns batch futures."""
        predicting: dict[Future, list[int]] = {}
        ready: list[tuple[int, np.ndarray | bytes]] = []
        first_ready_at = 0.0

        def dispatch() -> None:
            indices = [index for index, _ in ready]
            predicting[self._predictors.submit(self.predictor.predict, [image for _, image in ready])] = indices
            ready.clear()

        pending = set(loading)
        while pending:
            timeout = None
            if ready:
                timeout = max(0.0, first_ready_at + self.batching.linger - self.clock())
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                index = loading[future]
                try:
                    image = future.result()
                except RecordError as error:
                    outcomes[index] = DeadLetter.from_error(records[index], error)
                    continue
                if not ready:
                    first_ready_at = self.clock()
                ready.append((index, image))
                if len(ready) >= self.batching.max_batch_size:
                    dispatch()
            if ready and (not pending or self.clock() >= first_ready_at + self.batching.linger):
                dispatch()
        return predicting
