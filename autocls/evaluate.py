"""Evaluation of a saved ensemble on labelled images: metrics, per-class report, confusion matrix."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from autocls.calibration import expected_calibration_error, scale
from autocls.data import discover
from autocls.ensemble import Ensemble
from autocls.errors import AutoclsError
from autocls.images import decode_images, require_some_readable, warn_unreadable
from autocls.leakage import duplicates_of_training
from autocls.neardup import SIMILARITY, nearest, training_features
from autocls.reports import evaluation_tables

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    accuracy: float
    balanced_accuracy: float
    per_class: pd.DataFrame
    confusion_matrix: pd.DataFrame
    predictions: pd.DataFrame
    ece: float  # expected calibration error of the model's confidences (15 bins)
    ece_uncalibrated: float  # the same without the temperature refit fitted
    temperature: float
    training_duplicates: int  # evaluated images whose bytes are those of a training image
    near_duplicates: int = 0  # evaluated images that are resized or re-encoded copies of a training image


def evaluate(model: str | Path | Ensemble, data: str | Path, labels_csv: str | None = None, device: str = "auto"):
    """Predict every labelled image under ``data`` and compare with its label.

    Class names are matched by name; a label the model does not know is an error.
    """
    ensemble = model if isinstance(model, Ensemble) else Ensemble.load(model, device)
    labelled = discover(data, labels_csv, min_classes=1)  # a test set of one class is fine to score
    unknown = sorted(set(labelled.class_names) - set(ensemble.class_names))
    if unknown:
        raise AutoclsError(f"{data}: classes {unknown} are not among the model's {ensemble.class_names}.")
    duplicates = duplicates_of_training(ensemble.manifest, labelled.paths)
    if duplicates:
        evaluated, trained = duplicates[0]
        logger.warning(
            "%d of the %d evaluation images are training images of this model (e.g. %s is %s): "
            "their score is not a held-out score",
            len(duplicates),
            len(labelled.paths),
            evaluated,
            trained,
        )
    images, kept, failed = decode_images(labelled.paths, ensemble.decode_size)
    require_some_readable(len(labelled.paths), failed)
    warn_unreadable(failed)
    index = {name: i for i, name in enumerate(ensemble.class_names)}
    truth = np.array([index[labelled.class_names[labelled.labels[i]]] for i in kept])
    near = _near_duplicates_of_training(ensemble, images, [labelled.paths[i] for i in kept])
    raw = ensemble.predict_images(images, calibrated=False)
    probs = scale(raw, ensemble.temperature)
    predictions = ensemble.to_frame([str(labelled.paths[i]) for i in kept], probs)
    predictions.insert(1, "true_label", [ensemble.class_names[t] for t in truth])
    with warnings.catch_warnings():  # a test set of fewer classes than the model's is fine to score
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        tables = evaluation_tables(truth, probs.argmax(1), ensemble.class_names)
    return Evaluation(
        predictions=predictions,
        ece=expected_calibration_error(probs, truth),
        ece_uncalibrated=expected_calibration_error(raw, truth),
        temperature=ensemble.temperature,
        training_duplicates=len(duplicates),
        near_duplicates=near,
        **tables,
    )


def _near_duplicates_of_training(ensemble: Ensemble, images: torch.Tensor, paths: list[Path]) -> int:
    """How many evaluation images are near-duplicates of a training image (one warning names the
    closest pair); none when the model was not loaded from a folder (nothing to compare with)."""
    folder = ensemble.directory
    if folder is None or not len(images):
        return 0
    train = training_features(folder, ensemble.decode_size)
    matches = nearest(train.of(images), train.directions)
    flagged = np.flatnonzero(matches.similarity >= SIMILARITY)
    if len(flagged):
        closest = flagged[np.argmax(matches.similarity[flagged])]
        logger.warning(
            "%d of the %d evaluation images are near-duplicates of training images (resized or re-encoded copies: "
            "thumbnails at least %.2f similar; e.g. %s ~ %s, %.3f): their score is not quite a held-out score",
            len(flagged),
            len(images),
            SIMILARITY,
            paths[closest],
            train.table["path"].iloc[matches.index[closest]],
            matches.similarity[closest],
        )
    return len(flagged)


def print_evaluation(result: Evaluation, console: Console) -> None:
    console.print(
        f"accuracy {result.accuracy:.4f} · balanced accuracy {result.balanced_accuracy:.4f} · "
        f"{len(result.predictions)} images"
    )
    console.print(
        f"expected calibration error {result.ece:.4f} (temperature {result.temperature:.3f}; "
        f"{result.ece_uncalibrated:.4f} without it)"
    )
    report = Table(title="per-class report")
    for column in ("class", "precision", "recall", "f1", "support"):
        report.add_column(column, justify="left" if column == "class" else "right")
    for name, row in result.per_class.iterrows():
        report.add_row(str(name), f"{row.precision:.3f}", f"{row.recall:.3f}", f"{row.f1:.3f}", f"{int(row.support)}")
    console.print(report)
    matrix = Table(title="confusion matrix (rows: true class, columns: predicted)")
    matrix.add_column("")
    for name in result.confusion_matrix.columns:
        matrix.add_column(str(name), justify="right")
    for name, row in result.confusion_matrix.iterrows():
        matrix.add_row(str(name), *(str(int(v)) for v in row))
    console.print(matrix)


def write_evaluation(result: Evaluation, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "accuracy": result.accuracy,
        "balanced_accuracy": result.balanced_accuracy,
        "images": len(result.predictions),
        "expected_calibration_error": result.ece,
        "expected_calibration_error_uncalibrated": result.ece_uncalibrated,
        "temperature": result.temperature,
        "training_duplicates": result.training_duplicates,
        "near_duplicates_of_training": result.near_duplicates,
        "per_class": result.per_class.to_dict(orient="index"),
        "confusion_matrix": result.confusion_matrix.to_dict(orient="split"),
    }
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    result.per_class.to_csv(out_dir / "per_class.csv", index_label="class")
    result.confusion_matrix.to_csv(out_dir / "confusion_matrix.csv", index_label="true\\predicted")
    result.predictions.to_csv(out_dir / "predictions.csv", index=False, errors="surrogateescape")
