from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from scripts.photos import photo_jpegs


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return photo_jpegs(4, seed=3)


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)


def test_the_same_seed_gives_the_same_bytes(photos: list[bytes]) -> None:
    assert photo_jpegs(4, seed=3) == photos


def test_an_image_does_not_depend_on_how_many_are_asked_for(photos: list[bytes]) -> None:
    assert photo_jpegs(2, seed=3) == photos[:2]


def test_another_seed_gives_other_images(photos: list[bytes]) -> None:
    assert set(photo_jpegs(4, seed=4)).isdisjoint(photos)


def test_they_are_640x480_rgb_jpegs(photos: list[bytes]) -> None:
    for body in photos:
        image = Image.open(io.BytesIO(body))
        assert (image.format, image.size, image.mode) == ("JPEG", (640, 480), "RGB")
        image.load()  # decodes completely


def test_size_and_quality_are_honoured() -> None:
    small, low = photo_jpegs(1, size=(320, 200))[0], photo_jpegs(1, quality=50)[0]
    assert Image.open(io.BytesIO(small)).size == (320, 200)
    assert len(low) < len(photo_jpegs(1)[0])


def test_sizes_are_like_real_photos(photos: list[bytes]) -> None:
    sizes = [len(body) for body in photos]
    assert all(30_000 <= size <= 120_000 for size in sizes), sizes
    assert 45_000 <= np.mean(sizes) <= 85_000, sizes


def test_different_images_differ(photos: list[bytes]) -> None:
    images = [pixels(body) for body in photos]
    for index, image in enumerate(images):
        for other in images[index + 1:]:
            assert np.abs(image - other).mean() > 10  # mean difference in uint8 levels


def test_an_image_has_smooth_structure_and_mild_noise(photos: list[bytes]) -> None:
    image = pixels(photos[0])
    assert image.std() > 20  # gradients and shapes span much of the range
    neighbour_step = np.abs(np.diff(image, axis=1)).mean()
    assert 1 < neighbour_step < 15  # noisy, but nothing like random pixels (about 85)
