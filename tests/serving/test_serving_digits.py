"""serving.digits: the shared dataset helpers (no TensorFlow)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from serving import digits


def test_split_is_deterministic_stratified_and_held_out() -> None:
    train_x, train_y, test_x, test_y = digits.load_split()
    again = digits.load_split()
    assert np.array_equal(test_x, again[2]) and np.array_equal(test_y, again[3])
    assert train_x.shape[1:] == test_x.shape[1:] == (8, 8)
    assert len(test_x) == 450 and len(train_x) == 1347
    assert sorted(set(test_y.tolist())) == list(range(10))
    counts = np.bincount(test_y)
    assert counts.min() >= 43 and counts.max() <= 46  # stratified: ~45 of each digit


def test_digit_to_image_is_rgb_32_and_scaled() -> None:
    _, _, test_x, _ = digits.load_split()
    image = digits.digit_to_image(test_x[0])
    assert image.mode == "RGB" and image.size == (digits.IMAGE_SIZE, digits.IMAGE_SIZE) == (32, 32)
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.max() > 200 and pixels.min() == 0
    assert np.array_equal(pixels[..., 0], pixels[..., 1])  # grey
    full = digits.digit_to_image(np.full((8, 8), 16.0))
    assert np.asarray(full).min() == 255


def test_images_array_and_encodings_round_trip() -> None:
    _, _, test_x, _ = digits.load_split()
    batch = digits.images_array(test_x[:3])
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.uint8
    image = digits.digit_to_image(test_x[0])
    png = digits.encode_image(image, "PNG")
    jpeg = digits.encode_image(image, "JPEG")
    assert png.startswith(b"\x89PNG") and jpeg.startswith(b"\xff\xd8")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), batch[0])
    assert np.abs(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int) - batch[0]).mean() < 8
    assert digits.LABELS == [str(d) for d in range(10)]


def test_the_test_process_never_imports_tensorflow() -> None:
    import sys

    import serving.process  # noqa: F401 - must stay TensorFlow-free too

    assert "tensorflow" not in sys.modules and "tensorflow_serving" not in sys.modules
