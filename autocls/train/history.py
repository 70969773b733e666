"""What training a fold leaves: each epoch's metrics and the trained fold, read by callbacks,
cross-validation, trial records and the console."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EpochRecord:
    """Metrics of one epoch of one fold; ``val_score`` is the study's metric on the fold's validation
    images. ``monitor_loss`` is the loss on the images held out of training for early stopping, when
    the schedule uses it (see :data:`ANNEALING_SCHEDULERS`), else ``None``."""

    epoch: int
    train_loss: float
    val_loss: float
    val_score: float
    lr: float
    seconds: float
    monitor_loss: float | None = None


@dataclass
class FoldResult:
    """A trained fold: its history, the epoch whose weights it keeps (``best_epoch``: the last epoch
    of an annealing schedule, else the early-stopping epoch chosen on held-out training images) and
    that epoch's validation predictions."""

    fold: int
    history: list[EpochRecord]
    best_epoch: int
    val_indices: np.ndarray
    val_probs: np.ndarray
    frozen_stages: int
    state_dict: dict[str, torch.Tensor] | None = None
    batch_size: int = 0  # the configuration's, or smaller where running out of memory halved it

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.history)
