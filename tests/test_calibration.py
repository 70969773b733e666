"""Temperature scaling on out-of-fold predictions, and the calibration error it is judged by."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autocls.model.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability,
    scale,
    scale_tensor,
)
from autocls.train.metrics import log_loss


def predictions(confidence: float, accuracy: float, images: int = 2000, classes: int = 10, seed: int = 0):
    """Labels and probabilities right on ``accuracy`` of the images, each with top probability ``confidence``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=images)
    right = rng.random(images) < accuracy
    predicted = np.where(right, labels, (labels + rng.integers(1, classes, size=images)) % classes)
    probs = np.full((images, classes), (1 - confidence) / (classes - 1))
    probs[np.arange(images), predicted] = confidence
    return labels, probs


def test_an_over_confident_model_is_cooled_and_its_nll_and_ece_fall() -> None:
    labels, probs = predictions(confidence=0.99, accuracy=0.7)
    result = calibrate(probs, labels)
    assert result.temperature > 1.5  # confidences were too high: softened
    assert result.nll_after < result.nll_before - 0.5
    assert result.ece_after < result.ece_before / 3
    scaled = scale(probs, result.temperature)
    np.testing.assert_array_equal(scaled.argmax(1), probs.argmax(1))  # no prediction changes class
    np.testing.assert_allclose(scaled.sum(1), 1.0, rtol=1e-6)


def test_an_under_confident_model_is_sharpened() -> None:
    labels, probs = predictions(confidence=0.3, accuracy=0.9)
    assert fit_temperature(probs, labels) < 1.0
    assert calibrate(probs, labels).ece_after < calibrate(probs, labels).ece_before


def test_a_calibrated_model_is_left_as_it_is() -> None:
    labels, probs = predictions(confidence=0.8, accuracy=0.8)
    result = calibrate(probs, labels)
    assert result.temperature == pytest.approx(1.0, abs=0.05)
    assert result.nll_after <= result.nll_before + 1e-9


def test_scaling_by_the_inverse_temperature_restores_the_probabilities() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5), size=50)
    np.testing.assert_allclose(scale(scale(probs, 2.5), 1 / 2.5), probs, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        scale_tensor(torch.as_tensor(probs), 2.5), torch.as_tensor(scale(probs, 2.5)), rtol=1e-6, atol=1e-9
    )


def test_expected_calibration_error_and_the_reliability_bins_agree() -> None:
    labels, probs = predictions(confidence=0.95, accuracy=0.6)
    bins = reliability(probs, labels)
    assert sum(count for _, _, count in bins) == len(labels)
    gap = sum(count * abs(conf - acc) for conf, acc, count in bins) / len(labels)
    assert expected_calibration_error(probs, labels) == pytest.approx(gap, abs=1e-4)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.35, abs=0.03)
    assert log_loss(labels, probs) > 0


def test_confident_learning_finds_most_deliberately_swapped_labels() -> None:
    """1,000 images of 10 classes predicted right with confidence 0.6-0.95; 40 labels swapped to
    another class: most of the 40 are found (27 here), and few of the others (none here).

    Confident learning flags an image only when the probability of another class passes that
    class's mean self-confidence, so a swapped image its model is unsure of is missed."""
    from autocls.report.tables import label_issues

    rng = np.random.default_rng(5)
    truth = rng.integers(0, 10, size=1000)
    confidence = rng.uniform(0.6, 0.95, size=1000)
    probs = rng.dirichlet(np.ones(10), size=1000) * (1 - confidence)[:, None]
    probs[np.arange(1000), truth] += confidence
    probs /= probs.sum(axis=1, keepdims=True)
    swapped = rng.choice(1000, size=40, replace=False)
    labels = truth.copy()
    labels[swapped] = (truth[swapped] + rng.integers(1, 10, size=40)) % 10
    found = label_issues(labels, probs)
    assert len(set(found) & set(swapped)) >= 24  # most: 60% or more
    assert len(set(found) - set(swapped)) <= 10
    assert len(label_issues(labels[:1], probs[:1])) == 0  # too few images of a class: nothing to estimate
