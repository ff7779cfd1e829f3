"""Turn fetched image bytes into what the serving signature takes: pixels [H, W, 3] or the encoded file itself.

Pure functions of the bytes (no I/O). Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) is honoured,
and strictly: anything over it is refused, not merely warned about.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bridge.errors import ImageError
from bridge.signature import ImageSignature, InputKind

# The formats the fetcher accepts (fetch.sniff_image_type). Pillow's rarer plugins (EPS runs Ghostscript,
# for one) never see untrusted bytes.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")

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
    """Prepares one image for the signature's input (prepare) and stacks prepared images (batch)."""

    def __init__(self, signature: ImageSignature, scaling: ScaleSpec = ScaleSpec()) -> None:
        self.signature = signature
        self.kind = signature.input_kind
        self.scaling = scaling

    def prepare(self, data: bytes) -> np.ndarray | bytes:
        """uint8 or float32 RGB [H, W, 3] for a pixel input; the unchanged bytes for an encoded input."""
        if self.kind is InputKind.ENCODED:
            _verify(data)
            return data
        pixels = _decode_rgb(data, self._size())
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


def _decode_rgb(data: bytes, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    with _decode_errors(), Image.open(io.BytesIO(data), formats=FORMATS) as image:
        _check_pixels(image)
        image.load()  # Pillow decodes lazily: make truncation errors happen here
        upright = ImageOps.exif_transpose(image)
        rgb = _to_rgb(upright)
        resized = rgb.resize((width, height), _RESAMPLE, reducing_gap=_REDUCING_GAP)
        return np.array(resized, dtype=np.uint8)


def _verify(data: bytes) -> None:
    with _decode_errors(), Image.open(io.BytesIO(data), formats=FORMATS) as image:
        _check_pixels(image)  # the model server would decode a bomb just the same
        image.verify()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_GREY_MODES:
        levels = np.clip(np.asarray(image), 0, 65535) >> 8  # keep the top 8 of 16 bits
        image = Image.fromarray(levels.astype(np.uint8))
    if image.has_transparency_data:
        # Composite onto white: dropping alpha would show whatever colour transparent pixels happen to hold.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _check_pixels(image: Image.Image) -> None:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse there too.
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit is not None and pixels > limit:
        raise ImageError(f"image too large: {image.width}x{image.height} = {pixels} pixels, over the limit of "
                         f"{limit} (decompression bomb protection)")


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
