"""The transform, as stages that feed each other: records in, one encoded Result or DeadLetter per record out.

    submit(record) -> parse (at once) -> fetch + preprocess (fetch_concurrency threads) -> the batcher (one
    thread: up to max_batch_size images, or whatever is ready after batch_linger, or at once when no fetch is
    pending) -> Predict (at most max_in_flight calls) -> top-k -> completions

Batches form across submit() calls, so the caller can keep polling while images are fetched and predicted.
Every outcome arrives on the completions queue as a Completion (encoded by encode(), on the caller's thread);
a model server failing as a whole arrives as a Failure (the records of that batch never complete). Every per-record
stage runs inside the failure boundary (bridge.loop.isolation), so whatever goes wrong with one record becomes
its dead letter. Pure with respect to Kafka: it never touches a consumer or producer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bridge.errors import SystemFailure, UnexpectedRecordError
from bridge.images.fetch import ImageFetcher
from bridge.images.decode_pool import DecodePool
from bridge.ops.metrics import BridgeMetrics
from bridge.ops.tracing import NOOP, RecordTrace, Tracing
from bridge.images.preprocess import Preprocessor
from bridge.loop.isolation import isolate
from bridge.model.predictor import Classified, PreparedImage, Predictor
from bridge.records import (DEFAULT_MAX_MESSAGE_BYTES, DeadLetter, ImageRequest, Outcome, OutputMessage, Record,
                            Result, encode, encode_dead_letter, parse_request)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int = 32
    linger: float = 0.02  # seconds to wait for a fuller batch once one image is ready
    max_in_flight: int = 2


@dataclass(frozen=True)
class Completion:
    """One record's outcome; `tag` is what submit() was given with it (the run loop's generation)."""

    record: Record
    tag: Any
    outcome: Outcome
    trace: RecordTrace | None = None  # the record's span, when tracing is on (bridge.ops.tracing)


@dataclass(frozen=True)
class Failure:
    """The model server failed as a whole; the records of the batch it was predicting never complete."""

    error: SystemFailure


@dataclass
class _Item:
    record: Record
    tag: Any
    request: ImageRequest
    started: float
    image: PreparedImage | None = None
    trace: RecordTrace | None = None


class Pipeline:
    def __init__(self, fetcher: ImageFetcher, preprocessor: Preprocessor | DecodePool, predictor: Predictor,
                 batching: BatchingPolicy = BatchingPolicy(), fetch_concurrency: int = 16,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, metrics: BridgeMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic, tracing: Tracing = NOOP) -> None:
        self.fetcher = fetcher
        self.preprocessor = preprocessor
        self.predictor = predictor
        self.batching = batching
        self.max_message_bytes = max_message_bytes
        self.metrics = metrics or BridgeMetrics()
        self.metrics.in_flight.set_function(self.predicting)
        self.clock = clock
        self.tracing = tracing
        self.completions: queue.SimpleQueue[Completion | Failure] = queue.SimpleQueue()
        self._loaders = ThreadPoolExecutor(fetch_concurrency, thread_name_prefix="fetch")
        self._predictors = ThreadPoolExecutor(batching.max_in_flight, thread_name_prefix="predict")
        self._calls = threading.BoundedSemaphore(batching.max_in_flight)
        self._images: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._loading = 0  # fetches submitted and not yet handed to the batcher
        self._predicting = 0
        self._lock = threading.Lock()
        self._accepting = True
        self._batcher = threading.Thread(target=self._batch_forever, name="batcher", daemon=True)
        self._batcher.start()

    # --- the caller's side -------------------------------------------------------------------------------------

    def submit(self, record: Record, tag: Any = None) -> None:
        """Start classifying one record; its Completion (or a Failure) arrives on `completions`."""
        started = self.clock()
        trace = self.tracing.record(record)
        request = isolate("parse", record, lambda: parse_request(record))
        if isinstance(request, DeadLetter):
            self.completions.put(Completion(record, tag, request, trace))
            return
        with self._lock:
            self._loading += 1
        self._loaders.submit(self._load, _Item(record, tag, request, started, trace=trace))

    def encode(self, outcome: Outcome, trace: RecordTrace | None = None) -> OutputMessage:
        """The outcome as a Kafka record, carrying the record's trace context; one that cannot be encoded or is
        too large is its dead letter."""
        message = isolate("output", outcome.record, lambda: encode(outcome, self.max_message_bytes, trace))
        if isinstance(message, DeadLetter):
            return encode_dead_letter(message, self.max_message_bytes, trace)
        return message

    def stop_accepting(self) -> None:
        """Shutting down: fetches not yet started and images not yet in a Predict call are dropped (their
        records never complete); Predict calls in flight finish."""
        self._accepting = False

    def process(self, records: Sequence[Record]) -> list[OutputMessage]:
        """Classify records and wait for all of them: one encoded outcome per record, in order.
        Raises the SystemFailure of a model server failing as a whole (the records are then unfinished)."""
        for index, record in enumerate(records):
            self.submit(record, index)
        messages: list[OutputMessage | None] = [None] * len(records)
        for _ in records:
            done = self.completions.get()
            if isinstance(done, Failure):
                raise done.error
            messages[done.tag] = self.encode(done.outcome, done.trace)
        return messages  # type: ignore[return-value]

    def close(self) -> None:
        self._accepting = False
        self._images.put(None)
        self._loaders.shutdown(cancel_futures=True)
        self._predictors.shutdown(cancel_futures=True)
        self.fetcher.close()
        if isinstance(self.preprocessor, DecodePool):
            self.preprocessor.close()

    # --- the stages --------------------------------------------------------------------------------------------

    def _load(self, item: _Item) -> None:
        try:
            if not self._accepting:
                return
            record = item.record
            began = self.clock()
            data = self.tracing.stage(item.trace, "fetch",
                                      lambda: isolate("fetch", record, lambda: self.fetcher.fetch(item.request.url)))
            fetched = self.clock()
            self.metrics.stage_seconds.labels("fetch").observe(fetched - began)
            log.debug("fetch for %s[%d]@%d took %.0f ms: %s", record.topic, record.partition, record.offset,
                      (fetched - began) * 1000, data.error_type if isinstance(data, DeadLetter) else "ok")
            if isinstance(data, DeadLetter):
                image: PreparedImage | DeadLetter = data
            else:
                image = self.tracing.stage(item.trace, "preprocess", lambda: isolate(
                    "preprocess", record, lambda: self.preprocessor.prepare(data)))  # type: ignore[arg-type]
                self.metrics.stage_seconds.labels("preprocess").observe(self.clock() - fetched)
            if isinstance(image, DeadLetter):
                self.completions.put(Completion(record, item.tag, image, item.trace))
            else:
                item.image = image
                self._images.put(item)
        finally:
            with self._lock:
                self._loading -= 1
            self._images.put(_WAKE)  # the batcher may dispatch now that no fetch is pending

    def _batch_forever(self) -> None:
        ready: list[_Item] = []
        first_ready_at = 0.0
        while True:
            timeout = None
            if ready:
                timeout = max(0.0, first_ready_at + self.batching.linger - self.clock())
            try:
                item = self._images.get(timeout=timeout)
            except queue.Empty:
                item = _WAKE
            if item is None:
                return
            if item is not _WAKE:
                if not self._accepting:
                    continue
                if not ready:
                    first_ready_at = self.clock()
                ready.append(item)
            if not ready:
                continue
            with self._lock:
                idle = self._loading == 0
            full = len(ready) >= self.batching.max_batch_size
            lingered = self.clock() >= first_ready_at + self.batching.linger
            if full or lingered or idle:
                self._dispatch(ready[:self.batching.max_batch_size])
                ready = ready[self.batching.max_batch_size:]
                first_ready_at = self.clock()

    def predicting(self) -> int:
        """Predict calls in flight (their outcomes not yet all on the completions queue)."""
        with self._lock:
            return self._predicting

    def _dispatch(self, items: list[_Item]) -> None:
        self._calls.acquire()  # at most max_in_flight Predict calls at once
        with self._lock:
            self._predicting += 1
        try:
            self._predictors.submit(self._predict, items)
        except RuntimeError:  # shut down
            self._predicted()

    def _predicted(self) -> None:
        with self._lock:
            self._predicting -= 1
        self._calls.release()

    def _predict(self, items: list[_Item]) -> None:
        try:
            self._complete(items)
        finally:
            self._predicted()

    def _complete(self, items: list[_Item]) -> None:
        self.metrics.batch_size.observe(len(items))
        began = self.clock()
        try:
            with self.tracing.batch([item.trace for item in items]):
                answers: list = self.predictor.predict([item.image for item in items])  # type: ignore[misc]
            self.metrics.stage_seconds.labels("predict").observe(self.clock() - began)
        except SystemFailure as exc:
            self.completions.put(Failure(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the boundary: unforeseen, so each record's own failure
            log.warning("unexpected %s while predicting a batch of %d", type(exc).__name__, len(items))
            answers = [UnexpectedRecordError("predict", exc)] * len(items)
        finished = self.clock()
        for item, answer in zip(items, answers):
            if isinstance(answer, Classified):
                outcome: Outcome = Result(item.record, item.request, answer.predictions, answer.model_name,
                                          answer.model_version, answer.signature_name,
                                          (finished - item.started) * 1000)
            else:
                outcome = DeadLetter.from_error(item.record, answer)
            self.completions.put(Completion(item.record, item.tag, outcome, item.trace))


_WAKE: Any = object()  # tells the batcher to look again (a fetch ended); not an image
