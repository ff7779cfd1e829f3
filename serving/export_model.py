"""Train/build an image classifier and export it as a TF Serving SavedModel.

    python -m serving.export_model --output-dir models [--model digits|imagenet|mobilenet] [--version 1] [--epochs N]

Models: digits (a small CNN trained offline on scikit-learn's digits), imagenet (MobileNetV2 with ImageNet
weights, downloaded), mobilenet (MobileNetV2 with random weights and labels class_0000..class_0999: offline,
for benchmarks).

Writes DIR/<model>/<version>/ (saved_model.pb + variables/) with three signatures that all
return the same outputs, and beside them model.tflite: serving_default converted for LiteRT (the
bridge's embedded backend), checked against the SavedModel before it is written:

    serving_default  images       DT_UINT8  [-1, H, W, 3]
    bytes            image_bytes  DT_STRING [-1]    (encoded PNG or JPEG, any size)
    float            images       DT_FLOAT  [-1, H, W, 3]  values in [0, 1] (= uint8 / 255)

    outputs: scores DT_FLOAT [-1, C] (softmax), classes DT_STRING [-1, C] (labels aligned with
             scores), top_class DT_STRING [-1] (label with the highest score)

model.tflite holds serving_default only, with the same input and output names (the converter names the
signature of a single function serving_default, and those of several after TensorFlow's graph names). The
bytes signature could not be in it anyway: LiteRT has no image decoding ops.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from serving import digits  # noqa: E402

MIN_DIGITS_ACCURACY = 0.90
SEED = 0
MOBILENET_SIZE = 224
MOBILENET_CLASSES = 1000
TFLITE_FILE = "model.tflite"
TFLITE_SIGNATURE = "serving_default"
TFLITE_CHECK_IMAGES = 8
TFLITE_SCORE_ATOL = 1e-4


class ImageClassifierModule(tf.Module):
    """Wraps `classify` (float [N, H, W, 3] in [0, 1] -> softmax [N, C]) with the three signatures."""

    def __init__(self, model: tf.keras.Model, labels: Sequence[str], image_size: int,
                 preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None) -> None:
        super().__init__()
        self.model = model
        self.labels = tf.constant(list(labels), dtype=tf.string)
        self.image_size = image_size
        self._preprocess = preprocess  # float [0, 1] -> model input; identity if None

        size = image_size
        self.serve_uint8 = tf.function(
            self._serve_uint8,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
        self.serve_float = tf.function(
            self._serve_float,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
        self.serve_bytes = tf.function(
            self._serve_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        return {
            "serving_default": self.serve_uint8.get_concrete_function(),
            "bytes": self.serve_bytes.get_concrete_function(),
            "float": self.serve_float.get_concrete_function(),
        }

    def _outputs(self, images01: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = self._preprocess(images01) if self._preprocess else images01
        scores = tf.cast(self.model(inputs, training=False), tf.float32)
        batch = tf.shape(scores)[0]
        classes = tf.tile(self.labels[tf.newaxis, :], tf.stack([batch, 1]))
        top_class = tf.gather(self.labels, tf.argmax(scores, axis=1))
        return {"scores": scores, "classes": classes, "top_class": top_class}

    def _serve_float(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(images)

    def _serve_uint8(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(tf.cast(images, tf.float32) / 255.0)

    def _serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self.image_size

        def decode(encoded: tf.Tensor) -> tf.Tensor:
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            resized = tf.image.resize(image, [size, size], antialias=True)
            return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)

        images = tf.map_fn(decode, image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return self._serve_uint8(images)


# --------------------------------------------------------------------------- digits


def build_digits_cnn(image_size: int, num_classes: int) -> tf.keras.Model:
    layers = tf.keras.layers
    model = tf.keras.Sequential([
        layers.Input((image_size, image_size, 3)),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(num_classes, activation="softmax"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def jpeg_round_trip(digit_images: np.ndarray) -> list[bytes]:
    return [digits.encode_image(digits.digit_to_image(d), "JPEG") for d in digit_images]


def accuracy(module_fn: Callable[..., dict[str, tf.Tensor]], inputs: tf.Tensor,
             labels: np.ndarray) -> float:
    top = module_fn(inputs)["top_class"].numpy()
    predicted = np.array([int(t) for t in top])
    return float(np.mean(predicted == labels))


def build_digits(epochs: int) -> tuple[ImageClassifierModule, dict[str, float]]:
    train_x, train_y, test_x, test_y = digits.load_split(seed=SEED)
    train_images = digits.images_array(train_x).astype(np.float32) / 255.0
    model = build_digits_cnn(digits.IMAGE_SIZE, len(digits.LABELS))
    model.fit(train_images, train_y, epochs=epochs, batch_size=32, shuffle=True, verbose=0)
    module = ImageClassifierModule(model, digits.LABELS, digits.IMAGE_SIZE)

    test_images = tf.constant(digits.images_array(test_x))
    test_jpeg = tf.constant(jpeg_round_trip(test_x))
    metrics = {
        "accuracy_uint8": accuracy(module.serve_uint8, test_images, test_y),
        "accuracy_jpeg": accuracy(module.serve_bytes, test_jpeg, test_y),
    }
    return module, metrics


# --------------------------------------------------------------------------- MobileNetV2


def mobilenet_v2_preprocess(images01: tf.Tensor) -> tf.Tensor:
    """Float images in [0, 1] -> MobileNetV2's input range [-1, 1]."""
    from tensorflow.keras.applications import mobilenet_v2

    return mobilenet_v2.preprocess_input(images01 * 255.0)


