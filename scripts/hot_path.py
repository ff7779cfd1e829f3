"""The hot path's steps one at a time, each against what it replaced, in one run (CPU time of this process).

    .venv/bin/python -m scripts.hot_path

- a PredictRequest of 32 x 224 x 224 x 3 uint8: built as a protobuf message, against framed by hand;
- an answer of 32 x 1000 scores: with the 32,000-string labels output, against scores alone;
- a 640x480 photo-like JPEG to 224x224 pixels: a full decode, against draft mode, and the steps after it.

No network, no model server: these are the parts of a record's cost that are the bridge's own code.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from bridge.model import tensors
from bridge.model.backend import ModelTarget
from bridge.model.predict_request import predict_request_bytes
from bridge.tfs_api import predict_pb2
from scripts.photos import photo_jpegs


def cpu_ms(step: Callable[[], object], repeat: int) -> float:
    """Median CPU milliseconds of one call, over `repeat` calls after one warm-up."""
    step()
    times = []
    for _ in range(repeat):
        started = time.process_time()
        step()
        times.append((time.process_time() - started) * 1000)
    return float(np.median(times))


def compare(title: str, before: tuple[str, Callable[[], object]], after: tuple[str, Callable[[], object]],
            repeat: int = 30) -> None:
    old, new = cpu_ms(before[1], repeat), cpu_ms(after[1], repeat)
    print(f"{title}\n  {before[0]:<48} {old:8.3f} ms\n  {after[0]:<48} {new:8.3f} ms   ({old / new:.1f}x less)")


def request_building() -> None:
    batch = np.random.default_rng(0).integers(0, 256, (32, 224, 224, 3), dtype=np.uint8)
    target = ModelTarget("mobilenet")

    def as_message() -> bytes:
        request = predict_pb2.PredictRequest(model_spec=target.spec(), output_filter=["scores"])
        request.inputs["images"].CopyFrom(tensors.from_array(batch))
        return request.SerializeToString()

    compare("PredictRequest of 32 x 224 x 224 x 3 uint8",
            ("protobuf message (tobytes, CopyFrom, serialize)", as_message),
            ("framed by hand (one join)", lambda: predict_request_bytes(target.spec(), "images", batch, ["scores"])))


def rest_request_building() -> None:
    import orjson

    from bridge.model.pixels_json import uint8_json

    batch = np.random.default_rng(0).integers(0, 256, (32, 224, 224, 3), dtype=np.uint8)
    compare("REST :predict inputs, JSON of 32 x 224 x 224 x 3 uint8",
            ("orjson (numpy arrays natively)", lambda: orjson.dumps(batch, option=orjson.OPT_SERIALIZE_NUMPY)),
            ("fixed-width numbers filled in by numpy", lambda: uint8_json(batch)), repeat=5)


def answer_decoding() -> None:
    scores = np.random.default_rng(0).random((32, 1000), dtype=np.float32)
    with_labels = predict_pb2.PredictResponse()
    with_labels.outputs["scores"].CopyFrom(_typed_floats(scores))
    labels = with_labels.outputs["classes"]
    labels.dtype = tensors.DataType.DT_STRING
    labels.tensor_shape.dim.add(size=32)
    labels.tensor_shape.dim.add(size=1000)
    labels.string_val.extend([f"class_{i:04d}".encode() for i in range(1000)] * 32)
    scores_only = predict_pb2.PredictResponse()
    scores_only.outputs["scores"].CopyFrom(_typed_floats(scores))

    def decode(wire: bytes) -> Callable[[], object]:
        return lambda: {name: tensors.to_array(proto)
                        for name, proto in predict_pb2.PredictResponse.FromString(wire).outputs.items()}

    compare("a Predict answer for 32 images of 1000 classes, as TF Serving writes it",
            ("scores and the labels output", decode(with_labels.SerializeToString())),
            ("scores only (labels learnt to be fixed)", decode(scores_only.SerializeToString())))


def _typed_floats(values: np.ndarray):
    proto = tensors.tensor_pb2.TensorProto(dtype=tensors.DataType.DT_FLOAT)
    for size in values.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.float_val.extend(values.ravel().tolist())
    return proto


def decoding() -> None:
    photos = photo_jpegs(16)

    def decode_all(draft: bool, resize: bool = False, to_array: bool = False) -> Callable[[], object]:
        def run() -> None:
            for data in photos:
                image = Image.open(io.BytesIO(data))
                if draft:
                    image.draft("RGB", (224, 224))
                image.load()
                if resize:
                    image = image.resize((224, 224), Image.Resampling.BILINEAR, reducing_gap=3.0)
                if to_array:
                    np.array(image, dtype=np.uint8)
        return run

    compare("decoding 16 photo-like 640x480 JPEGs (62 KB)", ("full decode", decode_all(False)),
            ("draft mode (decoded at 320x240)", decode_all(True)), repeat=10)
    print(f"  {'draft + resize to 224x224':<48} {cpu_ms(decode_all(True, True), 10):8.3f} ms")
    print(f"  {'draft + resize + copy to numpy':<48} {cpu_ms(decode_all(True, True, True), 10):8.3f} ms")


def main() -> int:
    request_building()
    rest_request_building()
    answer_decoding()
    decoding()
    return 0


if __name__ == "__main__":
    sys.exit(main())
