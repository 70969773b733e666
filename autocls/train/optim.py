"""Optimizers and learning-rate schedules, keyed by the names a search space uses.

timm's optimizers (with layer-wise lr decay) and its cosine/step schedules; torch's one-cycle and
plateau schedules behind timm's interface. :data:`OPTIMIZERS` and :data:`SCHEDULERS` are the
registries, keyed by the choices :mod:`autocls.train.config` lists (a test keeps the two the same;
the configuration stays free of torch for the command line and ``space show``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from autocls.train.config import TrainConfig

# autocls's optimizer name -> timm's name, given the configuration (SGD: momentum or Nesterov)
OPTIMIZERS: dict[str, Callable[[TrainConfig], str]] = {
    "adamw": lambda cfg: "adamw",
    "adam": lambda cfg: "adam",
    "sgd": lambda cfg: "nesterov" if cfg.nesterov else "momentum",
}
# Schedules that anneal the lr to the end of training. Their last epochs, at the smallest lr, are
# where they gain most: a fold trains to the end and keeps its last weights. Stopping on a noisy
# validation loss cut one-cycle folds short and kept weights taken at a high lr, mid-schedule;
# a losing trial is stopped by the pruner instead. Early stopping applies only where the lr does not
# anneal to an end (plateau, constant).
ANNEALING_SCHEDULERS = frozenset({"cosine", "onecycle", "step"})
ONE_CYCLE_WARMUP = 0.25  # share of the steps spent warming up to the peak lr (fastai's default)


def anneals(config: TrainConfig) -> bool:
    """Whether ``config``'s schedule anneals the lr to the end (see :data:`ANNEALING_SCHEDULERS`)."""
    return config.scheduler in ANNEALING_SCHEDULERS


def create_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimizer over the trainable parameters, with layer-wise lr decay when asked.

    Every group starts at ``cfg.lr`` and carries its layer-decay factor as ``lr_scale``;
    :func:`create_scheduler` applies that factor exactly once.
    """
    return create_optimizer_v2(
        model,
        opt=OPTIMIZERS[cfg.optimizer](cfg),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        layer_decay=cfg.layer_decay if cfg.layer_decay < 1.0 else None,
    )


class _TorchScheduler:
    """A torch scheduler behind timm's interface: stepped per update, or per epoch on the monitored loss."""

    def __init__(self, scheduler: object = None, on_metric: bool = False) -> None:
        self.scheduler = scheduler
        self.on_metric = on_metric

    def step_update(self, num_updates: int) -> None:
        if self.scheduler is not None and not self.on_metric:
            self.scheduler.step()

    def step(self, epoch: int, metric: float | None) -> None:
        if self.scheduler is not None and self.on_metric and metric is not None:
            self.scheduler.step(metric)


def _constant(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    return _TorchScheduler()


def _plateau(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.1, patience=max(0, cfg.patience // 2)
    )
    return _TorchScheduler(plateau, on_metric=True)


def _one_cycle(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    total = cfg.epochs * steps_per_epoch
    if total < 2:
        return _TorchScheduler()  # one update cannot both warm up and anneal: a constant lr
    # torch ends the warm-up phase at step pct_start * total - 1 and divides by that phase's
    # length: at 4 steps in all (4 epochs of 1 step, a small dataset) it is 0 and OneCycleLR
    # raises ZeroDivisionError. Half a step past the first keeps the division defined.
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total,
        pct_start=max(ONE_CYCLE_WARMUP, 1.5 / total),
    )
    return _TorchScheduler(one_cycle)


def _timm(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.scheduler,
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs if cfg.warmup_epochs < cfg.epochs else 0,
        warmup_lr=cfg.lr * 0.01,
        min_lr=cfg.lr * 0.01,
        decay_epochs=max(1, cfg.epochs // 3),
        decay_rate=0.1,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainConfig, int], Any]] = {
    "cosine": _timm,
    "onecycle": _one_cycle,
    "step": _timm,
    "plateau": _plateau,
    "constant": _constant,
}
LR_SCALED_BY_SCHEDULER = frozenset({"cosine", "step"})  # timm's: they apply each group's lr_scale


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """timm's cosine (with linear warmup) and step schedules, updated every step; torch's
    OneCycleLR (timm has none) and ReduceLROnPlateau (timm deprecates its own); or a constant lr.

    Each group trains at ``cfg.lr * lr_scale * schedule(t)``. timm's schedulers multiply by the
    group's ``lr_scale`` on every update, from the group's own starting lr, so that must be the
    unscaled ``cfg.lr`` (pre-scaling it applied layer decay twice: ``lr * scale**2``). torch's
    schedulers know no ``lr_scale``: their groups are scaled once here, before they read them.
    """
    if cfg.scheduler not in LR_SCALED_BY_SCHEDULER:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
    return SCHEDULERS[cfg.scheduler](optimizer, cfg, steps_per_epoch)
