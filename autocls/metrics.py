"""Validation metrics a study can optimise, computed from class probabilities with scikit-learn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

from autocls.errors import AutoclsError

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


METRICS = {
    "accuracy": Metric("accuracy", lambda y, p: accuracy_score(y, p.argmax(1))),
    "balanced_accuracy": Metric("balanced_accuracy", lambda y, p: balanced_accuracy_score(y, p.argmax(1))),
    "macro_f1": Metric("macro_f1", lambda y, p: f1_score(y, p.argmax(1), average="macro", zero_division=0)),
    "log_loss": Metric(
        "log_loss", lambda y, p: log_loss(y, np.clip(p, 1e-7, 1.0), labels=np.arange(p.shape[1])), False
    ),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise AutoclsError(f"The 'metric' setting must be one of {list(METRICS)}. Got {name!r}.")
    return METRICS[name]


def default_metric(class_counts: dict[str, int]) -> str:
    """Accuracy, or balanced accuracy when the largest class outnumbers the smallest 5:1 or more."""
    counts = [c for c in class_counts.values() if c > 0]
    return "balanced_accuracy" if max(counts) >= IMBALANCE_RATIO * min(counts) else "accuracy"