def build_imagenet() -> tuple[ImageClassifierModule, dict[str, float]]:
    """MobileNetV2 (ImageNet weights; needs internet to download them and the class index)."""
    import json

    from tensorflow.keras.applications import mobilenet_v2

    class_index_url = ("https://storage.googleapis.com/download.tensorflow.org/"
                       "data/imagenet_class_index.json")
    model = mobilenet_v2.MobileNetV2(weights="imagenet", input_shape=(MOBILENET_SIZE, MOBILENET_SIZE, 3))
    index_path = tf.keras.utils.get_file("imagenet_class_index.json", class_index_url,
                                         cache_subdir="models")
    with open(index_path, encoding="utf-8") as f:
        class_index = json.load(f)  # {"0": ["n01440764", "tench"], ...}
    labels = [class_index[str(i)][1] for i in range(len(class_index))]
    if len(labels) != MOBILENET_CLASSES:
        raise RuntimeError(f"expected {MOBILENET_CLASSES} ImageNet classes, got {len(labels)}")
    return ImageClassifierModule(model, labels, MOBILENET_SIZE, mobilenet_v2_preprocess), {}


def build_mobilenet() -> ImageClassifierModule:
    """MobileNetV2 with random (seeded) weights: no download, so no meaningful predictions."""
    from tensorflow.keras.applications import mobilenet_v2

    model = mobilenet_v2.MobileNetV2(weights=None, input_shape=(MOBILENET_SIZE, MOBILENET_SIZE, 3),
                                     classes=MOBILENET_CLASSES)
    labels = [f"class_{i:04d}" for i in range(MOBILENET_CLASSES)]
    return ImageClassifierModule(model, labels, MOBILENET_SIZE, mobilenet_v2_preprocess)


def score_problem(module: ImageClassifierModule) -> str | None:
    """Run serving_default on a black and a random image; describe what is wrong with the scores, or None."""
    size = module.image_size
    noise = np.random.default_rng(SEED).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    images = np.concatenate([np.zeros_like(noise), noise])
    scores = module.serve_uint8(tf.constant(images))["scores"].numpy()
    expected = (len(images), int(module.labels.shape[0]))
    if scores.shape != expected:
        return f"scores have shape {scores.shape}, expected {expected}"
    if not np.all(np.isfinite(scores)):
        return "scores are not all finite"
    if not np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return f"scores do not sum to 1 per image: {scores.sum(axis=1)}"
    return None


# --------------------------------------------------------------------------- export


