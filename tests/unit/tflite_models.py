"""Tiny .tflite models for the embedded backend's tests, converted with TensorFlow in a subprocess.

    python -m tests.unit.tflite_models OUT_DIR

writes OUT_DIR/linear.tflite, OUT_DIR/float.tflite and OUT_DIR/vector.tflite (each with one signature,
serving_default) and OUT_DIR/weights.npz (the fixed weights, so a test computes the expected scores with numpy).
The test process imports this module for make_models() and expected_scores() only; TensorFlow is imported
by main(), in the subprocess.

    linear.tflite  images  uint8 [-1, 8, 8, 3]  ->  scores float [-1, 5], classes string [-1, 5]
    float.tflite   pixels  float [-1, 8, 8, 3]  ->  probabilities float [-1, 5]
    vector.tflite  values  float [-1, 4]        ->  scores float [-1, 5]   (not an image model)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SIZE = 8
LABELS = ["ant", "bee", "cat", "dog", "eel"]
MODELS = ("linear", "float", "vector")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def weights() -> tuple[np.ndarray, np.ndarray]:
    """The fixed linear layer: kernel [8*8*3, 5] and bias [5]."""
    rng = np.random.default_rng(7)
    kernel = rng.normal(0.0, 1.0, (SIZE * SIZE * 3, len(LABELS))).astype(np.float32)
    bias = rng.normal(0.0, 0.5, len(LABELS)).astype(np.float32)
    return kernel, bias


def expected_scores(images: np.ndarray) -> np.ndarray:
    """linear.tflite's scores for uint8 images (float.tflite's for the same pixels / 255), in numpy."""
    kernel, bias = weights()
    pixels = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    logits = pixels.reshape(len(images), -1) @ kernel + bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def make_models(out_dir: Path, timeout: float = 300) -> Path:
    """Run main() in a subprocess; returns out_dir."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "tests.unit.tflite_models", str(out_dir)], check=False, cwd=PROJECT_ROOT,
                            env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"making the test .tflite models failed:\n{result.stderr[-3000:]}")
    return out_dir


def main(out_dir: Path) -> None:
    import tensorflow as tf

    kernel, bias = (tf.constant(w) for w in weights())
    labels = tf.constant(LABELS)

    def scores(pixels: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(pixels, [-1, SIZE * SIZE * 3])
        return tf.nn.softmax(tf.matmul(flat, kernel) + bias)

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8, name="images")])
    def linear(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = scores(tf.cast(images, tf.float32) / 255.0)
        classes = tf.tile(labels[tf.newaxis, :], tf.stack([tf.shape(images)[0], 1]))
        return {"scores": probabilities, "classes": classes}

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="pixels")])
    def floats(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": scores(pixels)}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="values")])
    def vector(values: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": tf.nn.softmax(tf.matmul(values, kernel[:4]) + bias)}

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, function in zip(MODELS, (linear, floats, vector)):
        owner = tf.Module()  # without a trackable object the converter writes no signature
        owner.function = function
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], owner)
        (out_dir / f"{name}.tflite").write_bytes(converter.convert())
    np.savez(out_dir / "weights.npz", kernel=kernel.numpy(), bias=bias.numpy())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
