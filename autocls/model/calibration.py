"""Calibrated confidences: temperature scaling fitted on out-of-fold predictions, and how it is measured.

Guo et al. (2017), "On calibration of modern neural networks": dividing the logits by one scalar
``T`` fitted by negative log-likelihood on held-out predictions calibrates a network's confidences
well, and leaves every prediction's class (so every accuracy) unchanged. Refit fits it on the
out-of-fold predictions it already has, so no image is held back for it. A saved model outputs an
average of probabilities, so their logarithm serves as the logits: the scaled output is
``softmax(log(p) / T)``, ``p`` raised to ``1/T`` and renormalised, which scaling by ``1/T`` undoes
exactly.

Calibration is measured by the expected calibration error (ECE, 15 equal-width confidence bins,
torchmetrics' ``multiclass_calibration_error``) and shown as a reliability diagram.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)
_TINY = 1e-12  # the floor under a probability whose log temperature scaling divides (a logit, not a loss)


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs`` (rows summing to 1) with their log-probabilities divided by ``temperature``."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, _TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(probs.dtype)


def scale_tensor(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`scale` for a tensor, as the exported graph computes it."""
    if temperature == 1.0:
        return probs
    return (probs.clamp_min(_TINY).log() / temperature).softmax(dim=1)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the confidence-weighted gap between confidence and accuracy over ``bins`` bins."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(
        multiclass_calibration_error(
            torch.as_tensor(probs, dtype=torch.float32),
            torch.as_tensor(labels, dtype=torch.long),
            num_classes=probs.shape[1],
            n_bins=bins,
            norm="l1",
        )
    )


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """Per non-empty confidence bin: mean confidence, accuracy and image count (a reliability diagram)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return [
        (float(confidence[which == b].mean()), float(correct[which == b].mean()), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did to the out-of-fold predictions it was fitted on."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature within :data:`TEMPERATURE_BOUNDS` of least negative log-likelihood; 1 when
    none does better than the probabilities as they are."""
    from scipy.optimize import minimize_scalar  # refit's alone: loading a model does not import scipy

    from autocls.train.metrics import log_loss  # nor scikit-learn, which the metrics module imports

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = minimize_scalar(
        lambda log_t: log_loss(labels, scale(probs, math.exp(log_t))),
        bounds=(low, high),
        method="bounded",
    )
    temperature = float(math.exp(found.x))
    before = log_loss(labels, probs)
    return temperature if log_loss(labels, scale(probs, temperature)) < before else 1.0


def calibrate(probs: np.ndarray, labels: np.ndarray) -> Calibration:
    """Fit a temperature on ``probs`` (out-of-fold) and measure NLL and ECE before and after."""
    from autocls.train.metrics import log_loss  # refit's alone, as in fit_temperature

    temperature = fit_temperature(probs, labels)
    after = scale(probs, temperature)
    return Calibration(
        temperature=temperature,
        nll_before=log_loss(labels, probs),
        nll_after=log_loss(labels, after),
        ece_before=expected_calibration_error(probs, labels),
        ece_after=expected_calibration_error(after, labels),
    )
