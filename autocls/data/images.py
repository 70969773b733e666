"""Image decoding and the decoded-image store.

Every image is decoded once, converted to 8-bit RGB, EXIF-transposed and resized (shorter side to
the store's size, then centre-cropped to a square) by :mod:`autocls.data.pixels`. Trials, refit and
prediction all read from the same uint8 array, so no epoch pays for a JPEG decode and prediction
sees exactly the pixels that training saw. A study's images are streamed into the on-disk cache
(:mod:`autocls.data.imagecache`) and memory-mapped; prediction decodes into one tensor in memory.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from autocls.data.discover import LabelledImages
from autocls.data.imagecache import (
    CACHE_VERSION,
    CacheEntry,
    CacheIndex,
    DecodeClock,
    allocate,
    decode_to_cache,
    holding,
    resized_entry,
)
from autocls.data.pixels import BACKGROUND, IMAGE_ERRORS, Decoded, decode_file, fit_square, load_square, to_rgb
from autocls.runtime.atomic import write_atomically
from autocls.runtime.devicememory import place_images
from autocls.runtime.errors import AutoclsError

__all__ = ["BACKGROUND", "IMAGE_ERRORS", "ImageStore", "build_store", "decode_images", "fit_square", "load_square"]
__all__ += ["resize_batch", "to_rgb"]

logger = logging.getLogger(__name__)


def decode_images(
    paths: Sequence[Path], size: int, threads: int | None = None
) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Decode ``paths`` into an ``(N, 3, size, size)`` uint8 tensor in memory (prediction, evaluation).

    Returns the tensor of the images that decoded, their positions in ``paths``, and
    ``(path, reason)`` for those that did not. Each image is written into one preallocated tensor as
    it is decoded, so the decoded size is held once. Pillow releases the GIL while decoding, so
    threads help; a study's data goes through the on-disk cache instead (:func:`build_store`).
    """
    images, kept, failed, _ = _decode_in_memory(paths, size, threads)
    return images, kept, failed


