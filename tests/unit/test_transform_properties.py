"""Property: whatever a record holds and whatever its image server answers, the transform returns exactly one
encoded outcome per record, in order, and raises nothing (the failure boundary of bridge.loop.isolation).

Records go through the real parser, fetcher, preprocessor, predictor and encoder. Only the transport under
requests and the model server client are fakes, so no test traffic leaves the process.
"""

from __future__ import annotations

import io
import ipaddress
import json
import string

import grpc
import numpy as np
import requests
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image
from requests.adapters import BaseAdapter

from bridge.errors import ModelRejectedInput, ModelServerError
from bridge.images.fetch import FetchLimits, ImageFetcher
from bridge.model.backend import ModelTarget, Prediction as ModelAnswer
from bridge.loop.pipeline import BatchingPolicy, Pipeline
from bridge.model.predictor import Predictor, RetryPolicy
from bridge.images.preprocess import Preprocessor, probe_png
from bridge.records import Record
from bridge.model.signature import ImageSignature, InputKind, TensorSpec
from bridge.model.tensors import DataType

SIGNATURE = ImageSignature("serving_default", TensorSpec("images", DataType.DT_UINT8, (-1, 4, 4, 3)),
                           InputKind.UINT8, "scores", None)
STAGES = {"parse", "fetch", "preprocess", "predict", "output"}
PUBLIC = ipaddress.ip_address("93.184.216.34")


def png(colour: tuple[int, int, int], size: tuple[int, int] = (6, 5)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


# --- what the fake image server answers ------------------------------------------------------------------------

answers = st.one_of(
    st.builds(lambda body, kind: (200, {"Content-Type": kind}, body), st.binary(max_size=300),
              st.sampled_from(["image/png", "image/jpeg", "text/html", "application/octet-stream", ""])),
    st.builds(lambda colour: (200, {"Content-Type": "image/png"}, png(colour)),
              st.tuples(*[st.integers(0, 255)] * 3)),
    st.builds(lambda body: (200, {"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n" + body), st.binary(max_size=200)),
    st.builds(lambda status: (status, {}, b""), st.sampled_from([204, 301, 304, 400, 403, 404, 500, 503])),
    st.builds(lambda location: (302, {"Location": location}, b""),
              st.one_of(st.text(max_size=40), st.sampled_from(["http://[bad", "ftp://x/y", "//h/x", "/again"]))),
    st.builds(lambda length: (200, {"Content-Type": "image/png", "Content-Length": length}, b""),
              st.sampled_from(["-1", "abc", "99999999999", "0"])),
    st.just("connection-error"),
)


class ScriptedAdapter(BaseAdapter):
    """Answers requests from a script of answers, in turn; never opens a socket."""

    def __init__(self, script: list) -> None:
        super().__init__()
        self.script = script
        self.served = 0

    def send(self, request, **kwargs):  # noqa: ANN001 - requests' adapter interface
        answer = self.script[self.served % len(self.script)] if self.script else (404, {}, b"")
        self.served += 1
        if answer == "connection-error":
            raise requests.ConnectionError("connection refused")
        status, headers, body = answer
        response = requests.Response()
        response.status_code = status
        response.headers.update(headers)
        response.raw = io.BytesIO(body)
        response.url = request.url
        response.request = request
        response.reason = "scripted"
        return response

    def close(self) -> None:
        pass


# --- what the records hold -------------------------------------------------------------------------------------

url_characters = string.ascii_letters + string.digits + ":/?#[]@!$&'()*+,;=%-._~ \\\t\n\u00e9\u4e2d\udcff"
url_like = st.builds(lambda scheme, rest: scheme + rest,
                     st.sampled_from(["http://", "https://", "ftp://", "http:", "", "HTTP://", "http://["]),
                     st.text(alphabet=url_characters, max_size=60))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=4),
                           max_leaves=12)
json_requests = st.builds(lambda url, rid, extra: json.dumps({"url": url, "id": rid, **extra}),
                          url_like | json_values, json_values, st.dictionaries(st.text(max_size=5), json_values,
                                                                               max_size=2))
values = st.one_of(
    st.none(),
    st.binary(max_size=200),
    url_like.map(lambda text: text.encode("utf-8", "surrogateescape")),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_requests.map(lambda text: text.encode("utf-8", "surrogatepass")),
)


class FakeModelClient:
    """Scores each image by its mean pixel; rejects images whose first pixel is 13 (INVALID_ARGUMENT); the first
    internal_errors calls fail with INTERNAL (a transient failure: the probe that follows passes)."""

    target = ModelTarget("digits")

    def __init__(self, internal_errors: int) -> None:
        self.internal_errors = internal_errors

    def predict_images(self, signature, batch, with_labels=True):  # noqa: ANN001
        if self.internal_errors:
            self.internal_errors -= 1
            raise ModelServerError("Predict: INTERNAL: scripted", grpc.StatusCode.INTERNAL)
        if (batch[:, 0, 0, 0] == 13).any():
            raise ModelRejectedInput("Predict: INVALID_ARGUMENT: scripted", grpc.StatusCode.INVALID_ARGUMENT)
        scores = np.stack([np.full(3, image.mean() / 255, dtype=np.float32) for image in batch])
        return ModelAnswer({"scores": scores}, "digits", 1, "serving_default")


def transform(script: list, internal_errors: int) -> Pipeline:
    session = requests.Session()
    adapter = ScriptedAdapter(script)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    preprocessor = Preprocessor(SIGNATURE)
    predictor = Predictor(FakeModelClient(internal_errors), SIGNATURE, preprocessor.prepare(probe_png()),
                          retry=RetryPolicy(budget=1.0, initial_backoff=0.001, max_backoff=0.001),
                          sleep=lambda _: None)
    fetcher = ImageFetcher(FetchLimits(max_bytes=4096, max_redirects=2), session=session,
                           resolver=lambda host, port: [PUBLIC])  # decided on, never connected to
    return Pipeline(fetcher, preprocessor,
                    predictor, BatchingPolicy(max_batch_size=3, linger=0.0, max_in_flight=1), fetch_concurrency=2,
                    max_message_bytes=20_000)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(values, min_size=1, max_size=8), st.lists(answers, max_size=6), st.integers(0, 1))
@example([b"http://[::1/cat.png"], [], 0)
@example([b'{"a": ' + b"[" * 200_000], [], 0)
@example([b"http://h/x.png"], [(302, {"Location": "http://[bad"}, b"")], 0)
@example([json.dumps({"url": "http://h/x.png", "id": "\u00e9" * 400_000}).encode()], [], 0)
@example([b'{"url": "http://h/\\udcff.png", "id": "\\ud800"}'], [(200, {"Content-Type": "image/png"}, png((1, 2, 3)))],
         0)
@example([b"http://h/1.png", b"http://h/2.png"], [(200, {"Content-Type": "image/png"}, png((13, 0, 0)))], 1)
def test_every_record_gets_exactly_one_outcome_and_nothing_raises(record_values, script, internal_errors):
    records = [Record("in", 0, offset, b"k", value) for offset, value in enumerate(record_values)]
    pipeline = transform(script, internal_errors)
    try:
        messages = pipeline.process(records)
    finally:
        pipeline.close()

    assert [message.record for message in messages] == records
    for message in messages:
        assert message.size() <= 20_000
        body = json.loads(message.value)
        if message.is_result:
            assert body["predictions"] and body["source"]["offset"] == message.record.offset
        else:
            assert body["error"]["stage"] in STAGES and body["error"]["type"] and body["error"]["message"]
            assert dict(message.headers)["tfs-bridge.error.stage"].decode() == body["error"]["stage"]
