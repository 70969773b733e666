"""The one trainer: trains a fold model for a :class:`TrainConfig`, shared by search and refit.

:func:`cross_validate` runs it over stratified folds; observers hear about every epoch and fold so
the study driver can report to Optuna's pruner and the console can show progress, without the
trainer knowing about either.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from autocls.augment import create_augmentation
from autocls.backbones import create_classifier
from autocls.config import TrainConfig
from autocls.errors import AutoclsError, NonFiniteLossError
from autocls.images import ImageStore

logger = logging.getLogger(__name__)

EVAL_BATCH = 256
MIN_IMPROVEMENT = 1e-4  # a validation loss must drop by this much to reset early stopping's patience
TIMM_OPTIMIZER = {"adamw": "adamw", "adam": "adam", "sgd": "momentum"}  # timm's "sgd" means Nesterov


@dataclass
class EpochRecord:
    """Metrics of one epoch of one fold."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class FoldResult:
    """A trained fold: its history, the early-stopped best epoch and its validation predictions."""

    fold: int
    history: list[EpochRecord]
    best_epoch: int
    val_indices: np.ndarray
    val_probs: np.ndarray
    frozen_stages: int
    state_dict: dict[str, torch.Tensor] | None = None

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.history)


@dataclass
class CVResult:
    """All folds of a cross-validation run."""

    folds: list[FoldResult]
    labels: np.ndarray
    num_classes: int
    _oof: np.ndarray | None = field(default=None, repr=False)

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean([f.best.val_accuracy for f in self.folds]))

    @property
    def oof_probs(self) -> np.ndarray:
        """Out-of-fold probabilities: each image predicted by the fold model that did not train on it."""
        if self._oof is None:
            oof = np.full((len(self.labels), self.num_classes), np.nan, dtype=np.float32)
            for fold in self.folds:
                oof[fold.val_indices] = fold.val_probs
            self._oof = oof
        return self._oof

    @property
    def oof_accuracy(self) -> float:
        covered = ~np.isnan(self.oof_probs[:, 0])
        return float((self.oof_probs[covered].argmax(1) == self.labels[covered]).mean())


class TrainingObserver:
    """Hooks called by the trainer; raising from one (e.g. ``optuna.TrialPruned``) stops training."""

    def on_fold_start(self, fold: int, folds: int, epochs: int) -> None:
        pass

    def on_epoch_end(self, fold: int, record: EpochRecord) -> None:
        pass

    def on_fold_end(self, result: FoldResult) -> None:
        pass


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified k-fold splits as (train indices, validation indices)."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AutoclsError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto.")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise AutoclsError(f"--device must be auto, cpu or cuda, got {name!r}.")
    return torch.device(name)


