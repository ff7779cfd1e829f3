"""Turn fetched image bytes into what the serving signature takes: pixels [H, W, 3] or the encoded file itself.

No I/O. Memory is bounded before any pixel is decoded: the size in the image's header must be within
max_pixels, JPEGs are decoded at the smallest DCT scale that still covers the target size (draft mode), and at
most max_decodes images are decoded at once. A decode then holds at most the decoded image (4 bytes a pixel
for RGBA), its RGB conversion (3) and a few smaller copies, so decoding as a whole stays within
max_decodes x max_pixels x 16 bytes.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bridge.errors import ImageError
from bridge.model.signature import ImageSignature, InputKind

# The formats the fetcher accepts (fetch.sniff_image_type). Pillow's rarer plugins (EPS runs Ghostscript,
# for one) never see untrusted bytes. Not TIFF: a container of many codecs (libtiff's long history of
# advisories), pages and tiles, rare on the web, and TF Serving's decode_image cannot read it anyway.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
DEFAULT_MAX_PIXELS = 16_777_216  # 4096 x 4096: above any phone camera's 12 MP, far below Pillow's 89 MP
BYTES_PER_PIXEL_BOUND = 16  # decoded RGBA (4) + RGB (3) + resize and conversion buffers, with room to spare

# Pillow keeps 16-bit greyscale in these modes and clips to 255 when converting to 8 bits.
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})

# BILINEAR rather than LANCZOS: Pillow's bilinear is antialiased when shrinking, close to the bilinear
# resize classifiers are usually trained with, and it does not ring around edges. reducing_gap first
# shrinks big photos by an integer factor (fast box reduce), with no visible loss at 3.0.
_RESAMPLE = Image.Resampling.BILINEAR
_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class ScaleSpec:
    """float32 value = pixel * scale + offset (the default maps 0..255 to 0..1)."""

    scale: float = 1 / 255
    offset: float = 0.0


class Preprocessor:
    """Prepares one image for the signature's input. Safe to call from several threads at once."""

    def __init__(self, signature: ImageSignature, scaling: ScaleSpec = ScaleSpec(),
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_decodes: int = 2) -> None:
        self.signature = signature
        self.kind = signature.input_kind
        self.scaling = scaling
        self.max_pixels = max_pixels
        self.max_decodes = max_decodes
        self._decoding = threading.BoundedSemaphore(max_decodes)

    def memory_bound(self) -> int:
        """Bytes that decoding may hold at once, at most."""
        return self.max_decodes * self.max_pixels * BYTES_PER_PIXEL_BOUND

    def prepare(self, data: bytes) -> np.ndarray | bytes:
        """uint8 or float32 RGB [H, W, 3] for a pixel input; the unchanged bytes for an encoded input."""
        if self.kind is InputKind.ENCODED:
            _verify(data, self.max_pixels)
            return data
        with self._decoding:
            pixels = _decode_rgb(data, self._size(), self.max_pixels)
        if self.kind is InputKind.FLOAT32:
            return pixels.astype(np.float32) * np.float32(self.scaling.scale) + np.float32(self.scaling.offset)
        return pixels

    def _size(self) -> tuple[int, int]:
        size = self.signature.image_size
        assert size is not None  # pixel inputs always have a known (H, W)
        return size


def probe_png(size: int = 32) -> bytes:
    """A plain grey PNG that every image model accepts: the known-good input of health probes."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(out, format="PNG")
    return out.getvalue()


def _decode_rgb(data: bytes, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    height, width = size
    with _decode_errors(), Image.open(io.BytesIO(data), formats=FORMATS) as image:
        _check_pixels(image, max_pixels)  # from the header: nothing is decoded yet
        if image.format == "JPEG":
            # The EXIF rotation comes later and may swap the sides: cover the target either way round.
            side = max(width, height)
            image.draft("RGB", (side, side))
        image.load()  # Pillow decodes lazily: make truncation errors happen here
        ImageOps.exif_transpose(image, in_place=True)  # in place: no second full-size copy
        rgb = _to_rgb(image)
        resized = rgb.resize((width, height), _RESAMPLE, reducing_gap=_REDUCING_GAP)
        return np.array(resized, dtype=np.uint8)


def _verify(data: bytes, max_pixels: int) -> None:
    with _decode_errors(), Image.open(io.BytesIO(data), formats=FORMATS) as image:
        _check_pixels(image, max_pixels)  # the model server would decode a bomb just the same
        image.verify()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_GREY_MODES:
        levels = np.clip(np.asarray(image), 0, 65535) >> 8  # keep the top 8 of 16 bits
        image = Image.fromarray(levels.astype(np.uint8))
    if image.has_transparency_data:
        # Composite onto white: dropping alpha would show whatever colour transparent pixels happen to hold.
        # Pasting with the image as its own mask blends by its alpha, with one RGB copy (not three RGBA ones).
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba)
        return white
    return image if image.mode == "RGB" else image.convert("RGB")  # convert() would copy an RGB image


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageError(f"image too large: {image.width}x{image.height} = {pixels} pixels, over the limit of "
                         f"{max_pixels} (--max-image-pixels)")


@contextmanager
def _decode_errors() -> Iterator[None]:
    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        detail = str(exc).split(", could be")[0]
        raise ImageError(f"image too large: {detail} (decompression bomb protection)") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"cannot decode image: not a {', '.join(FORMATS)} image") from exc
    except Exception as exc:  # malformed files raise OSError, ValueError, SyntaxError, struct.error, IndexError...
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageError(f"cannot decode image: {detail}") from exc
