"""The scikit-learn digits dataset as small RGB images (no TensorFlow here).

The model is trained on exactly the images `digit_to_image` produces, so test images made
with it (and then encoded as PNG/JPEG) come from the training distribution.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
LABELS: list[str] = [str(d) for d in range(10)]


def load_split(seed: int = 0, test_size: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified split of sklearn's digits: (train_x, train_y, test_x, test_y).

    x arrays are float 8x8 images with values 0..16; y arrays are int labels 0..9.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        data.images, data.target, test_size=test_size, stratify=data.target, random_state=seed
    )
    return train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64)


def digit_to_image(pixels_8x8: np.ndarray) -> Image.Image:
    """8x8 digit (0..16) -> RGB PIL image of IMAGE_SIZE x IMAGE_SIZE (bicubic upsampling)."""
    pixels = np.asarray(pixels_8x8, dtype=np.float64).reshape(8, 8)
    gray = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    image = Image.fromarray(gray, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return image.convert("RGB")


def images_array(digits: np.ndarray) -> np.ndarray:
    """Batch of 8x8 digits -> uint8 array [N, IMAGE_SIZE, IMAGE_SIZE, 3]."""
    return np.stack([np.asarray(digit_to_image(d), dtype=np.uint8) for d in digits])


def encode_image(image: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    """Encode a PIL image as PNG or JPEG bytes."""
    buffer = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class DigitImage:
    name: str  # e.g. "digits/17.png"
    label: str
    body: bytes
    content_type: str
    pixels: np.ndarray  # uint8 [32, 32, 3], the image before encoding


def held_out_images(count: int | None = None) -> list[DigitImage]:
    """Alternating PNG and JPEG encodings of the held-out digits (the model never trained on them)."""
    _, _, test_x, test_y = load_split()
    images = []
    for index, (digit, label) in enumerate(zip(test_x[:count], test_y[:count])):
        image = digit_to_image(digit)
        fmt, content_type = ("PNG", "image/png") if index % 2 == 0 else ("JPEG", "image/jpeg")
        extension = "png" if fmt == "PNG" else "jpg"
        images.append(DigitImage(f"digits/{index}.{extension}", str(int(label)), encode_image(image, fmt),
                                 content_type, np.asarray(image, dtype=np.uint8)))
    return images
