"""k folds -> one cross-validation result: stratified splits, one model per split, out-of-fold predictions.

Single-label data is split by scikit-learn's ``StratifiedKFold``; multi-label data by iterative
stratification (:func:`autocls.data.multilabel.multilabel_folds`), which keeps every label's proportion.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from autocls.data.images import ImageStore
from autocls.data.multilabel import is_multilabel, multilabel_folds
from autocls.runtime.devicememory import MIN_BATCH, retry_halving
from autocls.train.callbacks import TrainingObserver
from autocls.train.config import TrainConfig
from autocls.train.history import FoldResult
from autocls.train.metrics import get_metric
from autocls.train.trainer import Trainer


@dataclass
class CVResult:
    """All folds of a cross-validation run."""

    folds: list[FoldResult]
    labels: np.ndarray
    num_classes: int
    metric: str = "accuracy"
    _oof: np.ndarray | None = field(default=None, repr=False)

    @property
    def mean_score(self) -> float:
        """The mean of the folds' kept-epoch scores: a trial's value."""
        return float(np.mean([f.best.val_score for f in self.folds]))

    @property
    def oof_probs(self) -> np.ndarray:
        """Out-of-fold probabilities: each image predicted by the fold model that did not train on it."""
        if self._oof is None:
            oof = np.full((len(self.labels), self.num_classes), np.nan, dtype=np.float32)
            for fold in self.folds:
                oof[fold.val_indices] = fold.val_probs
            self._oof = oof
        return self._oof

    def oof_score(self, metric: str | None = None) -> float:
        """``metric`` (the study's by default) over all out-of-fold predictions at once."""
        covered = ~np.isnan(self.oof_probs[:, 0])
        return get_metric(metric or self.metric)(self.labels[covered], self.oof_probs[covered])


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified k-fold splits as (train indices, validation indices)."""
    if is_multilabel(labels):
        return multilabel_folds(labels, folds, seed)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def folds_hash(splits: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """A short hash of which image is in which validation fold, to prove two runs used the same folds."""
    digest = hashlib.sha256()
    for _, val_idx in splits:
        digest.update(np.sort(val_idx).astype(np.int64).tobytes() + b"|")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class FoldData:
    """What cross-validation trains on: the decoded images, their labels (class indices, or an
    images x labels 0/1 matrix), the (train, validation) index splits and the number of classes.

    The study's :class:`autocls.study.studydata.PreparedData` gives one (``fold_data``), so that a
    caller passes its data as one object rather than four of its fields.
    """

    store: ImageStore
    labels: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    num_classes: int


def cross_validate(
    config: TrainConfig,
    data: FoldData,
    device: torch.device,
    *,
    weights_dir: Path | None = None,
    seed: int = 0,
    observer: TrainingObserver | None = None,
    keep_models: bool = False,
    metric: str = "accuracy",
) -> CVResult:
    """Train one model per split with the same :class:`Trainer`; models are kept only if asked."""
    observer = observer or TrainingObserver()
    labels, splits = data.labels, data.splits
    trainer = Trainer(
        config,
        data.num_classes,
        device,
        weights_dir=weights_dir,
        seed=seed,
        metric=metric,
        multilabel=is_multilabel(labels),
    )
    label_t = torch.as_tensor(labels)
    results = []
    for fold, (train_idx, val_idx) in enumerate(splits):
        epochs = observer.fold_epochs(fold, len(splits), config.epochs)
        if epochs != trainer.config.epochs:  # shortened (or back to the configuration's after a shortened fold)
            trainer = trainer.with_config(replace(trainer.config, epochs=epochs))
        observer.on_fold_start(fold, len(splits), epochs)
        result, trainer = fit_fold(
            trainer,
            data.store,
            label_t,
            train_idx=train_idx,
            val_idx=val_idx,
            fold=fold,
            observer=observer,
            folds=len(splits),
        )
        if not keep_models:
            result.state_dict = None
        results.append(result)
    return CVResult(results, labels, data.num_classes, metric)


def fit_fold(
    trainer: Trainer,
    store: ImageStore,
    labels: torch.Tensor,
    *,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    fold: int,
    observer: TrainingObserver,
    folds: int = 1,
    soft_targets: torch.Tensor | None = None,
) -> tuple[FoldResult, Trainer]:
    """``trainer.fit``; on running out of device memory, the fold starts over with half the batch and
    half the learning rate (the linear scaling rule, Goyal et al., 2017), down to :data:`MIN_BATCH`,
    and only then fails. Returns the trainer that succeeded, so later folds start at its batch.

    Whatever else the attempt put on the device shrinks with it: evaluation and the frozen-feature
    cache halve their batch too, and the image store stays in host memory (its copy on the device
    is dropped), or an out-of-memory error there would come back on every retry."""
    current = trainer

    def attempt(batch: int) -> FoldResult:
        nonlocal current
        if batch != current.config.batch_size:
            config = current.config
            smaller = replace(config, batch_size=batch, lr=config.lr * batch / config.batch_size)
            current = current.with_config(smaller, eval_batch=max(1, current.eval_batch // 2), place_store=False)
            observer.on_fold_start(fold, folds, config.epochs)
        return current.fit(store, labels, train_idx, val_idx, fold=fold, observer=observer, soft_targets=soft_targets)

    def restart(batch: int, smaller: int) -> None:
        observer.on_fold_restart(fold, f"out of memory at batch {batch}: again with batch {smaller}")

    result, _ = retry_halving(attempt, trainer.config.batch_size, trainer.device, restart, floor=MIN_BATCH)
    return result, current
