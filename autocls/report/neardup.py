"""Near-duplicate images: resized or re-encoded copies, which byte comparison misses.

Byte comparison (:mod:`autocls.data.leakage`) finds exact copies. A copy saved again at another size or
quality has other bytes but nearly the same small thumbnail: each image is described by its
16x16 area-averaged RGB thumbnail (of the decoded image the model sees), measured from the
training images' mean thumbnail, and two images are near-duplicates when the cosine similarity of
those descriptors is at least :data:`SIMILARITY`.

Why thumbnails and not the model's backbone features: measured on 2,000 Fashion-MNIST training
images with 100 copies enlarged by 10% and saved as JPEG (``bench/label_issues.py``), the fine-tuned
Lite0's pooled features put distinct images of a class as close as the copies (classes collapse:
the median nearest distinct image scored 0.983, the copies 0.989, some copies 0.54), and ImageNet
Lite0 features missed half the copies at 0.9; the thumbnails scored every copy at 0.9986 or more
and no two distinct images above 0.99. They also cost no forward pass and work for any model.

The training images' descriptors are computed once per model and cached in the model folder
(``features-<key>.npz``, keyed by the manifest and the list of training files), so a report and
every evaluation after the first pay only for their own images. A read-only model folder is used
without the cache.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from autocls.data.images import decode_images
from autocls.data.leakage import training_data
from autocls.model.ensemble import OOF_FILE
from autocls.model.manifest import MANIFEST, Manifest
from autocls.runtime.atomic import write_atomically

logger = logging.getLogger(__name__)

SIMILARITY = 0.99  # cosine of centred thumbnails at or above which two images are near-duplicates
THUMBNAIL = 16
BLOCK_ELEMENTS = 2**24  # similarities computed at once: 64 MB of float32


@dataclass(frozen=True)
class NearDuplicate:
    first: int
    second: int  # first < second
    similarity: float


def describe(images: torch.Tensor) -> np.ndarray:
    """The descriptor of each ``(N, 3, H, W)`` uint8 image: its 16x16 area-averaged RGB thumbnail."""
    if not len(images):
        return np.zeros((0, 3 * THUMBNAIL * THUMBNAIL), np.float32)
    return F.adaptive_avg_pool2d(images.float(), THUMBNAIL).flatten(1).numpy()


def directions(features: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Unit vectors of ``features`` less ``centre`` (the training images' mean): what all images
    share (a dark background, a centred object) no longer counts as similarity."""
    shifted = features.astype(np.float32) - centre
    return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Pairs:
    """How many pairs passed the threshold, and the ``top`` most similar of them."""

    count: int
    closest: list[NearDuplicate]