def resize_batch(images: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """Resize an ``(N, 3, H, W)`` uint8 batch to ``size`` x ``size`` (antialiased bilinear), in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    resize_into(images, out, chunk)
    return out


def resize_into(images: torch.Tensor, out: torch.Tensor, chunk: int = 512) -> None:
    """Write ``images`` resized to ``out``'s size into ``out``, ``chunk`` images at a time: the
    floats of one chunk are all the extra memory it takes."""
    size = out.shape[-1]
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        resized = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)


DISK_RESIZE_CHUNK = 128  # images resized at a time into a file: 77 MB of floats at 224 px, whatever N


class ImageStore:
    """Decoded images of a dataset at ``base_size``, with memoised copies at each trial resolution
    and the output of one frozen network part over them (see :meth:`features`).

    ``content`` is each image's content hash (:func:`autocls.data.pixels.content_hash`), in order. A
    store read from the decode cache (``entry``) keeps its copies at other resolutions on disk too,
    memory-mapped, so no resolution needs the data's size in memory.
    """

    def __init__(
        self, images: torch.Tensor, content: Sequence[str] | None = None, entry: CacheEntry | None = None
    ) -> None:
        self.images = images
        self.content = tuple(content) if content is not None else None
        self.entry = entry
        self._resized: dict[int, torch.Tensor] = {}
        self._placed: dict[tuple[int, str], torch.Tensor] = {}
        self._features: dict[tuple, torch.Tensor] = {}

    @property
    def base_size(self) -> int:
        return int(self.images.shape[-1])

    def at(self, size: int) -> torch.Tensor:
        if size == self.base_size:
            return self.images
        if size not in self._resized:
            self._resized[size] = resize_batch(self.images, size) if self.entry is None else self._on_disk(size)
        return self._resized[size]

    def _on_disk(self, size: int) -> torch.Tensor:
        """The images at ``size`` from the cache entry beside the base one, written once (streamed,
        under the entry's lock, like the decode) and memory-mapped."""
        assert self.entry is not None
        entry = resized_entry(self.entry, size)
        shape = (self.images.shape[0], 3, size, size)
        if (found := entry.read()) is None:
            with holding(entry.lock, None, lambda: logger.info("waiting for another process resizing to %d px", size)):
                if (found := entry.read()) is None:
                    allocate(entry.partial, math.prod(shape))  # a full disk is one line, not SIGBUS
                    if shape[0]:
                        out = np.memmap(entry.partial, dtype=np.uint8, mode="r+", shape=shape)
                        resize_into(self.images, torch.from_numpy(out), chunk=DISK_RESIZE_CHUNK)
                        out.flush()
                        del out
                    os.replace(entry.partial, entry.array)
                    write_atomically(entry.index, CacheIndex(shape, [], [], []).to_json())
                    found = entry.read()
        assert found is not None
        return torch.from_numpy(found[0])

    def on(self, size: int, device: torch.device, place: bool = True) -> torch.Tensor:
        """The images at ``size`` where training on ``device`` takes them from fastest (see
        :func:`autocls.runtime.devicememory.place_images`); placed once per size while this store lives.
        ``place=False`` (an out-of-memory retry) drops any copy on a device and gives the host's."""
        if not place:
            self._placed.clear()
            return self.at(size)
        key = (size, str(device))
        if key not in self._placed:
            self._placed.clear()  # one resolution at a time on a device: trials of one size follow each other
            self._placed[key] = place_images(self.at(size), device)
        return self._placed[key]

    def scratch(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An empty float32 tensor of ``shape`` for data as large as the images (frozen features):
        for a store read from the cache, a file of its own, memory-mapped and already unlinked, so
        the kernel pages it out under pressure and removes it with the last reference; in memory
        otherwise."""
        if self.entry is None or not math.prod(shape):
            return torch.empty(shape, dtype=torch.float32)
        fd, name = tempfile.mkstemp(prefix=".features.", dir=self.entry.directory)
        os.close(fd)
        path = Path(name)
        try:
            allocate(path, 4 * math.prod(shape))  # a full disk is one line, not SIGBUS
            mapped = np.memmap(path, dtype=np.float32, mode="r+", shape=shape)
        finally:
            path.unlink(missing_ok=True)  # the mapping keeps the pages; no file is left behind
        return torch.from_numpy(mapped)

    def features(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` (a frozen network part over every image, in order), once per ``key`` while
        this store lives. Held by the store, so features can only ever be those of these images: a
        process-wide cache keyed by ``id()`` of a freed tensor handed stale features to new data.
        One key at a time, since the feature maps of early stages can be large."""
        if key not in self._features:
            self._features.clear()
            self._features[key] = compute()
        return self._features[key]


def build_store(
    data: LabelledImages, size: int, cache_dir: Path | None = None, clock: DecodeClock | None = None
) -> tuple[LabelledImages, ImageStore]:
    """Decode every image of ``data`` once; unreadable files are skipped with one warning.

    With ``cache_dir`` the images are streamed into the on-disk cache (:mod:`autocls.data.imagecache`),
    keyed by the data's local fingerprint (paths, sizes, modification times, labels) and the size,
    and memory-mapped: memory does not grow with the data, a search restarted, a refit or a second
    worker on the same data decodes nothing, and a dataset larger than RAM is paged in as needed.
    ``clock`` bounds that decode by the time budget and hears how long it will take.
    """
    if cache_dir is None:
        images, kept, failed, content = _decode_in_memory(data.paths, size)
        entry = None
    else:
        entry = cache_entry(data, size, cache_dir)
        array, index = decode_to_cache(data.paths, size, entry, clock)
        images, kept, content = torch.from_numpy(array), index.kept, index.hashes
        failed = [(data.paths[i], reason) for i, reason in index.failed]
    require_some_readable(len(data), failed)
    warn_unreadable(failed)
    return data.subset(kept), ImageStore(images, content, entry)


def cache_entry(data: LabelledImages, size: int, cache_dir: Path) -> CacheEntry:
    """The decode cache's entry for ``data`` at ``size``."""
    key = hashlib.sha256(f"{data.fingerprint()}|{size}|{CACHE_VERSION}".encode()).hexdigest()[:20]
    return CacheEntry(cache_dir, key)


def _decode_in_memory(
    paths: Sequence[Path], size: int, threads: int | None = None
) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]], list[str]]:
    """:func:`decode_images`, and the content hash of each image kept."""
    threads = threads or min(8, os.cpu_count() or 1)
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    rows = images.numpy()

    def load(position: int) -> Decoded:
        decoded = decode_file(paths[position], size)
        if decoded.pixels is not None:
            rows[position] = decoded.pixels.transpose(2, 0, 1)
        return replace(decoded, pixels=None)  # the pixels are in the tensor: not held twice

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(load, range(len(paths))))
    kept = [i for i, result in enumerate(results) if result.error is None]
    failed = [(Path(paths[i]), result.error) for i, result in enumerate(results) if result.error is not None]
    if failed:
        images = images[torch.as_tensor(kept, dtype=torch.long)]  # rows of the kept images, in order
    return images, kept, failed, [results[i].content for i in kept]


def check_image_input(item: object) -> None:
    """Refuse, with what to pass instead, an input that is no image path, PIL image or ``(C, H, W)``
    tensor: an ``(H, W, C)`` tensor (PIL's and NumPy's layout), a batch, a bare ``(H, W)`` plane, an array."""
    if isinstance(item, torch.Tensor):
        shape = tuple(item.shape)
        if len(shape) == 3 and shape[0] in (1, 3):
            return
        if len(shape) == 3 and shape[-1] in (1, 3):
            fix = "channels first, (3, H, W): tensor.permute(2, 0, 1)"
        elif len(shape) == 4:
            fix = "a list of (3, H, W) images: list(batch)"
        else:
            fix = "(3, H, W) images (or (1, H, W) for grey), in a list"
        raise AutoclsError(f"an image tensor of shape {shape} is not (3, H, W) or (1, H, W); pass {fix}.")
    if not isinstance(item, str | os.PathLike | Image.Image):
        raise AutoclsError(
            f"an input of type {type(item).__name__} is not an image; pass image paths, PIL images or "
            "(3, H, W) tensors (a NumPy (H, W, 3) array: torch.from_numpy(array).permute(2, 0, 1))."
        )


def require_some_readable(total: int, failed: list[tuple[Path, str]]) -> None:
    """Nothing to do is an error, not an empty result: every one of ``total`` images failed to decode."""
    if total and len(failed) == total:
        path, reason = failed[0]
        raise AutoclsError(
            f"none of the {total} images could be read (e.g. {path}: {reason}); nothing was done: "
            "give image files that Pillow opens (JPEG, PNG, WebP, ...)."
        )


def warn_unreadable(failed: list[tuple[Path, str]]) -> None:
    """One warning for all files that could not be decoded: the first few named, and a count."""
    if failed:
        shown = "; ".join(f"{path}: {reason}" for path, reason in failed[:3])
        more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
        logger.warning("skipping %d unreadable images: %s%s", len(failed), shown, more)
