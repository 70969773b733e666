"""One fold's model, optimizer and scheduler, built from a :class:`TrainConfig`.

timm's optimizers (with layer-wise lr decay) and its cosine/step schedules, torch's one-cycle and
plateau schedules behind timm's interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from autocls.backbones import create_classifier
from autocls.config import TrainConfig
from autocls.preprocess import Preprocess, model_norm, model_to_device

# Schedules that anneal the lr to the end of training. Their last epochs, at the smallest lr, are
# where they gain most: a fold trains to the end and keeps its last weights. Stopping on a noisy
# validation loss cut one-cycle folds short and kept weights taken at a high lr, mid-schedule;
# a losing trial is stopped by the pruner instead. Early stopping applies only where the lr does not
# anneal to an end (plateau, constant).
ANNEALING_SCHEDULERS = frozenset({"cosine", "onecycle", "step"})


def anneals(config: TrainConfig) -> bool:
    """Whether ``config``'s schedule anneals the lr to the end (see :data:`ANNEALING_SCHEDULERS`)."""
    return config.scheduler in ANNEALING_SCHEDULERS


def create_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimizer over the trainable parameters, with layer-wise lr decay when asked.

    Every group starts at ``cfg.lr`` and carries its layer-decay factor as ``lr_scale``;
    :func:`create_scheduler` applies that factor exactly once.
    """
    name = {"sgd": "nesterov" if cfg.nesterov else "momentum"}.get(cfg.optimizer, cfg.optimizer)
    return create_optimizer_v2(
        model,
        opt=name,
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


ONE_CYCLE_WARMUP = 0.25  # share of the steps spent warming up to the peak lr (fastai's default)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """timm's cosine (with linear warmup) and step schedules, updated every step; torch's
    OneCycleLR (timm has none) and ReduceLROnPlateau (timm deprecates its own); or a constant lr.

    Each group trains at ``cfg.lr * lr_scale * schedule(t)``. timm's schedulers multiply by the
    group's ``lr_scale`` on every update, from the group's own starting lr, so that must be the
    unscaled ``cfg.lr`` (pre-scaling it applied layer decay twice: ``lr * scale**2``). torch's
    schedulers know no ``lr_scale``: their groups are scaled once here, before they read them.
    """
    if cfg.scheduler not in ("cosine", "step"):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
    if cfg.scheduler == "constant":
        return _TorchScheduler()
    if cfg.scheduler == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.1, patience=max(0, cfg.patience // 2)
        )
        return _TorchScheduler(plateau, on_metric=True)
    if cfg.scheduler == "onecycle":
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


@dataclass
class FoldParts:
    """What one fold trains: the model, its optimizer and scheduler, and its input preprocessing."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    preprocess: Preprocess

    @property
    def lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)


def build_fold(
    config: TrainConfig, num_classes: int, weights_dir: Path | None, device: torch.device, steps_per_epoch: int
) -> FoldParts:
    """A fresh model (pretrained weights loaded, stages frozen), its optimizer and its schedule."""
    model = model_to_device(create_classifier(config, num_classes, weights_dir), device)
    optimizer = create_optimizer(model, config)
    scheduler = create_scheduler(optimizer, config, steps_per_epoch)
    return FoldParts(model, optimizer, scheduler, Preprocess(*model_norm(model, device), device))


def batch_plan(batch_size: int, train_images: int) -> tuple[int, int]:
    """(batch size, steps per epoch): MixUp/CutMix pair each image with another, so batches are even,
    and the last incomplete batch is dropped (no odd, tiny final batch)."""
    batch = min(batch_size, train_images)
    batch = max(2, batch - batch % 2)
    return batch, max(1, train_images // batch)
