"""Evaluation of a saved ensemble on labelled images: metrics, per-class report, confusion matrix
(for a multi-label model: mAP, F1 and a per-label table at its thresholds, and label confusions)."""

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

from autocls.data.discover import LabelledImages, discover, labels_in_order
from autocls.data.images import decode_images, require_some_readable, warn_unreadable
from autocls.data.leakage import duplicates_of_training
from autocls.data.multilabel import DELIMITER, label_sets
from autocls.model.calibration import expected_calibration_error, scale
from autocls.model.ensemble import Ensemble
from autocls.report.neardup import SIMILARITY, nearest, training_features
from autocls.report.tables import evaluation_tables, multilabel_tables
from autocls.runtime.errors import AutoclsError

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


@dataclass
class MultilabelEvaluation:
    """A multi-label model's scores (:func:`autocls.report.tables.multilabel_tables`) on labelled images."""

    scores: dict[str, float]  # mAP, macro_f1, micro_f1, hamming, exact_match
    per_label: pd.DataFrame
    confusions: pd.DataFrame
    predictions: pd.DataFrame
    training_duplicates: int
    near_duplicates: int = 0


def evaluate(
    model: str | Path | Ensemble,
    data: str | Path,
    labels_csv: str | None = None,
    device: str = "auto",
    *,
    label_delimiter: str | None = None,
) -> Evaluation | MultilabelEvaluation:
    """Predict every labelled image under ``data`` and compare with its label (its labels, for a
    multi-label model: the CSV's cells are split at ``label_delimiter``, ``;`` by default).

    Class names are matched by name; a label the model does not know is an error.
    """
    ensemble = model if isinstance(model, Ensemble) else Ensemble.load(model, device)
    if ensemble.multilabel:
        label_delimiter = label_delimiter or ensemble.manifest.label_delimiter or DELIMITER
    labelled = discover(data, labels_csv, label_delimiter=label_delimiter, min_classes=1)  # one class is fine
    unknown = sorted(set(labelled.class_names) - set(ensemble.class_names))
    if unknown:
        raise AutoclsError(f"{data}: classes {unknown} are not among the model's {ensemble.class_names}.")
    if labelled.multilabel and not ensemble.multilabel:
        raise AutoclsError(f"{data}: images have several labels, but the model predicts one class per image.")
    duplicates = duplicates_of_training(ensemble.manifest.data.spec, labelled.paths)
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
    near = _near_duplicates_of_training(ensemble, images, [labelled.paths[i] for i in kept])
    if ensemble.multilabel:
        return _evaluate_multilabel(ensemble, labelled, kept, images, duplicates=len(duplicates), near=near)
    truth = labels_in_order(labelled.subset(kept), ensemble.class_names, multilabel=False)
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


def _evaluate_multilabel(
    ensemble: Ensemble, labelled: LabelledImages, kept: list[int], images: torch.Tensor, *, duplicates: int, near: int
) -> MultilabelEvaluation:
    """Score a multi-label model; single-label test data counts as one label per image."""
    truth = labels_in_order(labelled.subset(kept), ensemble.class_names, multilabel=True)
    probs = ensemble.predict_images(images)
    predictions = ensemble.to_frame([str(labelled.paths[i]) for i in kept], probs)
    predictions.insert(1, "true_label", label_sets(truth, ensemble.class_names))
    tables = multilabel_tables(truth, probs, ensemble.thresholds, ensemble.class_names)
    return MultilabelEvaluation(
        scores={k: v for k, v in tables.items() if isinstance(v, float)},
        per_label=tables["per_label"],
        confusions=tables["confusions"],
        predictions=predictions,
        training_duplicates=duplicates,
        near_duplicates=near,
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


def print_evaluation(result: Evaluation | MultilabelEvaluation, console: Console) -> None:
    if isinstance(result, MultilabelEvaluation):
        _print_multilabel(result, console)
        return
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


def _print_multilabel(result: MultilabelEvaluation, console: Console) -> None:
    s = result.scores
    console.print(
        f"mAP {s['mAP']:.4f} · macro F1 {s['macro_f1']:.4f} · micro F1 {s['micro_f1']:.4f} · Hamming loss "
        f"{s['hamming']:.4f} · exact label sets {s['exact_match']:.4f} · {len(result.predictions)} images"
    )
    report = Table(title="per-label report (at the model's thresholds)")
    for column in ("label", "precision", "recall", "f1", "AP", "threshold", "support"):
        report.add_column(column, justify="left" if column == "label" else "right")
    for name, row in result.per_label.iterrows():
        report.add_row(
            str(name),
            *(f"{row[c]:.3f}" for c in ("precision", "recall", "f1", "AP", "threshold")),
            f"{int(row.support)}",
        )
    console.print(report)
    if not result.confusions.empty:
        confused = Table(title="most frequent label confusions")
        for column in result.confusions.columns:
            confused.add_column(column)
        for row in result.confusions.head(10).itertuples(index=False):
            confused.add_row(*(str(v) for v in row))
        console.print(confused)


def write_evaluation(result: Evaluation | MultilabelEvaluation, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(result, MultilabelEvaluation):
        summary = {
            **result.scores,
            "images": len(result.predictions),
            "training_duplicates": result.training_duplicates,
            "near_duplicates_of_training": result.near_duplicates,
            "per_label": result.per_label.to_dict(orient="index"),
        }
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        result.per_label.to_csv(out_dir / "per_label.csv", index_label="label")
        result.confusions.to_csv(out_dir / "label_confusions.csv", index=False)
        result.predictions.to_csv(out_dir / "predictions.csv", index=False, errors="surrogateescape")
        return
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
