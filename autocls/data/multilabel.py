"""Multi-label images: several labels per image, as a 0/1 matrix of images by labels.

A study is multi-label when its labels are a matrix (``labels.ndim == 2``) rather than one class
index per image; everything downstream asks :func:`is_multilabel`. This module holds what the
stages share: turning logits into probabilities (sigmoid per label instead of softmax over
classes), label sets as text, iterative stratification for the folds, and the per-label decision
thresholds chosen on out-of-fold probabilities.
"""

from __future__ import annotations

import numpy as np
import torch

DELIMITER = ";"  # between the labels of one image, in CSV cells and in autocls's own tables
DEFAULT_THRESHOLD = 0.5


def is_multilabel(labels: np.ndarray | torch.Tensor) -> bool:
    """Labels given as an images x labels 0/1 matrix, not one class index per image."""
    return labels.ndim == 2


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Softmax over the classes, or one independent sigmoid per label."""
    return logits.float().sigmoid() if multilabel else logits.float().softmax(dim=1)


def label_sets(matrix: np.ndarray, names: list[str] | tuple[str, ...]) -> list[str]:
    """Each row's labels as text: ``"beach;people"`` (empty where a row has none)."""
    return [DELIMITER.join(names[j] for j in np.flatnonzero(row)) for row in np.asarray(matrix)]


def parse_label_sets(cells: list[str], names: list[str] | tuple[str, ...]) -> np.ndarray:
    """The 0/1 matrix of :func:`label_sets`' text; unknown names are an error of the caller's data."""
    index = {name: j for j, name in enumerate(names)}
    matrix = np.zeros((len(cells), len(names)), dtype=np.uint8)
    for i, cell in enumerate(cells):
        for name in split_labels(cell if isinstance(cell, str) else ""):  # an empty cell may read back as NaN
            matrix[i, index[name]] = 1
    return matrix


def split_labels(cell: str, delimiter: str = DELIMITER) -> list[str]:
    """The labels of one cell, stripped, empty parts (``"a;;b;"``) dropped, each once, in order."""
    return list(dict.fromkeys(part.strip() for part in cell.split(delimiter) if part.strip()))


def multilabel_folds(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded k-fold splits that keep every label's proportion in every fold, by iterative
    stratification (Sechidis et al., 2011), as the ``iterative-stratification`` package implements it."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    return [(np.sort(train), np.sort(val)) for train, val in splitter.split(np.zeros(len(labels)), labels)]


def multilabel_holdout(indices: np.ndarray, labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``indices`` split into (the rest, ``size`` held out), label proportions kept."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed % 2**32)
    keep, held = next(splitter.split(np.zeros(len(indices)), labels[indices]))
    return np.sort(indices[keep]), np.sort(indices[held])


def choose_thresholds(labels: np.ndarray, probs: np.ndarray, average: str = "macro") -> np.ndarray:
    """Per label, a decision threshold chosen on ``probs`` (out-of-fold probabilities) for the best
    F1: each label's own F1 (which maximises the macro F1, their mean), or with ``average="micro"``
    the F1 of all decisions pooled, by coordinate ascent from the per-label thresholds (a label's
    best threshold for the pooled F1 depends on the counts of the others).

    A label is predicted when its probability reaches its threshold. The threshold is placed
    halfway between the lowest probability predicted positive and the next lower one, so that it
    does not sit on a training image's exact score. A label with no positive (or no negative)
    image keeps :data:`DEFAULT_THRESHOLD`.
    """
    # imported here: scikit-learn's metrics take a second to import, which predict does not need
    from sklearn.metrics import precision_recall_curve

    if average not in ("macro", "micro"):
        raise ValueError(f"average must be 'macro' or 'micro'; got {average!r}")
    thresholds = np.full(labels.shape[1], DEFAULT_THRESHOLD)
    for j in range(labels.shape[1]):
        y, p = labels[:, j], probs[:, j]
        if y.min() == y.max():
            continue
        precision, recall, cuts = precision_recall_curve(y, p)
        f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
        thresholds[j] = _between(p, cuts[int(np.argmax(f1))])
    if average == "micro":
        for _ in range(2):  # two sweeps: enough for the pooled counts to settle
            for j in range(labels.shape[1]):
                thresholds[j] = _best_for_pooled_f1(labels, probs, thresholds, j)
    return thresholds


def _between(p: np.ndarray, cut: float) -> float:
    """Halfway from ``cut`` (the lowest probability predicted positive) to the next lower probability."""
    below = p[p < cut]
    return float((cut + below.max()) / 2) if len(below) else float(cut)


def _best_for_pooled_f1(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, j: int) -> float:
    """Label ``j``'s threshold of best pooled (micro) F1, the other labels' thresholds fixed."""
    y, p = labels[:, j], probs[:, j]
    if y.min() == y.max():
        return thresholds[j]
    others = np.delete(np.arange(labels.shape[1]), j)
    predicted = decide(probs[:, others], thresholds[others])
    tp_other = int((predicted & labels[:, others]).sum())
    fp_other = int(predicted.sum()) - tp_other
    positives = int(labels.sum())
    order = np.argsort(-p, kind="stable")
    tp = np.cumsum(y[order])  # predicting the first k+1 images by probability
    fp = np.arange(1, len(p) + 1) - tp
    total_tp = tp_other + tp
    f1 = 2 * total_tp / np.clip(2 * total_tp + fp_other + fp + (positives - total_tp), 1, None)
    ranked = p[order]
    f1[:-1][ranked[:-1] == ranked[1:]] = -1.0  # a cut inside a run of equal probabilities cannot be made
    return _between(p, ranked[int(np.argmax(f1))])


def decide(probs: np.ndarray, thresholds: np.ndarray | list[float]) -> np.ndarray:
    """The predicted label matrix: each label where its probability reaches its threshold."""
    return (np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)[None, :]).astype(np.uint8)
