"""One image file to one square of 8-bit RGB pixels, and the hash of its bytes.

Imports only Pillow, numpy and hashlib: the decode's worker processes (:mod:`autocls.data.imagecache`)
import this module alone, so each starts in a fraction of a second and holds a few MiB, not torch's
few hundred.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as viewers show them

# Everything Pillow raises on a file it cannot decode: OSError (UnidentifiedImageError, truncated
# data), but also ValueError, SyntaxError, EOFError, IndexError, TypeError and struct.error from
# malformed headers, and DecompressionBombError (an Exception, not an OSError) past the pixel limit.
IMAGE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB for any PIL mode: grayscale, palette, RGBA/LA, CMYK and 16/32-bit integer images."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit: stretch the used range to 0..255; a plain convert('L') clips everything above 255.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size``, centre crop to a square: a ``size`` x ``size`` x 3 uint8 array."""
    square = ImageOps.fit(to_rgb(image), (size, size), method=Image.Resampling.BILINEAR)
    return np.array(square, dtype=np.uint8)  # a writable copy: torch.from_numpy wants one


def open_square(image: Image.Image, size: int) -> np.ndarray:
    """``image`` (just opened) as a ``size`` x ``size`` x 3 uint8 array."""
    if image.format == "JPEG":
        # JPEG can decode at 1/2, 1/4 or 1/8 scale: for camera photos this is most of the cost.
        image.draft("RGB", (size, size))
    return fit_square(image, size)


def load_square(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` into a ``size`` x ``size`` x 3 uint8 array (shorter side resized, centre crop)."""
    with Image.open(path) as image:
        return open_square(image, size)


def content_hash(content: bytes) -> str:
    """The hash by which a study knows an image: its bytes, whatever its path or modification time."""
    return hashlib.sha256(content).hexdigest()[:32]  # 128 bits: collisions need ~2^64 files


@dataclass(frozen=True)
class Decoded:
    """One file decoded: its pixels and the hash of its bytes, or why it could not be read."""

    pixels: np.ndarray | None
    content: str | None
    error: str | None


def decode_file(path: str | Path, size: int) -> Decoded:
    """Read ``path`` once: hash its bytes and decode them (see :func:`load_square`)."""
    try:
        content = Path(path).read_bytes()
    except OSError as err:
        return Decoded(None, None, f"cannot be read ({err.strerror or err})")
    buffer = io.BytesIO(content)
    buffer.name = str(path)  # Pillow's messages and format checks see the file's name, not a buffer
    try:
        with Image.open(buffer) as image:
            pixels = open_square(image, size)
    except Image.DecompressionBombError:
        return Decoded(None, None, "image too large (decompression-bomb limit); downscale it")
    except UnidentifiedImageError:
        return Decoded(None, None, "not a readable image (not a format Pillow reads, or a damaged file)")
    except IMAGE_ERRORS as err:
        return Decoded(None, None, f"not a readable image ({err or 'damaged file'})")
    return Decoded(pixels, content_hash(content), None)
