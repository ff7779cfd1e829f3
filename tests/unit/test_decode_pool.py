"""Decoding in worker processes: the same pixels as in-process, and a worker's death or hang fails one image."""

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from bridge.errors import ImageError
from bridge.images import decode_pool
from bridge.images.decode_pool import DecodePool
from bridge.images.preprocess import Preprocessor
from bridge.model.signature import ImageSignature, InputKind, TensorSpec
from bridge.model.tensors import DataType

SIGNATURE = ImageSignature("serving_default", TensorSpec("images", DataType.DT_UINT8, (-1, 8, 8, 3)),
                           InputKind.UINT8, "scores", None)


def jpeg(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, format="JPEG")
    return out.getvalue()


def dies_or_hangs(data: bytes):
    """A worker's work that dies on b"die", never returns on b"hang", and otherwise prepares the image."""
    if data == b"die":
        os._exit(1)
    if data == b"hang":
        time.sleep(3600)
    return decode_pool._prepare_in_worker(data)


@pytest.fixture
def pool():
    pool = DecodePool(SIGNATURE, processes=2, max_pixels=10_000, timeout=5.0, work=dies_or_hangs)
    yield pool
    pool.close()


def test_workers_prepare_exactly_what_the_preprocessor_does(pool):
    image = jpeg((200, 30, 90))
    assert np.array_equal(pool.prepare(image), Preprocessor(SIGNATURE).prepare(image))


def test_an_image_error_in_a_worker_is_that_images_error(pool):
    with pytest.raises(ImageError, match="cannot decode image"):
        pool.prepare(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageError, match="over the limit of 10000"):
        pool.prepare(_big_png())


def _big_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (200, 200)).save(out, format="PNG")
    return out.getvalue()


def test_an_image_that_kills_its_worker_fails_alone_and_the_pool_recovers(pool):
    with pytest.raises(ImageError, match="the decoding process died"):
        pool.prepare(b"die")
    assert pool.prepare(jpeg((0, 0, 255))).shape == (8, 8, 3)


def test_an_image_in_a_pool_that_broke_under_it_is_decoded_again_alone(pool, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    real_run, broken_once = pool._run, []

    def run(target, data):
        if not broken_once:  # as if another image had killed the worker while this one waited in the pool
            broken_once.append(target)
            raise decode_pool._WorkerLost() from BrokenProcessPool()
        return real_run(target, data)

    monkeypatch.setattr(pool, "_run", run)
    assert pool.prepare(jpeg((0, 255, 0))).shape == (8, 8, 3)
    assert pool._pool is not broken_once[0]  # the broken pool was replaced


def test_a_hung_decode_fails_its_image_at_the_timeout_and_the_pool_recovers():
    pool = DecodePool(SIGNATURE, processes=1, max_pixels=10_000, timeout=1.0, work=dies_or_hangs)
    try:
        started = time.monotonic()
        with pytest.raises(ImageError, match="decoding took over 1 s"):
            pool.prepare(b"hang")
        assert time.monotonic() - started < 3.0
        # The hung worker was replaced. The new one's first image includes its start (importing numpy and Pillow),
        # which on a loaded 2-core machine can take over a second: not what this test times.
        pool.timeout = 10.0
        assert pool.prepare(jpeg((9, 9, 9))).shape == (8, 8, 3)
    finally:
        pool.close()