def save_servable(module: ImageClassifierModule, output_dir: Path, name: str, version: int,
                  sample_images: np.ndarray) -> Path:
    """Save atomically to DIR/<name>/<version> (TF Serving ignores non-numeric dirs meanwhile), with
    model.tflite beside the SavedModel (checked on sample_images first; TFLiteMismatch if it disagrees)."""
    model_dir = output_dir / name
    final = model_dir / str(version)
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(tmp), signatures=module.signatures())
    try:
        print(write_tflite(tmp, sample_images), flush=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


# --------------------------------------------------------------------------- LiteRT (.tflite)


class TFLiteMismatch(RuntimeError):
    """The converted model does not answer like the SavedModel."""


def write_tflite(version_dir: Path, sample_images: np.ndarray) -> str:
    """Convert the saved serving_default to version_dir/model.tflite; returns what was done, for the log.

    Converted from the loaded signature's concrete function: from_saved_model drops the weights of the Keras
    model inside the tf.Module (TF 2.21: a 9 KB file for digits, answering NaN or the same for every image).
    """
    started = time.monotonic()
    loaded = tf.saved_model.load(str(version_dir))
    function = loaded.signatures[TFLITE_SIGNATURE]
    inputs = function.structured_input_signature[1]
    if any(spec.dtype == tf.string for spec in inputs.values()):
        return f"no {TFLITE_FILE}: {TFLITE_SIGNATURE} takes encoded images, which LiteRT cannot decode"
    content = tf.lite.TFLiteConverter.from_concrete_functions([function], trackable_obj=loaded).convert()
    try:
        agreement = check_tflite(content, function, sample_images)
    except TFLiteMismatch as exc:
        raise TFLiteMismatch(f"{TFLITE_FILE} does not answer like the SavedModel's {TFLITE_SIGNATURE}: {exc}") from None
    (version_dir / TFLITE_FILE).write_bytes(content)
    return (f"{TFLITE_FILE}: {len(content) / 1e6:.2f} MB, signature {TFLITE_SIGNATURE}: {agreement}; "
            f"converted and checked in {time.monotonic() - started:.1f}s")


def litert_interpreter(content: bytes) -> Any:
    """The bridge's LiteRT (ai-edge-litert) when installed, else TensorFlow's own copy of it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_content=content)


def check_tflite(content: bytes, function: tf.types.experimental.ConcreteFunction, images: np.ndarray) -> str:
    """Run the converted model and the SavedModel's function on `images`; TFLiteMismatch if they differ, else a
    summary. Top-1 is compared where it is clear (the best two scores more than 2 atol apart): a tie (e.g.
    mobilenet's random weights give every class 0.001) may break either way, and the scores check covers it."""
    weights = sum(int(np.prod(v.shape)) * v.dtype.size for v in function.variables)
    if len(content) < weights / 2:
        raise TFLiteMismatch(f"{len(content)} bytes cannot hold the model's {weights} bytes of weights")
    interpreter = litert_interpreter(content)
    signatures = interpreter.get_signature_list()
    inputs, outputs = sorted(function.structured_input_signature[1]), sorted(function.structured_outputs)
    found = signatures.get(TFLITE_SIGNATURE)
    if found is None or sorted(found["inputs"]) != inputs or sorted(found["outputs"]) != outputs:
        raise TFLiteMismatch(f"signatures {signatures}, expected {TFLITE_SIGNATURE} with inputs {inputs} "
                             f"and outputs {outputs}")
    (name,) = inputs
    got = interpreter.get_signature_runner(TFLITE_SIGNATURE)(**{name: images})
    want = {key: value.numpy() for key, value in function(**{name: tf.constant(images)}).items()}
    scores, tflite_scores = want["scores"], got["scores"]
    difference = float(np.abs(tflite_scores - scores).max())
    if difference > TFLITE_SCORE_ATOL:
        raise TFLiteMismatch(f"scores differ by up to {difference:.2g} (atol {TFLITE_SCORE_ATOL})")
    best_two = np.sort(scores, axis=1)[:, -2:]
    clear = best_two[:, 1] - best_two[:, 0] > 2 * TFLITE_SCORE_ATOL
    if not np.array_equal(tflite_scores.argmax(axis=1)[clear], scores.argmax(axis=1)[clear]):
        raise TFLiteMismatch("the top-1 classes differ")
    for key, value in want.items():
        rows = clear if value.ndim == 1 else slice(None)  # a 1-D string output (top_class) follows the top-1
        if value.dtype == object and not np.array_equal(got[key][rows], value[rows]):
            raise TFLiteMismatch(f"output {key} differs: {got[key].ravel()[:3]} vs {value.ravel()[:3]}")
    ties = f" ({len(images) - int(clear.sum())} too close to call)" if not clear.all() else ""
    strings = "".join(f", {key} equal" for key, value in sorted(want.items()) if value.dtype == object)
    return f"top-1 agrees on {int(clear.sum())} of {len(images)} images{ties}, scores within {difference:.1g}{strings}"


def check_images(model: str, size: int) -> np.ndarray:
    """Images to compare the .tflite with the SavedModel on: held-out digits, else seeded random pixels."""
    if model == "digits":
        _, _, test_x, _ = digits.load_split(seed=SEED)
        return digits.images_array(test_x[:TFLITE_CHECK_IMAGES])
    return np.random.default_rng(SEED).integers(0, 256, (TFLITE_CHECK_IMAGES, size, size, 3), dtype=np.uint8)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--model", choices=["digits", "imagenet", "mobilenet"], default="digits")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (digits only)")
    args = parser.parse_args(argv)
    if args.version < 0:
        parser.error("--version must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tf.keras.utils.set_random_seed(SEED)
    started = time.monotonic()

    if args.model == "digits":
        module, metrics = build_digits(args.epochs)
        print(f"held-out accuracy: uint8 {metrics['accuracy_uint8']:.4f}, "
              f"jpeg round-trip {metrics['accuracy_jpeg']:.4f}", flush=True)
        if min(metrics.values()) < MIN_DIGITS_ACCURACY:
            print(f"error: held-out accuracy below {MIN_DIGITS_ACCURACY}", file=sys.stderr)
            return 1
    elif args.model == "mobilenet":
        module, metrics = build_mobilenet(), {}
        problem = score_problem(module)
        if problem:
            print(f"error: mobilenet {problem}", file=sys.stderr)
            return 1
        print("score check: finite softmax scores on a black and a random image", flush=True)
    else:
        try:
            module, metrics = build_imagenet()
        except Exception as exc:  # noqa: BLE001 - typically no internet for the weights
            print(f"error: cannot build the imagenet model (needs internet for weights): "
                  f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
            return 2

    try:
        path = save_servable(module, args.output_dir, args.model, args.version,
                             check_images(args.model, module.image_size))
    except TFLiteMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"exported {args.model} version {args.version} to {path} "
          f"in {time.monotonic() - started:.1f}s {summary}".rstrip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
