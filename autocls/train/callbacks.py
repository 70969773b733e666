"""Small objects the training loop consults: observers of its progress, early stopping, kept weights.

The loop stays one page because each rule lives here: :class:`EarlyStopping` says when to stop
(Lightning's rule), :class:`KeptWeights` holds the weights a fold will deliver, and a
:class:`TrainingObserver` hears every epoch and fold (the study's pruner and the console listen).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from autocls.data.multilabel import multilabel_holdout
from autocls.train.history import EpochRecord, FoldResult

MIN_IMPROVEMENT = 1e-4  # a monitored loss must drop by this much to reset early stopping's patience


# Share of a fold's training images held out to monitor early stopping and the plateau schedule
# (schedules that do not anneal): the fold's validation images then choose nothing, and the score a
# fold reports is an honest estimate for the weights it keeps.
MONITOR_SHARE = 0.1


class TrainingObserver:
    """Hooks called by the trainer; raising from one (e.g. ``optuna.TrialPruned``) stops training."""

    def fold_epochs(self, fold: int, folds: int, epochs: int) -> int:
        """How many epochs fold ``fold`` (of ``folds``) trains, asked before it starts: ``epochs`` (the
        configuration's), unless the observer shortens the fold, e.g. to end by a deadline."""
        return epochs

    def on_fold_start(self, fold: int, folds: int, epochs: int) -> None:
        pass

    def on_epoch_end(self, fold: int, record: EpochRecord) -> None:
        pass

    def on_fold_end(self, result: FoldResult) -> None:
        pass

    def on_fold_restart(self, fold: int, reason: str) -> None:
        """The fold starts over (``on_fold_start`` follows), e.g. with a smaller batch after running out of memory."""


class EarlyStopping:
    """Stop when a monitored loss has not improved by ``min_delta`` for ``patience`` epochs.

    The rule of Lightning's ``EarlyStopping`` (mode ``min``); :meth:`update` also says whether an
    epoch is the best so far, i.e. whether its weights are the ones to keep.
    """

    def __init__(self, patience: int, min_delta: float = MIN_IMPROVEMENT) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = math.inf
        self.best_epoch = -1

    def update(self, epoch: int, loss: float) -> bool:
        """Record ``epoch``'s loss; True when it improves on the best so far (the first always does)."""
        if self.best_epoch < 0 or loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch = loss, epoch
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        return epoch - self.best_epoch >= self.patience


def monitor_split(train_idx: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a fold's training indices into (images to train on, images to monitor early stopping).

    :data:`MONITOR_SHARE` of them (at least one per class) are held out, stratified when every class
    has two images to split. Too few images to hold any out: all train and all are monitored.
    """
    train_idx = np.asarray(train_idx)
    if labels.ndim == 2:  # multi-label: iterative stratification keeps each label's share
        size = round(MONITOR_SHARE * len(train_idx))
        if size < 2 or len(train_idx) - size < 2:
            return train_idx, train_idx
        return multilabel_holdout(train_idx, labels, size, seed)
    present = np.unique(labels[train_idx], return_counts=True)[1]
    size = max(len(present), round(MONITOR_SHARE * len(train_idx)))
    if len(train_idx) - size < max(2, len(present)):
        return train_idx, train_idx
    stratify = labels[train_idx] if present.min() >= 2 else None
    fit, monitor = train_test_split(train_idx, test_size=size, stratify=stratify, random_state=seed % 2**32)
    return np.sort(fit), np.sort(monitor)


class KeptWeights:
    """The weights a fold delivers (a CPU copy), with their epoch and validation predictions."""

    def __init__(self) -> None:
        self.epoch = 0
        self.state: dict[str, torch.Tensor] | None = None
        self.probs: np.ndarray | None = None

    def keep(self, epoch: int, model: nn.Module, probs: np.ndarray) -> None:
        self.epoch, self.probs = epoch, probs
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
