"""Deployment limits a search keeps: the delivered model's latency per image and its parameter count.

The delivered model is an ensemble: every fold model of every member runs on each image, once per
test-time view. Its latency is the sum of those forward passes (batch 1, measured on the device the
search runs on, :meth:`autocls.study.trainingtime.TrainingTimeModel.latency_ms`), its size the sum of their parameters.
A limit is kept in three places:

* before the first trial, backbones whose fold models exceed it even at the space's lowest
  resolution leave the space, so the sampler never proposes them;
* a sampled configuration whose fold models would exceed it is skipped before any training
  (recorded FAIL with the reason, like a configuration too long for the time left);
* refit adds an ensemble member or a test-time view only while the whole stays within the limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from autocls.study.trainingtime import TrainingTimeModel
from autocls.train.config import TrainConfig, check_setting


@dataclass(frozen=True)
class DeploymentCost:
    """What a delivered model costs where it is deployed: milliseconds per image and parameters
    (not what it cost to train: that is :class:`~autocls.study.trainingtime.TrainingTimeModel`'s)."""

    latency_ms: float = 0.0
    parameters: int = 0

    def __add__(self, other: DeploymentCost) -> DeploymentCost:
        return DeploymentCost(self.latency_ms + other.latency_ms, self.parameters + other.parameters)

    def times(self, passes: int, copies: int) -> DeploymentCost:
        """``passes`` forward passes per image through ``copies`` distinct models."""
        return DeploymentCost(self.latency_ms * passes, self.parameters * copies)


@dataclass(frozen=True)
class Limits:
    """``None`` is no limit."""

    max_latency_ms: float | None = None
    max_params: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "max_params"):
            if getattr(self, name) is not None:
                check_setting(name, getattr(self, name))

    def __bool__(self) -> bool:
        return self.max_latency_ms is not None or self.max_params is not None

    def exceeded(self, cost: DeploymentCost) -> str | None:
        """Why ``cost`` breaks a limit, or ``None`` when it keeps them all."""
        if self.max_latency_ms is not None and cost.latency_ms > self.max_latency_ms:
            return f"{cost.latency_ms:.1f} ms an image, over the limit of {self.max_latency_ms:g} ms"
        if self.max_params is not None and cost.parameters > self.max_params:
            return f"{cost.parameters:,} parameters, over the limit of {self.max_params:,}"
        return None

    def describe(self) -> str:
        parts = []
        if self.max_latency_ms is not None:
            parts.append(f"at most {self.max_latency_ms:g} ms an image")
        if self.max_params is not None:
            parts.append(f"at most {self.max_params:,} parameters")
        return " and ".join(parts)


def fold_models_cost(timing: TrainingTimeModel, config: TrainConfig, folds: int, views: int = 1) -> DeploymentCost:
    """The deployment cost of ``folds`` fold models of ``config``, each run on ``views`` views of an
    image, from the latency and size ``timing`` measured."""
    one = (
        DeploymentCost(timing.latency_ms(config), timing.parameters(config)) if timing is not None else DeploymentCost()
    )
    return one.times(folds * views, folds)