def configure_threads() -> None:
    """One intra-op thread per core (``$AUTOCLS_THREADS`` overrides): images are decoded up front,
    so no loader process competes. Oversubscribed cores are far worse than idle ones: two processes
    of 2 threads each on 2 cores ran a small model's epoch 70x slower than with 1 thread each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(int(os.environ.get("AUTOCLS_THREADS", cores)))


class Trainer:
    """Trains one fold model of ``config`` on images from an :class:`ImageStore`."""

    def __init__(
        self,
        config: TrainConfig,
        num_classes: int,
        device: torch.device,
        weights_dir: Path | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.weights_dir = weights_dir
        self.seed = seed
        self.augment = create_augmentation(config.augmentation, config.resolution)

    def fit(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        fold: int = 0,
        observer: TrainingObserver | None = None,
    ) -> FoldResult:
        """Train on ``train_idx``, early-stop on the validation loss of ``val_idx``; keep the best epoch."""
        observer = observer or TrainingObserver()
        cfg = self.config
        torch.manual_seed(self.seed + fold)
        generator = torch.Generator().manual_seed(self.seed + fold)
        model = create_classifier(cfg, self.num_classes, self.weights_dir)
        model = self._to_device(model)
        norm = _normaliser(model, self.device)

        batch = min(cfg.batch_size, len(train_idx))
        steps = max(1, len(train_idx) // batch)
        optimizer = create_optimizer_v2(
            model,
            opt=TIMM_OPTIMIZER[cfg.optimizer],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
        )
        scheduler = create_scheduler(optimizer, cfg, steps)
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        train_t = torch.as_tensor(train_idx)
        val_images, val_labels = images[torch.as_tensor(val_idx)], labels[torch.as_tensor(val_idx)]

        history: list[EpochRecord] = []
        best_loss, best_epoch, best_state, best_probs = math.inf, 0, None, None
        updates = 0
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            model.train()
            order = train_t[torch.randperm(len(train_t), generator=generator)]
            total = 0.0
            for step in range(steps):
                idx = order[step * batch : (step + 1) * batch]
                x = self._prepare(images[idx], norm, augment=True)
                y = labels[idx].to(self.device, non_blocking=True)
                with self._autocast():
                    loss = criterion(model(x), y)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (lr {cfg.lr:.2g})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                updates += 1
                scheduler.step_update(num_updates=updates)
                total += loss.item()
            lr = optimizer.param_groups[0]["lr"]
            val_loss, val_acc, probs = self.evaluate(model, val_images, val_labels, norm)
            scheduler.step(epoch + 1, val_loss)
            record = EpochRecord(epoch, total / steps, val_loss, val_acc, lr, time.perf_counter() - start)
            history.append(record)
            if val_loss < best_loss - MIN_IMPROVEMENT or best_state is None:
                best_loss, best_epoch, best_probs = val_loss, epoch, probs
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            observer.on_epoch_end(fold, record)
            if epoch - best_epoch >= cfg.patience:
                break
        result = FoldResult(fold, history, best_epoch, np.asarray(val_idx), best_probs, model.frozen_stages, best_state)
        observer.on_fold_end(result)
        return result

    @torch.inference_mode()
    def evaluate(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[float, float, np.ndarray]:
        """Mean cross-entropy, accuracy and softmax probabilities of ``model`` on ``images``."""
        model.eval()
        probs = []
        for start in range(0, len(images), EVAL_BATCH):
            x = self._prepare(images[start : start + EVAL_BATCH], norm, augment=False)
            with self._autocast():
                logits = model(x)
            probs.append(logits.float().softmax(dim=1).cpu())
        p = torch.cat(probs)
        loss = nn.functional.nll_loss(p.clamp_min(1e-7).log(), labels).item()
        accuracy = (p.argmax(1) == labels).float().mean().item()
        return loss, accuracy, p.numpy()

    def _prepare(self, batch: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor], augment: bool) -> torch.Tensor:
        if augment and self.augment is not None:
            batch = torch.stack([self.augment(img) for img in batch])
        x = batch.to(self.device, non_blocking=True).float().div_(255.0)
        x = (x - norm[0]) / norm[1]
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _to_device(self, model: nn.Module) -> nn.Module:
        if self.device.type == "cuda":
            return model.to(self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    def _autocast(self) -> torch.autocast:
        # bf16 autocast on GPU; on CPU it measured slower than fp32 here, so it stays off.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")


class _TorchPlateau:
    """torch's ReduceLROnPlateau behind timm's scheduler interface (timm deprecates its plateau scheduler)."""

    def __init__(self, optimizer: torch.optim.Optimizer, patience: int) -> None:
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.1, patience=patience
        )

    def step_update(self, num_updates: int) -> None:
        pass

    def step(self, epoch: int, metric: float) -> None:
        self.scheduler.step(metric)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """timm's per-update cosine (with linear warmup) and step schedules, torch's ReduceLROnPlateau."""
    if cfg.scheduler == "plateau":
        return _TorchPlateau(optimizer, patience=max(0, cfg.patience // 2))
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


def _normaliser(model: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(model.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1)
    return mean, std


def cross_validate(
    config: TrainConfig,
    store: ImageStore,
    labels: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    device: torch.device,
    weights_dir: Path | None = None,
    seed: int = 0,
    observer: TrainingObserver | None = None,
    keep_models: bool = False,
) -> CVResult:
    """Train one model per split with the same :class:`Trainer`; models are kept only if asked."""
    observer = observer or TrainingObserver()
    trainer = Trainer(config, num_classes, device, weights_dir, seed)
    images = store.at(config.resolution)
    label_t = torch.as_tensor(labels)
    results = []
    for fold, (train_idx, val_idx) in enumerate(splits):
        observer.on_fold_start(fold, len(splits), config.epochs)
        result = trainer.fit(images, label_t, train_idx, val_idx, fold, observer)
        if not keep_models:
            result.state_dict = None
        results.append(result)
    return CVResult(results, labels, num_classes)