def near_duplicates(
    features: np.ndarray,
    labels: np.ndarray | None = None,
    threshold: float = SIMILARITY,
    top: int = 20,
    *,
    block_elements: int = BLOCK_ELEMENTS,
) -> Pairs:
    """Pairs of rows of ``features`` (unit vectors) with cosine similarity at least ``threshold``,
    each pair once; with ``labels``, only pairs labelled differently. Memory stays bounded for any
    number of images (blocks of ``block_elements`` similarities; only ``top`` pairs are kept), even
    when thousands of images are copies of one another."""
    count, closest = 0, []
    rows = max(1, block_elements // max(len(features), 1))
    for start in range(0, len(features), rows):
        sims = features[start : start + rows] @ features.T
        mask = sims >= threshold
        mask &= np.arange(len(features))[None, :] > np.arange(start, start + len(sims))[:, None]
        if labels is not None:
            mask &= labels[start : start + len(sims), None] != labels[None, :]
        r, c = np.nonzero(mask)
        count += len(r)
        if len(r) > top:
            best = np.argpartition(-sims[r, c], top)[:top]
            r, c = r[best], c[best]
        closest += [NearDuplicate(start + i, j, float(sims[i, j])) for i, j in zip(r.tolist(), c.tolist(), strict=True)]
        closest = sorted(closest, key=lambda d: -d.similarity)[:top]
    return Pairs(count, closest)


def nearest(queries: np.ndarray, references: np.ndarray, block_elements: int = BLOCK_ELEMENTS) -> NearestMatches:
    """For each query row, the most similar reference row and its cosine similarity (unit vectors)."""
    index = np.zeros(len(queries), dtype=np.int64)
    similarity = np.full(len(queries), -1.0, dtype=np.float32)
    rows = max(1, block_elements // max(len(references), 1))
    for start in range(0, len(queries) if len(references) else 0, rows):
        sims = queries[start : start + rows] @ references.T
        index[start : start + len(sims)] = sims.argmax(axis=1)
        similarity[start : start + len(sims)] = sims.max(axis=1)
    return NearestMatches(index, similarity)


@dataclass(frozen=True)
class NearestMatches:
    index: np.ndarray  # of the most similar reference row, per query
    similarity: np.ndarray  # its cosine similarity


@dataclass
class TrainingFeatures:
    """The training images (:func:`training_table`), their descriptor directions
    (zero rows for images unreadable now: they match nothing) and the centre they are measured from."""

    table: pd.DataFrame
    directions: np.ndarray
    centre: np.ndarray

    def of(self, images: torch.Tensor) -> np.ndarray:
        """Directions of other images (decoded as the model decodes), measured from the same centre."""
        return directions(describe(images), self.centre)


def training_features(model_dir: Path, decode_size: int) -> TrainingFeatures:
    """Descriptors of the model's training images, from the model folder's cache when present."""
    table = training_table(model_dir)
    digest = hashlib.sha256((model_dir / MANIFEST).read_bytes())
    digest.update("\n".join(table["path"]).encode("utf-8", "surrogateescape"))
    cache = model_dir / f"features-{digest.hexdigest()[:16]}.npz"
    features = _read_cache(cache, len(table))
    if features is None and not len(table):
        features = np.zeros((0, 3 * THUMBNAIL * THUMBNAIL), np.float32), np.zeros(0, bool)
    if features is None:
        images, kept, _ = decode_images([Path(p) for p in table["path"]], decode_size)
        computed = describe(images)
        features = np.zeros((len(table), computed.shape[1]), np.float32)
        readable = np.zeros(len(table), bool)
        features[kept], readable[kept] = computed, True
        try:
            write_atomically(cache, lambda f: np.savez(f, features=features, readable=readable))
        except OSError as err:  # a read-only model folder: fine, only slower next time
            logger.debug("feature cache not written to %s: %s", cache, err)
    else:
        features, readable = features
    centre = features[readable].mean(axis=0) if readable.any() else np.zeros(features.shape[1], np.float32)
    unit = directions(features, centre)
    unit[~readable] = 0.0
    return TrainingFeatures(table, unit, centre)


def training_table(model_dir: Path) -> pd.DataFrame:
    """``path`` and ``true_label`` of every training image: the data the manifest names, as it is
    now; where that cannot be listed here (moved, another machine), the images of the model
    folder's out-of-fold table (all of them, unless the search trained fewer than all folds)."""
    data = training_data(Manifest.read(model_dir / MANIFEST).data.spec)
    if data is None:
        if not (model_dir / OOF_FILE).is_file():  # nothing says what the model was trained on
            return pd.DataFrame({"path": pd.Series(dtype=str), "true_label": pd.Series(dtype=str)})
        oof = pd.read_csv(
            model_dir / OOF_FILE, dtype={"true_label": str}, keep_default_na=False, encoding_errors="surrogateescape"
        )
        return oof[["path", "true_label"]]
    return pd.DataFrame({"path": [str(p) for p in data.paths], "true_label": data.label_names()})


def _read_cache(cache: Path, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as stored:
            features, readable = stored["features"].astype(np.float32), stored["readable"].astype(bool)
    except (OSError, ValueError, KeyError) as err:
        logger.debug("feature cache %s unreadable (%s): computed again", cache, err)
        return None
    return (features, readable) if len(features) == rows == len(readable) else None
