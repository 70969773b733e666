"""Ensemble selection across trials: members and weights chosen greedily on out-of-fold predictions.

Every trial of a study is cross-validated on the same folds, so their out-of-fold (OOF)
probabilities predict every training image with a model that did not see it, and can be averaged
and scored like one model's. Caruana et al. (2004), "Ensemble selection from libraries of
models", build an ensemble by adding, one round at a time and with replacement, the model whose
addition scores best; a model added k times weighs k. AutoGluon and auto-sklearn do this for
tabular models. It never does worse on OOF than the best single model (the first round picks it,
and the best round is kept), and it is cheap: a few matrix averages per round.

Out-of-fold gains overstate a blend's gain on new images: out of fold each image is predicted by
one fold model, while a saved member averages all its fold models, which already removes most of
the variance a second trial would. On three 30-minute Fashion-MNIST studies (README, "accuracy by
budget"; ``bench/blend_weights.py``) the chosen blends raised OOF accuracy by 0.9-1.25 points
and changed held-out accuracy by -0.30 to +0.35 points.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Score = Callable[[np.ndarray, np.ndarray], float]  # (labels, probabilities) -> higher is better
DEFAULT_ROUNDS = 25  # AutoGluon's default number of selection rounds


@dataclass(frozen=True)
class Selection:
    """Members (indices into the candidates) with weights summing to 1, and the OOF score they reach."""

    weights: dict[int, float]
    score: float
    best_single: int
    best_single_score: float

    @property
    def gain(self) -> float:
        return self.score - self.best_single_score


def blend(oof: list[np.ndarray], weights: dict[int, float]) -> np.ndarray:
    """The weighted average of candidates' probability matrices."""
    return sum(weight * oof[i] for i, weight in weights.items())


def select_ensemble(
    oof: list[np.ndarray],
    labels: np.ndarray,
    score: Score,
    rounds: int = DEFAULT_ROUNDS,
    *,
    allowed: Callable[[frozenset[int]], bool] | None = None,
) -> Selection:
    """Greedy ensemble selection with replacement over candidates' OOF probabilities.

    ``score`` must be higher-is-better. Each round adds the candidate whose addition gives the best
    score (ties go to the candidate added earliest, then to the lowest index, so that the result is
    deterministic); the ensemble after the best round is returned. ``allowed`` (a set of candidate
    indices -> whether that set may be the ensemble, e.g. within a latency limit) restricts which
    candidates may join, and which may start it.
    """
    if not oof:
        raise ValueError("ensemble selection needs at least one candidate")
    allowed = allowed or (lambda members: True)
    singles = [score(labels, p) if allowed(frozenset({i})) else -np.inf for i, p in enumerate(oof)]
    if not np.isfinite(max(singles)):
        raise ValueError("no candidate is allowed on its own")
    best_single = int(np.argmax(singles))
    counts: Counter[int] = Counter()
    total = np.zeros_like(oof[0], dtype=np.float64)
    best_counts, best_score = Counter({best_single: 1}), singles[best_single]
    for size in range(1, rounds + 1):
        trial_scores = [
            score(labels, (total + p) / size) if allowed(frozenset(counts) | {i}) else -np.inf
            for i, p in enumerate(oof)
        ]
        chosen = int(np.argmax(trial_scores))  # first maximum: lowest index on ties
        if not np.isfinite(trial_scores[chosen]):
            break
        counts[chosen] += 1
        total += oof[chosen]
        if trial_scores[chosen] > best_score + 1e-12:
            best_counts, best_score = Counter(counts), trial_scores[chosen]
    size = sum(best_counts.values())
    weights = {i: n / size for i, n in sorted(best_counts.items())}
    return Selection(weights, float(best_score), best_single, float(singles[best_single]))
