"""Prediction on new images: files and folders in, a table of labels and class probabilities out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from autocls.data.discover import is_image_file
from autocls.data.images import decode_images, require_some_readable, warn_unreadable
from autocls.model.ensemble import Ensemble
from autocls.runtime.errors import AutoclsError


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files among ``inputs``; folders are searched recursively, in sorted order."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if is_image_file(p)))
        elif item.is_file():
            found.append(item)
        else:
            raise AutoclsError(f"{item}: no such file or folder to predict.")
    if not found:
        raise AutoclsError(f"no images found in {', '.join(map(str, inputs))}.")
    return found


def predict(model: str | Path | Ensemble, inputs: Sequence[str | Path], device: str = "auto") -> pd.DataFrame:
    """Predict every image under ``inputs`` with a saved ensemble.

    Returns one row per readable image: ``path``, ``label``, ``confidence`` (the averaged probability
    of that label) and ``prob_<class>`` for each class. Unreadable files are skipped with a warning.
    """
    ensemble = model if isinstance(model, Ensemble) else Ensemble.load(model, device)
    paths = collect_images(inputs)
    images, kept, failed = decode_images(paths, ensemble.decode_size)
    require_some_readable(len(paths), failed)
    warn_unreadable(failed)
    probs = ensemble.predict_images(images)
    return ensemble.to_frame([str(paths[i]) for i in kept], probs)
