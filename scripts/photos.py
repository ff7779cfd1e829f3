"""Deterministic synthetic photo-like JPEGs: smooth colour gradients, a few soft-edged shapes, mild noise.

    bodies = photo_jpegs(32)                     # 640x480, quality 90, about as large as real photos

Image i of a seed is the same whatever `count` is, so photo_jpegs(5)[:3] == photo_jpegs(3).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SHAPES = (3, 7)  # shapes per image: at least, at most
NOISE_SPREAD = 9.0  # per-pixel noise, uniform in +-NOISE_SPREAD uint8 levels: makes the JPEG as large as a photo's
TEXTURE_CELL = 8  # pixels per cell of the smooth brightness texture
TEXTURE_SIGMA = 6.0


def photo_jpegs(count: int, seed: int = 0, size: tuple[int, int] = (640, 480), quality: int = 90) -> list[bytes]:
    """`count` JPEGs of `size` (width, height), image i drawn from a generator seeded with (seed, i)."""
    return [encode_jpeg(photo_pixels(np.random.default_rng([seed, index]), size), quality)
            for index in range(count)]


def photo_pixels(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A uint8 [height, width, 3] photo-like image."""
    width, height = size
    image = gradient(rng, width, height)
    for _ in range(rng.integers(SHAPES[0], SHAPES[1] + 1)):
        add_shape(rng, image)
    image += texture(rng, width, height)[:, :, None]
    image += (rng.random(image.shape, dtype=np.float32) - 0.5) * (2 * NOISE_SPREAD)
    return np.clip(image, 0.0, 255.0).astype(np.uint8)


def gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A float32 [H, W, 3] background blending from one random colour towards two others along x and y."""
    start, along_x, along_y = rng.uniform(0.0, 255.0, (3, 3)).astype(np.float32)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    return start + (along_x - start) * x + (along_y - start) * y


def add_shape(rng: np.random.Generator, image: np.ndarray) -> None:
    """Blend a soft-edged ellipse of a random colour into `image` (in place)."""
    height, width = image.shape[:2]
    centre_x, radius_x = float(rng.uniform(0, width)), float(rng.uniform(0.05, 0.35) * width)
    centre_y, radius_y = float(rng.uniform(0, height)), float(rng.uniform(0.05, 0.35) * height)
    softness = float(rng.uniform(0.05, 0.4))  # width of the edge, relative to the radius
    opacity = float(rng.uniform(0.5, 1.0))
    colour = rng.uniform(0.0, 255.0, 3).astype(np.float32)

    # Only the ellipse's bounding box changes: outside it alpha is 0.
    top, bottom = max(int(centre_y - radius_y), 0), min(int(centre_y + radius_y) + 1, height)
    left, right = max(int(centre_x - radius_x), 0), min(int(centre_x + radius_x) + 1, width)
    if top >= bottom or left >= right:
        return
    dy = ((np.arange(top, bottom, dtype=np.float32) - centre_y) / radius_y)[:, None]
    dx = ((np.arange(left, right, dtype=np.float32) - centre_x) / radius_x)[None, :]
    alpha = np.clip((1.0 - np.sqrt(dx * dx + dy * dy)) * (opacity / softness), 0.0, opacity)
    region = image[top:bottom, left:right]
    region += alpha[:, :, None] * (colour - region)


def texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A float32 [H, W] field of smooth brightness variation: coarse noise, bicubically upscaled."""
    coarse = rng.standard_normal((height // TEXTURE_CELL + 1, width // TEXTURE_CELL + 1), dtype=np.float32)
    field = Image.fromarray(coarse * TEXTURE_SIGMA).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG of a uint8 [H, W, 3] array."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
