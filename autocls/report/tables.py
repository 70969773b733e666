"""What a person reads: learning curves and evaluation tables (metrics, per-class report, confusion;
per-label tables for multi-label models).

Used by the dashboard's trial figures (:mod:`autocls.study.publish`), ``autocls evaluate`` and
``autocls report``; nothing here needs a study.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    classification_report,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from autocls.data.multilabel import decide
from autocls.report import plots


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


def multilabel_tables(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, class_names: list[str]
) -> dict[str, object]:
    """A multi-label model's scores on ``labels`` (images x labels, 0/1) from its ``probs`` and
    per-label ``thresholds``: mAP (threshold-free), macro/micro F1, Hamming loss and exact-set
    accuracy at the thresholds; the per-label table (precision, recall, F1, AP, threshold,
    support); how often labels occur together; and the most frequent confusions: label B
    predicted (wrongly) on images that have label A."""
    predicted = decide(probs, thresholds)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, zero_division=0)
    ap = [
        average_precision_score(labels[:, j], probs[:, j]) if labels[:, j].any() else float("nan")
        for j in range(len(class_names))
    ]
    per_label = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "AP": ap, "threshold": thresholds, "support": support},
        index=pd.Index(class_names, name="label"),
    )
    per_label["support"] = per_label["support"].astype(int)
    truth = labels.astype(np.int64)
    wrong = (predicted.astype(np.int64) * (1 - truth)).T @ truth  # [b, a]: b predicted, not true, on images with a
    confusions = [
        {"true label": class_names[a], "also predicted": class_names[b], "images": int(wrong[b, a])}
        for b, a in zip(*np.nonzero(wrong))
        if a != b
    ]
    confused = pd.DataFrame(confusions, columns=["true label", "also predicted", "images"])
    return {
        "mAP": float(np.nanmean(ap)) if not np.isnan(ap).all() else float("nan"),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(labels, predicted, average="micro", zero_division=0)),
        "hamming": float(hamming_loss(labels, predicted)),
        "exact_match": float(accuracy_score(labels, predicted)),
        "per_label": per_label,
        "co_occurrence": pd.DataFrame(truth.T @ truth, index=class_names, columns=class_names),
        "confusions": confused.sort_values("images", ascending=False, kind="stable").reset_index(drop=True),
    }


def label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of images whose label is likely wrong, most likely first: confident learning
    (Northcutt et al., 2021) on out-of-fold probabilities, by cleanlab's ``find_label_issues``.

    Better than ranking by loss alone: it estimates per-class thresholds from the probabilities, so
    a hard but rightly labelled image of a class the model is unsure of is not flagged. A class
    with fewer than two images leaves cleanlab nothing to estimate: then no issue is reported.
    Multi-label ``labels`` (images x labels, 0/1) use cleanlab's multi-label form, one label at a time.
    """
    from cleanlab.filter import find_label_issues  # the report's alone: evaluate and predict need none of it

    if labels.ndim == 2:
        if len(labels) == 0 or labels.sum(axis=0).min() < 2 or (1 - labels).sum(axis=0).min() < 2:
            return np.zeros(0, dtype=int)
        from cleanlab.multilabel_classification.filter import find_label_issues as find_multilabel_issues

        lists = [np.flatnonzero(row).tolist() for row in labels]
        return np.asarray(find_multilabel_issues(lists, probs, return_indices_ranked_by="self_confidence"), dtype=int)
    if len(labels) == 0 or np.bincount(labels, minlength=probs.shape[1]).min() < 2:
        return np.zeros(0, dtype=int)
    return np.asarray(find_label_issues(labels, probs, return_indices_ranked_by="self_confidence"), dtype=int)
