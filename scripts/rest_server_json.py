"""The model server's REST JSON cost, old way against new, in one run (CPU time of this process).

    .venv/bin/python -m scripts.rest_server_json [--repeat 3]

A :predict body to a PredictRequest (serving/rest_api.py predict_request_from_json): the exact path (json, then
nested lists to arrays; the only path before) against the fast one (numpy's C parser for large dense numeric
arrays, json for the rest), on batches of 32 images written by orjson (no spaces), uint8 and float32,
224x224x3 and 28x28x3; one uint8 batch with every number padded to 3 characters (what the bridge's REST backend
sends since bridge/model/pixels_json.py), one as json.dumps writes it (", "), and one of b64 strings (no
numbers: what the fast path's scan costs where it finds nothing); beside them, orjson.loads alone (the floor
of any parse to Python objects). Then an answer of 32 x 1000 scores with
their 32,000 labels to bytes: json.dumps against answer_bytes (orjson).

No network, no model: the server's own JSON work per batch. Imports TensorFlow (serving/ does), not bridge/.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import orjson
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2

from serving import rest_api

BATCH = 32
SPEC = model_pb2.ModelSpec(name="imagenet")


def cpu_ms(steps: list[Callable[[], object]], repeat: int) -> list[float]:
    """Median CPU milliseconds of one call of each step, the steps taking turns (so that the garbage collector
    and memory treat them alike), over at least `repeat` rounds and 2 s, after one warm-up round.

    The garbage collector runs as in the server (a json parse of millions of numbers pays for its passes).
    """
    times: list[list[float]] = [[] for _ in steps]
    for step in steps:
        step()
    while len(times[0]) < repeat or sum(map(sum, times)) < 2000:
        for step, spent in zip(steps, times, strict=True):
            started = time.process_time()
            step()
            spent.append((time.process_time() - started) * 1000)
    return [float(np.median(spent)) for spent in times]


def padded_uint8_json(pixels: np.ndarray) -> bytes:
    """JSON of a uint8 array with every number in 3 characters, padded with spaces: what the bridge's REST backend
    sends now (bridge/model/pixels_json.py, not imported: bridge/ and TensorFlow share proto names)."""
    cells = np.array([list(f"{value:3d},".encode()) for value in range(256)], dtype=np.uint8)
    text = cells[pixels].reshape(*pixels.shape[:-1], pixels.shape[-1] * 4)
    while True:
        text[..., -1] = ord("]")
        wrapped = np.empty((*text.shape[:-1], text.shape[-1] + 2), dtype=np.uint8)
        wrapped[..., 0], wrapped[..., 1:-1], wrapped[..., -1] = ord("["), text, ord(",")
        if wrapped.ndim == 1:
            return wrapped[:-1].tobytes()
        text = wrapped.reshape(*wrapped.shape[:-2], -1)


def bodies() -> list[tuple[str, bytes, int]]:
    rng = np.random.default_rng(0)
    found = []
    for size in (224, 28):
        pixels = rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
        scaled = pixels.astype(np.float32) / np.float32(255.0)
        for name, value, dtype in (("uint8", pixels, types_pb2.DT_UINT8), ("float32", scaled, types_pb2.DT_FLOAT)):
            body = orjson.dumps({"signature_name": "serving_default", "inputs": {"images": value}},
                                option=orjson.OPT_SERIALIZE_NUMPY)
            found.append((f"{BATCH}x{size}x{size}x3 {name}", body, dtype))
        if size == 224:
            body = orjson.dumps({"signature_name": "serving_default",
                                 "inputs": {"images": orjson.Fragment(padded_uint8_json(pixels))}})
            assert orjson.loads(body)["inputs"]["images"] == pixels.tolist()
            found.append((f"{BATCH}x{size}x{size}x3 uint8 padded", body, types_pb2.DT_UINT8))
            body = json.dumps({"signature_name": "serving_default", "inputs": {"images": pixels.tolist()}}).encode()
            found.append((f"{BATCH}x{size}x{size}x3 uint8 json.dumps", body, types_pb2.DT_UINT8))
    images = [{"b64": base64.b64encode(rng.bytes(40_000)).decode()} for _ in range(BATCH)]  # JPEG-sized
    found.append((f"{BATCH} x 40 kB b64 (no numbers)", orjson.dumps({"instances": images}), types_pb2.DT_STRING))
    return found


def request_rows(repeat: int) -> None:
    print(f"{'body':32} {'MB':>6} {'exact ms':>9} {'fast ms':>8} {'ratio':>6} {'ms/image':>15} {'orjson.loads':>12}")
    for title, body, dtype in bodies():
        infos = {"images": meta_graph_pb2.TensorInfo(name="images:0", dtype=dtype)}
        exact_way = functools.partial(rest_api.predict_request_from_json, body, SPEC, lambda _, i=infos: i, None)
        fast_way = functools.partial(rest_api.predict_request_from_json, body, SPEC, lambda _, i=infos: i)
        assert fast_way()[0].SerializeToString(deterministic=True) == exact_way()[0].SerializeToString(
            deterministic=True)
        if dtype != types_pb2.DT_STRING:
            assert rest_api._fast_doc(body, rest_api.FAST_MIN_BYTES) is not None, "the fast path did not take it"
        exact, fast, floor = cpu_ms([exact_way, fast_way, functools.partial(orjson.loads, body)], repeat)
        print(f"{title:32} {len(body) / 1e6:6.1f} {exact:9.0f} {fast:8.0f} {exact / fast:5.1f}x "
              f"{exact / BATCH:6.1f} -> {fast / BATCH:5.1f} {floor:10.0f} ms")


def answer_row(repeat: int) -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((BATCH, 1000), dtype=np.float32)
    response = predict_pb2.PredictResponse()
    response.outputs["scores"].CopyFrom(tf.make_tensor_proto(scores / scores.sum(1, keepdims=True)))
    labels = np.array([[f"n{i:08d}" for i in range(1000)]] * BATCH, dtype=object)
    response.outputs["classes"].CopyFrom(tf.make_tensor_proto(labels))
    response.outputs["top_class"].CopyFrom(tf.make_tensor_proto(labels[:, 0]))
    answer = rest_api.predict_json(response, row=False)
    assert json.loads(rest_api.answer_bytes(answer)) == json.loads(json.dumps(answer, ensure_ascii=False))
    build, before, after = cpu_ms([lambda: rest_api.predict_json(response, row=False),
                                   lambda: json.dumps(answer, ensure_ascii=False).encode(),
                                   lambda: rest_api.answer_bytes(answer)], repeat)
    print(f"\nanswer {BATCH}x1000 scores + labels: predict_json {build:.1f} ms, then json.dumps {before:.1f} ms "
          f"-> answer_bytes {after:.1f} ms ({before / after:.1f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per step, at least")
    args = parser.parse_args(argv)
    request_rows(args.repeat)
    answer_row(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
