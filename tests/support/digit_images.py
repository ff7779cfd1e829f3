"""Held-out digits as PNG and JPEG files with their true labels (no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.digits import digit_to_image, encode_image, load_split


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
