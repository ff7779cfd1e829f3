"""The transform: records in, one encoded Result or DeadLetter per record out, in the same order.

parse -> fetch + preprocess (a bounded thread pool) -> Predict batches (up to max_batch_size images, or whatever
is ready after batch_linger; at most max_in_flight batches at once) -> top-k -> output (encoded, size-checked).
Every per-record stage runs inside the failure boundary (bridge.loop.isolation), so whatever goes wrong with one
record becomes its dead letter. Pure with respect to Kafka: it never touches a consumer or producer. If the
model server fails as a whole, the whole call raises ModelUnusable and produces nothing, so the caller can redo
the records later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from bridge.images.fetch import ImageFetcher
from bridge.loop.isolation import isolate
from bridge.model.predictor import Classified, PreparedImage, Predictor
from bridge.images.preprocess import Preprocessor
from bridge.records import (DEFAULT_MAX_MESSAGE_BYTES, DeadLetter, ImageRequest, Outcome, OutputMessage, Record,
                            Result, encode, encode_dead_letter, parse_request)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int = 32
    linger: float = 0.02  # seconds to wait for a fuller batch once one image is ready
    max_in_flight: int = 2


class Pipeline:
    def __init__(self, fetcher: ImageFetcher, preprocessor: Preprocessor, predictor: Predictor,
                 batching: BatchingPolicy = BatchingPolicy(), fetch_concurrency: int = 16,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fetcher = fetcher
        self.preprocessor = preprocessor
        self.predictor = predictor
        self.batching = batching
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self._loaders = ThreadPoolExecutor(fetch_concurrency, thread_name_prefix="fetch")
        self._predictors = ThreadPoolExecutor(batching.max_in_flight, thread_name_prefix="predict")

    def close(self) -> None:
        self._loaders.shutdown(cancel_futures=True)
        self._predictors.shutdown(cancel_futures=True)
        self.fetcher.close()

    def process(self, records: Sequence[Record]) -> list[OutputMessage]:
        started = self.clock()
        outcomes: list[Outcome | None] = [None] * len(records)
        requests: dict[int, ImageRequest] = {}
        loading: dict[Future, int] = {}
        for index, record in enumerate(records):
            request = isolate("parse", record, lambda: parse_request(record))  # noqa: B023 - called at once
            if isinstance(request, DeadLetter):
                outcomes[index] = request
                continue
            requests[index] = request
            loading[self._loaders.submit(self._load, record, request.url)] = index

        predicting = self._load_and_batch(loading, outcomes)
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
        return [self._encode(outcome) for outcome in outcomes]  # type: ignore[arg-type]

    def _load(self, record: Record, url: str) -> PreparedImage | DeadLetter:
        began = self.clock()
        data = isolate("fetch", record, lambda: self.fetcher.fetch(url))
        log.debug("fetch for %s[%d]@%d took %.0f ms: %s", record.topic, record.partition, record.offset,
                  (self.clock() - began) * 1000, data.error_type if isinstance(data, DeadLetter) else "ok")
        if isinstance(data, DeadLetter):
            return data
        return isolate("preprocess", record, lambda: self.preprocessor.prepare(data))

    def _encode(self, outcome: Outcome) -> OutputMessage:
        message = isolate("output", outcome.record, lambda: encode(outcome, self.max_message_bytes))
        if isinstance(message, DeadLetter):
            return encode_dead_letter(message, self.max_message_bytes)
        return message

    def _load_and_batch(self, loading: dict[Future, int],
                        outcomes: list[Outcome | None]) -> dict[Future, list[int]]:
        """Collect loaded images into Predict batches as they become ready; returns batch futures."""
        predicting: dict[Future, list[int]] = {}
        ready: list[tuple[int, PreparedImage]] = []
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
                image = future.result()
                if isinstance(image, DeadLetter):
                    outcomes[index] = image
                    continue
                if not ready:
                    first_ready_at = self.clock()
                ready.append((index, image))
                if len(ready) >= self.batching.max_batch_size:
                    dispatch()
            if ready and (not pending or self.clock() >= first_ready_at + self.batching.linger):
                dispatch()
        return predicting
