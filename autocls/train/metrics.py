"""Validation metrics a study can optimise, computed from class (or label) probabilities with scikit-learn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    hamming_loss,
)

from autocls.runtime.errors import SettingError

# Probabilities are clipped to [LOG_EPSILON, 1 - LOG_EPSILON] before their logarithm: an image the
# model gives a zero probability costs -log(1e-7) = 16.1, not infinity (the value autocls has
# always used for log loss, selection and the per-image losses of the out-of-fold table).
LOG_EPSILON = 1e-7
IMBALANCE_RATIO = 5.0  # largest/smallest class at which balanced accuracy is chosen by default


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[np.ndarray, np.ndarray], float]  # (labels, probs) -> value
    greater_is_better: bool = True

    @property
    def direction(self) -> str:
        return "maximize" if self.greater_is_better else "minimize"

    def __call__(self, labels: np.ndarray, probs: np.ndarray) -> float:
        return float(self.score(labels, probs))

    def better(self, a: float, b: float) -> bool:
        return a > b if self.greater_is_better else a < b


def _predicted(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The decisions a score is computed on: the likeliest class, or every label of probability
    0.5 or more (the search's decision rule; refit tunes per-label thresholds afterwards)."""
    return (p >= 0.5).astype(np.uint8) if y.ndim == 2 else p.argmax(1)


def log_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each image's log loss: minus the log of its class's probability (``labels``: class indices),
    or the mean binary cross-entropy of its labels (``labels``: an images x labels 0/1 matrix),
    probabilities clipped at :data:`LOG_EPSILON`."""
    if labels.ndim == 2:
        clipped = np.clip(probs, LOG_EPSILON, 1 - LOG_EPSILON)
        return -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)).mean(axis=1)
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], LOG_EPSILON, 1.0))


def log_loss(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The mean (``weights``-weighted) of :func:`log_losses`. Not scikit-learn's: refit's ensemble
    selection calls it hundreds of times, and scikit-learn validates and one-hot encodes the labels
    on every call (the tests check the two agree)."""
    return float(np.average(log_losses(labels, probs), weights=weights))


def _mean_average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Macro average precision over the labels that have a positive image (AP is undefined without)."""
    present = y.sum(axis=0) > 0
    if not present.any():
        return 0.0
    return average_precision_score(y[:, present], p[:, present], average="macro")


METRICS = {
    "accuracy": Metric("accuracy", lambda y, p: accuracy_score(y, _predicted(y, p))),
    "balanced_accuracy": Metric("balanced_accuracy", lambda y, p: balanced_accuracy_score(y, p.argmax(1))),
    "macro_f1": Metric("macro_f1", lambda y, p: f1_score(y, _predicted(y, p), average="macro", zero_division=0)),
    "log_loss": Metric("log_loss", log_loss, False),
    # multi-label only: labels are an images x labels 0/1 matrix, probabilities one sigmoid per label
    "mAP": Metric("mAP", _mean_average_precision),
    "micro_f1": Metric("micro_f1", lambda y, p: f1_score(y, _predicted(y, p), average="micro", zero_division=0)),
    "hamming": Metric("hamming", lambda y, p: hamming_loss(y, _predicted(y, p)), False),
}
SINGLE_LABEL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")
MULTILABEL_METRICS = ("mAP", "macro_f1", "micro_f1", "hamming")


def get_metric(name: str, multilabel: bool | None = None) -> Metric:
    """The metric ``name``; with ``multilabel`` given, one that applies to that kind of labels."""
    allowed = {None: list(METRICS), False: list(SINGLE_LABEL_METRICS), True: list(MULTILABEL_METRICS)}[multilabel]
    if name not in allowed:
        what = " for multi-label data" if multilabel else " for single-label data" if multilabel is False else ""
        raise SettingError("metric", f"one of {allowed}{what}", name)
    return METRICS[name]


def default_metric(class_counts: dict[str, int], multilabel: bool = False) -> str:
    """Accuracy, or balanced accuracy when the largest class outnumbers the smallest 5:1 or more;
    mean average precision for multi-label data (threshold-free, so comparable across trials)."""
    if multilabel:
        return "mAP"
    counts = [c for c in class_counts.values() if c > 0]
    return "balanced_accuracy" if max(counts) >= IMBALANCE_RATIO * min(counts) else "accuracy"
