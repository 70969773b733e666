"""Evaluation images that are also training images: a held-out score computed on them is not held out.

A model folder's manifest names the data it was trained on. Files are compared by content (SHA-256
of the bytes), so a copy under another name or folder is found; files are hashed only when some
file on the other side has the same size, so a large training set costs a directory listing.
Re-encoded or resized copies are not found.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from autocls.data.discover import DataSpec, LabelledImages
from autocls.runtime.errors import AutoclsError

logger = logging.getLogger(__name__)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _by_size(paths: Sequence[Path]) -> dict[int, list[Path]]:
    sizes: dict[int, list[Path]] = defaultdict(list)
    for path in paths:
        try:
            sizes[path.stat().st_size].append(path)
        except OSError:
            continue
    return sizes


def training_data(spec: DataSpec | None) -> LabelledImages | None:
    """The training data a model's manifest names (``spec``), as it is now; ``None`` when it names
    none or it cannot be listed here (moved, or another machine)."""
    if spec is None:
        return None
    data_log = logging.getLogger("autocls.data.discover")
    level = data_log.level
    data_log.setLevel(logging.ERROR)  # the search warned about this data already; listing it again is quiet
    try:
        return spec.discover()
    except (AutoclsError, TypeError, OSError) as err:
        logger.debug("training data not found: %s", err)
        return None
    finally:
        data_log.setLevel(level)


def duplicates_of_training(spec: DataSpec | None, paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """``(evaluation file, training file)`` pairs with the same bytes; empty when the training data
    a model's manifest names (``spec``) cannot be listed here (moved, or another machine)."""
    training = training_data(spec)
    if training is None:
        return []
    train_sizes = _by_size(training.paths)
    found = []
    for size, evaluated in _by_size(paths).items():
        if size not in train_sizes:
            continue
        train_digests: dict[str, Path] = {}
        for path in train_sizes[size]:
            digest = _digest(path)
            if digest:
                train_digests.setdefault(digest, path)
        for path in evaluated:
            digest = _digest(path)
            if digest in train_digests:
                found.append((path, train_digests[digest]))
    return sorted(found)
