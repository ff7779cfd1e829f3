from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from bridge.errors import ImageError
from bridge.images.preprocess import Preprocessor, ScaleSpec
from bridge.model.signature import ImageSignature, InputKind, TensorSpec
from bridge.model.tensors import DataType
from bridge.tfs_api import meta_graph_pb2

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def signature(kind: InputKind, height: int = 8, width: int = 8) -> ImageSignature:
    if kind is InputKind.ENCODED:
        spec = TensorSpec("image_bytes", DataType.DT_STRING, (-1,))
    else:
        dtype = DataType.DT_UINT8 if kind is InputKind.UINT8 else DataType.DT_FLOAT
        spec = TensorSpec("images", dtype, (-1, height, width, 3))
    return ImageSignature("serving_default", spec, kind, "scores", None)


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def halves(mode: str, size: tuple[int, int], left: object, right: object) -> Image.Image:
    """An image whose left half is one colour and right half another."""
    image = Image.new(mode, size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def assert_colour(pixel: np.ndarray, expected: tuple[int, int, int], tolerance: int = 12) -> None:
    assert np.abs(pixel.astype(int) - expected).max() <= tolerance, f"{pixel} is not {expected}"


def prepare(data: bytes, height: int = 8, width: int = 8) -> np.ndarray:
    return Preprocessor(signature(InputKind.UINT8, height, width)).prepare(data)


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header is patched to claim width x height pixels (CRC fixed up)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_output_takes_the_size_declared_by_the_signature_proto():
    proto = meta_graph_pb2.SignatureDef()
    proto.inputs["images"].dtype = DataType.DT_UINT8
    for size in (-1, 24, 16, 3):
        proto.inputs["images"].tensor_shape.dim.add(size=size)
    proto.outputs["scores"].dtype = DataType.DT_FLOAT
    for size in (-1, 10):
        proto.outputs["scores"].tensor_shape.dim.add(size=size)
    pixels = Preprocessor(ImageSignature.from_proto("serving_default", proto)).prepare(
        encode(Image.new("RGB", (300, 200), BLUE), "JPEG"))
    assert pixels.shape == (24, 16, 3)
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous


def test_non_square_resize_keeps_left_and_right_apart():
    pixels = prepare(encode(halves("RGB", (100, 50), RED, BLUE)), height=30, width=50)
    assert pixels.shape == (30, 50, 3)
    assert_colour(pixels[15, 5], RED)
    assert_colour(pixels[15, 45], BLUE)


@pytest.mark.parametrize("orientation, red_at, blue_at", [
    (1, (10, 5), (10, 25)),  # no rotation: the marker stays top-left
    (6, (10, 25), (10, 5)),  # "rotate 90 degrees clockwise to display": top-left moves to top-right
])
def test_exif_orientation_is_applied_before_resizing(orientation, red_at, blue_at):
    wide = Image.new("RGB", (60, 30), BLUE)
    wide.paste(RED, (0, 0, 30, 15))  # the top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = prepare(encode(wide, "JPEG", exif=exif, quality=95), height=60, width=30)
    assert_colour(pixels[red_at], RED, tolerance=40)
    assert_colour(pixels[blue_at], BLUE, tolerance=40)
    assert_colour(pixels[50, 15], BLUE, tolerance=40)


def test_grayscale_becomes_equal_rgb_channels():
    pixels = prepare(encode(Image.new("L", (16, 16), 100)))
    assert pixels.shape == (8, 8, 3)
    assert (pixels == 100).all()


def test_transparent_pixels_become_white_not_their_hidden_colour():
    image = halves("RGBA", (32, 32), (255, 0, 0, 255), (0, 0, 0, 0))  # right half: transparent black
    image.paste((0, 0, 0, 128), (16, 24, 32, 32))  # half-transparent black: grey over white
    pixels = prepare(encode(image), height=32, width=32)
    assert_colour(pixels[4, 4], RED, tolerance=0)
    assert_colour(pixels[4, 28], WHITE, tolerance=0)
    assert_colour(pixels[28, 28], (127, 127, 127), tolerance=1)


def test_transparent_grey_with_alpha_becomes_white():
    pixels = prepare(encode(halves("LA", (16, 16), (50, 255), (0, 0))))
    assert_colour(pixels[4, 1], (50, 50, 50), tolerance=0)
    assert_colour(pixels[4, 7], WHITE, tolerance=0)


@pytest.mark.parametrize("transparent, left", [(False, BLACK), (True, WHITE)])
def test_palette_images_use_their_colours_and_transparency(transparent, left):
    image = halves("P", (16, 16), 0, 1)
    image.putpalette([*BLACK, *GREEN])
    data = encode(image, transparency=0) if transparent else encode(image)
    pixels = prepare(data)
    assert_colour(pixels[4, 1], left, tolerance=0)
    assert_colour(pixels[4, 7], GREEN, tolerance=0)


def test_cmyk_jpeg_becomes_rgb():
    pixels = prepare(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert pixels.shape == (8, 8, 3)
    assert_colour(pixels[4, 4], RED)


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    levels = np.full((16, 16), 65535, dtype=np.uint16)
    levels[:, :8] = 32768
    data = encode(Image.fromarray(levels))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = prepare(data)
    assert_colour(pixels[4, 1], (128, 128, 128), tolerance=0)
    assert_colour(pixels[4, 7], WHITE, tolerance=0)


@pytest.mark.parametrize("scaling, black, white", [
    (ScaleSpec(), 0.0, 1.0),
    (ScaleSpec(scale=1 / 127.5, offset=-1.0), -1.0, 1.0),
])
def test_float32_pixels_are_scaled(scaling, black, white):
    preprocessor = Preprocessor(signature(InputKind.FLOAT32, 4, 6), scaling)
    pixels = preprocessor.prepare(encode(halves("RGB", (12, 8), BLACK, WHITE)))
    assert pixels.shape == (4, 6, 3) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[:, 0], black, atol=1e-6)
    np.testing.assert_allclose(pixels[:, -1], white, atol=1e-6)
    mid_grey = preprocessor.prepare(encode(Image.new("L", (4, 4), 51)))
    np.testing.assert_allclose(mid_grey, 51 * scaling.scale + scaling.offset, atol=1e-6)


def test_encoded_input_gets_the_original_bytes():
    data = encode(Image.new("RGB", (20, 10), RED), "JPEG")
    assert Preprocessor(signature(InputKind.ENCODED)).prepare(data) == data


@pytest.mark.parametrize("kind", list(InputKind))
def test_garbage_is_an_image_error(kind):
    with pytest.raises(ImageError, match="cannot decode image") as caught:
        Preprocessor(signature(kind)).prepare(b"<html>definitely not an image</html>")
    assert caught.value.stage == "preprocess"


def test_formats_the_fetcher_does_not_accept_are_refused():
    with pytest.raises(ImageError, match="cannot decode image: not a PNG, JPEG"):
        prepare(encode(Image.new("RGB", (16, 16), RED), "ICO"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_an_image_error(fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(ImageError, match="cannot decode image: .*runcated"):
        prepare(data[: len(data) // 2])


def test_truncated_png_is_refused_for_an_encoded_input():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageError, match="cannot decode image"):
        Preprocessor(signature(InputKind.ENCODED)).prepare(data[: len(data) // 2])


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", list(InputKind))
@pytest.mark.parametrize("width, height", [
    (20_000, 20_000),  # over twice Image.MAX_IMAGE_PIXELS: Pillow itself refuses to open it
    (10_000, 10_000),  # over the limit but under twice it, where Pillow would only warn
])
def test_decompression_bomb_is_refused_quickly(kind, width, height):
    limit = Image.MAX_IMAGE_PIXELS
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"image too large: .*pixels"):
        Preprocessor(signature(kind)).prepare(png_claiming_size(width, height))
    assert time.monotonic() - started < 0.5
    assert Image.MAX_IMAGE_PIXELS == limit


@pytest.mark.parametrize("kind", list(InputKind))
def test_the_pixel_cap_is_read_from_the_header_before_decoding(kind):
    # 5000 x 5000 is under Pillow's own limit, over the default 16 MP cap; the file holds no pixel data at all,
    # so only a refusal from the header can give this message.
    with pytest.raises(ImageError, match=r"5000x5000 = 25000000 pixels, over the limit of 16777216 "
                                         r"\(--max-image-pixels\)"):
        Preprocessor(signature(kind)).prepare(png_claiming_size(5000, 5000))
    with pytest.raises(ImageError, match="over the limit of 100 "):
        Preprocessor(signature(kind), max_pixels=100).prepare(encode(Image.new("RGB", (11, 10), RED)))
    if kind is not InputKind.ENCODED:  # with a higher cap, decoding is tried (and finds no pixel data)
        with pytest.raises(ImageError) as caught:
            Preprocessor(signature(kind), max_pixels=30_000_000).prepare(png_claiming_size(5000, 5000))
        assert "too large" not in str(caught.value)


def test_tiff_is_not_an_accepted_format():
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(tiff, format="TIFF")
    with pytest.raises(ImageError, match="cannot decode image: not a PNG, JPEG, GIF, WEBP, BMP image"):
        Preprocessor(signature(InputKind.UINT8)).prepare(tiff.getvalue())


def test_the_memory_bound_follows_the_caps():
    assert Preprocessor(signature(InputKind.UINT8), max_pixels=1000, max_decodes=3).memory_bound() == 3 * 1000 * 16


def test_stack_makes_one_batch_of_arrays():
    from bridge.model.predictor import stack

    preprocessor = Preprocessor(signature(InputKind.UINT8, 4, 6))
    images = [preprocessor.prepare(encode(Image.new("RGB", (9, 9), colour))) for colour in (RED, GREEN, BLUE)]
    batch = stack(preprocessor.signature, images)
    assert batch.shape == (3, 4, 6, 3) and batch.dtype == np.uint8
    assert_colour(batch[2, 0, 0], BLUE, tolerance=0)


def test_stack_of_encoded_images_is_the_list_of_bytes():
    from bridge.model.predictor import stack

    preprocessor = Preprocessor(signature(InputKind.ENCODED))
    items = [encode(Image.new("RGB", (4, 4), colour)) for colour in (RED, GREEN)]
    assert stack(preprocessor.signature, [preprocessor.prepare(item) for item in items]) == items


@pytest.mark.parametrize("kind", [InputKind.UINT8, InputKind.FLOAT32, InputKind.ENCODED])
def test_the_probe_image_prepares_for_every_kind_of_signature(kind):
    from bridge.images.preprocess import probe_png

    prepared = Preprocessor(signature(kind, 4, 6)).prepare(probe_png())
    assert isinstance(prepared, bytes) if kind is InputKind.ENCODED else prepared.shape == (4, 6, 3)
