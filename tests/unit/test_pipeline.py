"""The transform with fake stages: order, dead letters, batch sizes and linger (no network)."""

import json
import threading
import time

import pytest

from bridge.errors import FetchError, ImageError, ModelUnusable
from bridge.loop.pipeline import BatchingPolicy, Pipeline
from bridge.model.predictor import Classified
from bridge.records import ClassScore, Record


class FakeFetcher:
    def __init__(self, delays=None, barrier=None):
        self.delays = delays or {}
        self.barrier = barrier  # fetches wait here until that many have started

    def fetch(self, url):
        if self.barrier is not None:
            self.barrier.wait(timeout=10)
        time.sleep(self.delays.get(url, 0))
        if "missing" in url:
            raise FetchError(f"HTTP 404 from {url}")
        return url.encode()

    def close(self):
        pass


class FakePreprocessor:
    def prepare(self, data):
        if b"broken" in data:
            raise ImageError("cannot decode image")
        return data


class RecordingPredictor:
    def __init__(self, fail=False):
        self.batches = []
        self.fail = fail
        self.lock = threading.Lock()

    def predict(self, images):
        with self.lock:
            self.batches.append(list(images))
        if self.fail:
            raise ModelUnusable("Predict: UNAVAILABLE beyond the retry budget")
        return [Classified([ClassScore(image.decode().rsplit("/", 1)[-1], 1.0)], "digits", 1, "serving_default")
                for image in images]


def records(values):
    return [Record("in", 0, offset, None, value.encode()) for offset, value in enumerate(values)]


def pipeline(predictor, fetcher=None, **batching):
    policy = BatchingPolicy(**{"max_batch_size": 4, "linger": 0.01, "max_in_flight": 2, **batching})
    return Pipeline(fetcher or FakeFetcher(), FakePreprocessor(), predictor, policy, fetch_concurrency=4)


def test_outcomes_come_back_in_input_order_with_dead_letters_in_place():
    values = ["http://h/a", "garbage", "http://h/missing", "http://h/b", "http://h/broken", "http://h/c"]
    predictor = RecordingPredictor()
    outcomes = pipeline(predictor).process(records(values))
    assert [o.is_result for o in outcomes] == [True, False, False, True, False, True]
    assert [o.record.offset for o in outcomes] == list(range(6))
    bodies = [json.loads(o.value) for o in outcomes]
    assert [b["predictions"][0]["label"] for b, o in zip(bodies, outcomes) if o.is_result] == ["a", "b", "c"]
    assert [b["error"]["stage"] for b, o in zip(bodies, outcomes) if not o.is_result] == \
        ["parse", "fetch", "preprocess"]


def test_batches_never_exceed_the_maximum_and_cover_every_good_image_once():
    predictor = RecordingPredictor()
    pipeline(predictor, max_batch_size=4, linger=1.0).process(records([f"http://h/{i}" for i in range(10)]))
    sizes = [len(batch) for batch in predictor.batches]
    assert max(sizes) <= 4
    assert sorted(image for batch in predictor.batches for image in batch) == \
        sorted(f"http://h/{i}".encode() for i in range(10))


def test_a_slow_fetch_does_not_hold_back_a_ready_batch_beyond_the_linger():
    # All three fetches start before any ends (the barrier), so the batcher is never idle before the slow one
    # ends; the linger leaves a and b (no delay) ample time to meet in one batch even on a loaded CI machine, and
    # is far shorter than the slow fetch: the first batch must go out while the slow fetch is still running.
    predictor = RecordingPredictor()
    fetcher = FakeFetcher(delays={"http://h/slow": 2.0}, barrier=threading.Barrier(3))
    predicted_at = []
    predict = predictor.predict
    predictor.predict = lambda images: (predicted_at.append(time.monotonic()), predict(images))[1]
    started = time.monotonic()
    pipeline(predictor, fetcher, max_batch_size=8, linger=0.3).process(
        records(["http://h/a", "http://h/b", "http://h/slow"]))
    assert [sorted(batch) for batch in predictor.batches] == [[b"http://h/a", b"http://h/b"], [b"http://h/slow"]]
    assert predicted_at[0] - started < 2.0 <= predicted_at[1] - started


def test_a_model_server_failing_as_a_whole_fails_the_whole_call():
    with pytest.raises(ModelUnusable):
        pipeline(RecordingPredictor(fail=True)).process(records(["http://h/a", "http://h/b"]))
