"""What a person reads: learning curves and evaluation tables (metrics, per-class report, confusion).

Used by the dashboard's trial figures (:mod:`autocls.artifacts`), ``autocls evaluate`` and
``autocls report``; nothing here needs a study.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, classification_report
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from autocls import plots


def learning_curves(history: list[list[dict[str, float]]], metric: str) -> dict[str, str]:
    """Two SVG charts from a trial's per-fold epoch history: losses, and the validation score."""
    losses: dict[str, list[float]] = {}
    scores: dict[str, list[float]] = {}
    for fold, epochs in enumerate(history):
        losses[f"fold {fold + 1} train"] = [e["train_loss"] for e in epochs]
        losses[f"fold {fold + 1} val"] = [e["val_loss"] for e in epochs]
        scores[f"fold {fold + 1}"] = [e["val_score"] for e in epochs]
    return {
        "loss_curves.svg": plots.line_chart(
            losses,
            "train (solid) and validation (dashed) loss",
            y_label="loss",
            dashed=tuple(name for name in losses if name.endswith(" val")),
        ),
        "score_curves.svg": plots.line_chart(scores, f"validation {metric} by epoch", y_label=metric),
    }


def evaluation_tables(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict[str, object]:
    """Accuracy, balanced accuracy, the per-class report and the confusion matrix, as plain data."""
    report = classification_report(
        labels,
        predicted,
        labels=np.arange(len(class_names)),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    per_class = pd.DataFrame({name: report[name] for name in class_names}).T.rename(columns={"f1-score": "f1"})
    per_class["support"] = per_class["support"].astype(int)
    matrix = sk_confusion_matrix(labels, predicted, labels=np.arange(len(class_names)))
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "per_class": per_class,
        "confusion_matrix": pd.DataFrame(matrix, index=class_names, columns=class_names),
    }


def label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of images whose label is likely wrong, most likely first: confident learning
    (Northcutt et al., 2021) on out-of-fold probabilities, by cleanlab's ``find_label_issues``.

    Better than ranking by loss alone: it estimates per-class thresholds from the probabilities, so
    a hard but rightly labelled image of a class the model is unsure of is not flagged. A class
    with fewer than two images leaves cleanlab nothing to estimate: then no issue is reported.
    """
    from cleanlab.filter import find_label_issues  # the report's alone: evaluate and predict need none of it

    if len(labels) == 0 or np.bincount(labels, minlength=probs.shape[1]).min() < 2:
        return np.zeros(0, dtype=int)
    return np.asarray(find_label_issues(labels, probs, return_indices_ranked_by="self_confidence"), dtype=int)
