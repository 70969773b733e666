"""One fold's model, optimizer and scheduler, built from a :class:`TrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocls.train.backbones import create_classifier
from autocls.train.config import TrainConfig
from autocls.train.feeding import Preprocess, model_norm, model_to_device
from autocls.train.optim import create_optimizer, create_scheduler


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
    config: TrainConfig, num_classes: int, weights_dir: Path | None, device: torch.device, *, steps_per_epoch: int
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
