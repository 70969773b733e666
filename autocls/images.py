"""Image decoding and the decoded-image store.

Every image is decoded once, converted to 8-bit RGB, EXIF-transposed and resized (shorter side to
the store's size, then centre-cropped to a square). Trials, refit and prediction all read from the
same uint8 array, so no epoch pays for a JPEG decode and prediction sees exactly the pixels that
training saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from autocls.atomic import write_atomically
from autocls.data import IMAGE_ERRORS, LabelledImages
from autocls.errors import AutoclsError
from autocls.preprocess import place_images

logger = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as viewers show them


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


def load_square(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` into a ``size`` x ``size`` x 3 uint8 array (shorter side resized, centre crop)."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            # JPEG can decode at 1/2, 1/4 or 1/8 scale: for camera photos this is most of the cost.
            image.draft("RGB", (size, size))
        return fit_square(to_rgb(image), size)


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size``, centre crop to a square: a ``size`` x ``size`` x 3 uint8 array."""
    square = ImageOps.fit(to_rgb(image), (size, size), method=Image.Resampling.BILINEAR)
    return np.array(square, dtype=np.uint8)  # a writable copy: torch.from_numpy wants one


def decode_images(
    paths: Sequence[Path], size: int, threads: int | None = None
) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Decode ``paths`` into an ``(N, 3, size, size)`` uint8 tensor.

    Returns the tensor of the images that decoded, their positions in ``paths``, and
    ``(path, reason)`` for those that did not. Pillow releases the GIL while decoding, so threads help.
    """
    threads = threads or min(8, os.cpu_count() or 1)

    def load(path: Path) -> np.ndarray | str:
        try:
            return load_square(path, size)
        except Image.DecompressionBombError:
            return "image too large (decompression-bomb limit); downscale it"
        except IMAGE_ERRORS as err:
            return f"not a readable image ({err.__class__.__name__}: {err})"

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(load, paths))
    kept = [i for i, r in enumerate(results) if not isinstance(r, str)]
    failed = [(paths[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    array = np.stack([results[i] for i in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), kept, failed


def resize_batch(images: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """Resize an ``(N, 3, H, W)`` uint8 batch to ``size`` x ``size`` (antialiased bilinear), in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        resized = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


class ImageStore:
    """Decoded images of a dataset at ``base_size``, with memoised copies at each trial resolution
    and the output of one frozen network part over them (see :meth:`features`)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self._resized: dict[int, torch.Tensor] = {}
        self._placed: dict[tuple[int, str], torch.Tensor] = {}
        self._features: dict[tuple, torch.Tensor] = {}

    @property
    def base_size(self) -> int:
        return int(self.images.shape[-1])

    def at(self, size: int) -> torch.Tensor:
        if size not in self._resized:
            self._resized[size] = resize_batch(self.images, size)
        return self._resized[size]

    def on(self, size: int, device: torch.device, place: bool = True) -> torch.Tensor:
        """The images at ``size`` where training on ``device`` takes them from fastest (see
        :func:`autocls.preprocess.place_images`); placed once per size while this store lives.
        ``place=False`` (an out-of-memory retry) drops any copy on a device and gives the host's."""
        if not place:
            self._placed.clear()
            return self.at(size)
        key = (size, str(device))
        if key not in self._placed:
            self._placed.clear()  # one resolution at a time on a device: trials of one size follow each other
            self._placed[key] = place_images(self.at(size), device)
        return self._placed[key]

    def features(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` (a frozen network part over every image, in order), once per ``key`` while
        this store lives. Held by the store, so features can only ever be those of these images: a
        process-wide cache keyed by ``id()`` of a freed tensor handed stale features to new data.
        One key at a time, since the feature maps of early stages can be large."""
        if key not in self._features:
            self._features.clear()
            self._features[key] = compute()
        return self._features[key]


CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused


def build_store(data: LabelledImages, size: int, cache_dir: Path | None = None) -> tuple[LabelledImages, ImageStore]:
    """Decode every image of ``data`` once; unreadable files are skipped with one warning.

    With ``cache_dir`` the decoded array is kept on disk, keyed by the data's fingerprint (paths,
    sizes, modification times, labels) and the size, and memory-mapped on later runs: a search
    restarted, a refit or a second worker on the same data decodes nothing, and a dataset larger
    than RAM is paged in as needed. Any change to the files makes a new key.
    """
    if cache_dir is None:
        images, kept, failed = decode_images(data.paths, size)
    else:
        images, kept, failed = _cached_decode(data, size, cache_dir)
    require_some_readable(len(data), failed)
    warn_unreadable(failed)
    return data.subset(kept), ImageStore(images)


def _cached_decode(
    data: LabelledImages, size: int, cache_dir: Path
) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    key = hashlib.sha256(f"{data.fingerprint()}|{size}|{CACHE_VERSION}".encode()).hexdigest()[:20]
    array_path, index_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if array_path.is_file() and index_path.is_file():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        failed = [(Path(p), reason) for p, reason in index["failed"]]
        # copy-on-write map: pages are read from disk when touched, nothing is written back
        return torch.from_numpy(np.load(array_path, mmap_mode="c")), index["kept"], failed
    images, kept, failed = decode_images(data.paths, size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    index = {"kept": kept, "failed": [[str(p), reason] for p, reason in failed]}
    write_atomically(array_path, lambda f: np.save(f, images.numpy()))
    write_atomically(index_path, json.dumps(index).encode())  # written last: the entry is complete
    return images, kept, failed


def require_some_readable(total: int, failed: list[tuple[Path, str]]) -> None:
    """Nothing to do is an error, not an empty result: every one of ``total`` images failed to decode."""
    if total and len(failed) == total:
        path, reason = failed[0]
        raise AutoclsError(f"none of the {total} images could be read (e.g. {path}: {reason}); nothing was done.")


def warn_unreadable(failed: list[tuple[Path, str]]) -> None:
    """One warning for all files that could not be decoded: the first few named, and a count."""
    if failed:
        shown = "; ".join(f"{path}: {reason}" for path, reason in failed[:3])
        more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
        logger.warning("skipping %d unreadable images: %s%s", len(failed), shown, more)
