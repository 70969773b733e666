"""Near-duplicate images, found by the model's own backbone features.

Byte comparison (:mod:`autocls.leakage`) finds copies; a resized, re-encoded or slightly cropped
copy has other bytes but nearly the same pooled backbone features. Two images are near-duplicates
when the cosine similarity of their features (the lead fold model's ``pre_logits``: the pooled
features its classifier reads) is at least :data:`SIMILARITY`.

The training images' features are computed once per model and cached in the model folder
(``features-<key>.npz``, float16, rows in the order of ``oof_predictions.csv``), so a report and
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

from autocls.atomic import write_atomically
from autocls.ensemble import MANIFEST, OOF_FILE, Ensemble
from autocls.images import decode_images, resize_batch
from autocls.preprocess import Preprocess, autocast, norm_tensors

logger = logging.getLogger(__name__)

# Cosine similarity of pooled ImageNet features at or above which two images are near-duplicates.
# Measured on Fashion-MNIST with Lite0 (docs in bench/label_issues.py): a 10%-larger re-encoded copy
# scores above 0.98; distinct images of one class rarely pass 0.95.
SIMILARITY = 0.97
EMBED_BATCH = 128


@dataclass(frozen=True)
class NearDuplicate:
    first: int  # row of the first set
    second: int  # row of the second set (of the same set, with first < second, when there is one set)
    similarity: float


@torch.inference_mode()
def embed(model: Ensemble, images: torch.Tensor) -> np.ndarray:
    """Pooled features of ``(N, 3, H, W)`` uint8 images decoded at the model's
    ``decode_size``, from the first fold model of its member of most weight."""
    lead = max(model.members, key=lambda m: m.weight)
    net = lead.models[0]
    preprocess = Preprocess(*norm_tensors(lead.mean, lead.std, model.device), model.device)
    resized = resize_batch(images, lead.config.resolution)
    chunks = []
    for start in range(0, len(resized), EMBED_BATCH):
        with autocast(model.device):
            features = net.forward_head(net.forward_features(preprocess(resized[start : start + EMBED_BATCH])), True)
        chunks.append(features.float().flatten(1).cpu())
    if not chunks:
        return np.zeros((0, 0), np.float32)
    return torch.cat(chunks).numpy()


def directions(features: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Unit vectors of ``features`` less ``centre`` (the training images' mean feature). Pooled
    post-ReLU features share a large common component, so raw cosines of unrelated images are high
    (above 0.97 for an untrained network); measured from their mean, only similar images align."""
    shifted = features.astype(np.float32) - centre
    return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)


def near_duplicates(
    first: np.ndarray, second: np.ndarray | None = None, threshold: float = SIMILARITY, block: int = 1024
) -> list[NearDuplicate]:
    """Pairs of rows (unit vectors) with cosine similarity at least ``threshold``, most similar first:
    within ``first`` (each pair once) when ``second`` is None, else between the two. Blocked, so
    memory stays ``block x len(second)`` for any size."""
    other = first if second is None else second
    found = []
    for start in range(0, len(first), block):
        sims = first[start : start + block].astype(np.float32) @ other.T.astype(np.float32)
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if second is None and c <= i:
                continue
            found.append(NearDuplicate(i, c, float(sims[r, c])))
    return sorted(found, key=lambda d: -d.similarity)


@dataclass
class TrainingFeatures:
    """The training images a model folder lists (its out-of-fold table), their feature directions
    (zero rows for images unreadable now: they match nothing) and the centre they are measured from."""

    table: pd.DataFrame
    directions: np.ndarray
    centre: np.ndarray

    def of(self, model: Ensemble, images: torch.Tensor) -> np.ndarray:
        """Directions of other images, measured from the same centre."""
        return directions(embed(model, images), self.centre)


def training_features(model_dir: Path, model: Ensemble) -> TrainingFeatures:
    """Features of the training images ``model_dir`` lists, from the folder's cache when present."""
    oof = pd.read_csv(model_dir / OOF_FILE, dtype={"label": str, "true_label": str}, encoding_errors="surrogateescape")
    digest = hashlib.sha256((model_dir / MANIFEST).read_bytes() + (model_dir / OOF_FILE).read_bytes())
    cache = model_dir / f"features-{digest.hexdigest()[:16]}.npz"
    features = _read_cache(cache, len(oof))
    if features is None:
        images, kept, _ = decode_images([Path(p) for p in oof["path"]], model.decode_size)
        computed = embed(model, images)
        features = np.zeros((len(oof), computed.shape[1] if len(computed) else 1), np.float32)
        readable = np.zeros(len(oof), bool)
        features[kept], readable[kept] = computed, True
        try:
            write_atomically(cache, lambda f: np.savez(f, features=features.astype(np.float16), readable=readable))
        except OSError as err:  # a read-only model folder: fine, only slower next time
            logger.debug("feature cache not written to %s: %s", cache, err)
    else:
        features, readable = features
    centre = features[readable].mean(axis=0) if readable.any() else np.zeros(features.shape[1], np.float32)
    unit = directions(features, centre)
    unit[~readable] = 0.0
    return TrainingFeatures(oof, unit, centre)


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
