"""The one trainer: trains a fold model for a :class:`TrainConfig`, shared by search and refit.

:meth:`Trainer.fit` reads as one page: build the fold's parts (:mod:`autocls.train.foldparts`), then for
each epoch shuffle, take a step per batch, evaluate, and let the small objects of
:mod:`autocls.train.callbacks` decide what to keep and when to stop. Observers hear about every epoch
and fold, so the study driver can report to Optuna's pruner and the console can show progress,
without the trainer knowing about either. :func:`autocls.train.cv.cross_validate` runs it over folds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.data.mixup import Mixup, mixup_target
from torch import nn

from autocls.data.images import ImageStore
from autocls.runtime.control import check_stop, derive_seed, seed_everything
from autocls.runtime.errors import NonFiniteLossError
from autocls.runtime.threads import adjust_threads
from autocls.train.augment import create_augmentation
from autocls.train.callbacks import EarlyStopping, KeptWeights, TrainingObserver, monitor_split
from autocls.train.config import TrainConfig
from autocls.train.features import cached_inputs, features_to_device
from autocls.train.feeding import BatchFeeder, autocast, grad_scaler, predict_in_batches
from autocls.train.foldparts import FoldParts, batch_plan, build_fold
from autocls.train.history import EpochRecord, FoldResult
from autocls.train.losses import binary_cross_entropy, sam_ascent_step, soft_cross_entropy
from autocls.train.metrics import get_metric
from autocls.train.optim import anneals

logger = logging.getLogger(__name__)

EVAL_BATCH = 256  # images a forward pass evaluates (and the frozen-feature cache computes) at a time
# A training step's loss stays on the device; the host reads the losses every this many steps (one
# sync: a per-step ``.item()`` made the host wait for each step's kernels before it gathered the
# next batch, so the GPU idled between steps) and at the end of an epoch. A loss that is not finite
# fails the fold at that read, naming its step.
LOSS_READ_STEPS = 16
Prepare = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FoldInputs:
    """What the network trains on: images (or a frozen part's cached features) and how to prepare a batch."""

    net: nn.Module
    images: torch.Tensor
    prepare_train: Prepare
    prepare_eval: Prepare


class Trainer:
    """Trains one fold model of ``config`` on images from an :class:`ImageStore`.

    Every technique of the configuration lives here or in the modules it builds from, once, for
    search and refit alike: timm's optimizers (with layer-wise lr decay) and schedulers, SAM,
    torchvision augmentation policies, RandomErasing, timm's MixUp/CutMix, label smoothing,
    class-weighted loss or a class-balanced sampler, and early stopping where the schedule does not
    anneal.

    With ``multilabel`` the labels are an images x labels 0/1 matrix: one sigmoid per label, binary
    cross-entropy (positive weights per label as the class-weight option), MixUp/CutMix mixing the
    label vectors and label smoothing towards 0.5 (timm's multi-label forms).
    """

    def __init__(
        self,
        config: TrainConfig,
        num_classes: int,
        device: torch.device,
        *,
        weights_dir: Path | None = None,
        seed: int = 0,
        metric: str = "accuracy",
        feature_cache: bool = True,
        multilabel: bool = False,
        eval_batch: int = EVAL_BATCH,
        place_store: bool = True,
    ) -> None:
        # what an out-of-memory retry shrinks besides the batch (autocls.train.cv.fit_fold): the batch of
        # evaluation and of the frozen-feature cache, and whether the image store may go on the device
        self.eval_batch = eval_batch
        self.place_store = place_store
        self.scaler = grad_scaler(device)
        self.feature_cache = feature_cache
        self.multilabel = multilabel
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.weights_dir = weights_dir
        self.seed = seed
        self.metric = get_metric(metric)
        self.augment = create_augmentation(config.augmentation, config.random_erasing)
        if self.augment is not None:
            self.augment.to(device)
        self.mixup = (
            Mixup(
                mixup_alpha=config.mixup,
                cutmix_alpha=config.cutmix,
                label_smoothing=config.label_smoothing,
                num_classes=num_classes,
                multi_label=multilabel,
            )
            if config.mixup > 0 or config.cutmix > 0
            else None
        )

    def fit(
        self,
        store: ImageStore,
        labels: torch.Tensor,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        *,
        fold: int = 0,
        observer: TrainingObserver | None = None,
        soft_targets: torch.Tensor | None = None,
    ) -> FoldResult:
        """Train on ``train_idx`` and report every epoch's score on ``val_idx``.

        The weights kept, and the score the fold reports, are chosen without ``val_idx``'s labels:
        an annealing schedule keeps its last epoch; any other early-stops on images held out of
        ``train_idx`` (:func:`monitor_split`) and keeps the epoch best on those.

        ``soft_targets`` (one probability row per image, e.g. a teacher's, for distillation) replace
        the one-hot labels in the training loss; scores and early stopping still use ``labels``.
        They cannot be combined with MixUp/CutMix, whose timm implementation mixes hard labels.

        Seventy lines on purpose: the whole loop on one page, as nanoGPT's ``train.py`` keeps it;
        what varies (building, caching, stopping, keeping) lives in the objects it calls.
        """
        observer = observer or TrainingObserver()
        cfg = self.config
        if soft_targets is not None and self.mixup is not None:
            raise ValueError("soft targets cannot be combined with MixUp/CutMix; set mixup and cutmix to 0")
        seed = derive_seed(self.seed, fold)
        seed_everything(seed)
        generator = torch.Generator().manual_seed(seed)
        stopping = None if anneals(cfg) else EarlyStopping(cfg.patience)
        monitor_idx = None
        if stopping is not None:
            train_idx, monitor_idx = monitor_split(train_idx, labels.numpy(), seed)
        batch, steps = batch_plan(cfg.batch_size, len(train_idx))
        parts = build_fold(cfg, self.num_classes, self.weights_dir, self.device, steps_per_epoch=steps)
        inputs = self._inputs(parts, store)
        self.scaler = grad_scaler(self.device)  # a fresh one per fold; enabled only where training runs in fp16
        feed = BatchFeeder(inputs.images, self.device, batch)  # the next batch loads while this one trains
        train_t = torch.as_tensor(train_idx)
        class_weights, sample_weights = self._balancing(labels[train_t])
        val_t = torch.as_tensor(val_idx)
        val_labels = labels[val_t]  # the images are gathered a batch at a time: a fold's are not copied

        history: list[EpochRecord] = []
        kept = KeptWeights()
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            if sample_weights is not None:
                order = train_t[torch.multinomial(sample_weights, len(train_t), replacement=True, generator=generator)]
            else:
                order = train_t[torch.randperm(len(train_t), generator=generator)]
            inputs.net.train()
            losses = StepLosses(epoch, cfg.lr)
            order = order[: steps * batch]
            for step, (idx, images) in enumerate(zip(order.split(batch), feed(order), strict=True)):
                check_stop()
                x = inputs.prepare_train(images)
                targets = soft_targets[idx] if soft_targets is not None else labels[idx]
                losses.add(self._train_step(inputs.net, parts.optimizer, x, targets, class_weights=class_weights))
                parts.scheduler.step_update(num_updates=epoch * steps + step + 1)
            total = losses.total()
            lr = parts.lr
            val_loss, probs = self.evaluate(inputs.net, inputs.images, inputs.prepare_eval, val_labels, rows=val_t)
            monitor_loss = self._monitor_loss(inputs, labels, monitor_idx)
            parts.scheduler.step(epoch + 1, monitor_loss)
            score = self.metric(val_labels.numpy(), probs)
            record = EpochRecord(epoch, total / steps, val_loss, score, lr, time.perf_counter() - start, monitor_loss)
            history.append(record)
            if stopping.update(epoch, monitor_loss) if stopping is not None else epoch == cfg.epochs - 1:
                kept.keep(epoch, parts.model, probs)
            observer.on_epoch_end(fold, record)
            adjust_threads()  # another program may have started or stopped on our cores
            if stopping is not None and stopping.should_stop(epoch):
                break
        frozen = parts.model.frozen_stages
        result = FoldResult(
            fold, history, kept.epoch, np.asarray(val_idx), kept.probs, frozen, kept.state, cfg.batch_size
        )
        observer.on_fold_end(result)
        return result

    def with_config(
        self, config: TrainConfig, *, eval_batch: int | None = None, place_store: bool | None = None
    ) -> Trainer:
        """The same trainer (classes, device, weights, seed, metric) for another configuration;
        ``eval_batch`` and ``place_store`` as given, else as this one's."""
        return Trainer(
            config,
            self.num_classes,
            self.device,
            weights_dir=self.weights_dir,
            seed=self.seed,
            metric=self.metric.name,
            feature_cache=self.feature_cache,
            multilabel=self.multilabel,
            eval_batch=self.eval_batch if eval_batch is None else eval_batch,
            place_store=self.place_store if place_store is None else place_store,
        )

    def _inputs(self, parts: FoldParts, store: ImageStore) -> FoldInputs:
        """The images at the model's resolution; or, when the inputs are the same every epoch (no
        augmentation, no MixUp), a frozen part's cached features and the part left to train."""
        images = store.on(self.config.resolution, self.device, place=self.place_store)
        plain = FoldInputs(parts.model, images, self._augmented(parts), parts.preprocess)
        if not self.feature_cache or self.augment is not None or self.mixup is not None:
            return plain
        cached = cached_inputs(
            parts.model,
            store,
            self.config,
            weights_dir=self.weights_dir,
            prepare=parts.preprocess,
            device=self.device,
            batch=self.eval_batch,
        )
        if cached is None:
            return plain
        net, features = cached

        def to_device(x: torch.Tensor) -> torch.Tensor:
            return features_to_device(x, self.device)

        return FoldInputs(net, features, to_device, to_device)

    def _augmented(self, parts: FoldParts) -> Prepare:
        """Augment a uint8 batch where the model trains (the device), then normalise it."""
        augment = self.augment
        if augment is None:
            return parts.preprocess
        return lambda batch: parts.preprocess.unit(augment(batch.to(self.device, non_blocking=True)))

    def _monitor_loss(self, inputs: FoldInputs, labels: torch.Tensor, monitor_idx: np.ndarray | None) -> float | None:
        if monitor_idx is None:
            return None
        monitor_t = torch.as_tensor(monitor_idx)
        return self.evaluate(inputs.net, inputs.images, inputs.prepare_eval, labels[monitor_t], rows=monitor_t)[0]

    def _balancing(self, train_labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Class weights for the loss, or per-image weights for the sampler, as ``imbalance`` asks.

        Both are inverse class frequencies ("balanced" in scikit-learn's sense). Multi-label: the
        loss weighs each label's positives by its negatives/positives ratio (``pos_weight``), and
        the sampler draws an image with the inverse frequency of its rarest label.
        """
        if self.multilabel:
            return self._multilabel_balancing(train_labels.float())
        counts = torch.bincount(train_labels, minlength=self.num_classes).float().clamp_min(1)
        inverse = counts.sum() / (self.num_classes * counts)
        if self.config.imbalance == "class_weight":
            return inverse.to(self.device), None
        if self.config.imbalance == "sampler":
            return None, inverse[train_labels]
        return None, None

    def _multilabel_balancing(self, train_labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        positives = train_labels.sum(dim=0).clamp_min(1)
        if self.config.imbalance == "class_weight":
            return ((len(train_labels) - positives).clamp_min(1) / positives).to(self.device), None
        if self.config.imbalance == "sampler":
            inverse = len(train_labels) / (self.num_classes * positives)
            return None, (train_labels * inverse).amax(dim=1).clamp_min(float(inverse.min()))
        return None, None

    def _train_step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        labels: torch.Tensor,
        *,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """One update on a batch; ``labels`` are class indices, or probability rows (soft targets).
        Returns the loss, detached, where it was computed (see :data:`LOSS_READ_STEPS`)."""
        y = labels.to(self.device, non_blocking=True)
        if y.is_floating_point():
            targets = y
        elif self.mixup is not None:
            x, targets = self.mixup(x, y)
        else:
            targets = mixup_target(
                y, self.num_classes, smoothing=self.config.label_smoothing, multi_label=self.multilabel
            )
        loss_of = binary_cross_entropy if self.multilabel else soft_cross_entropy

        def compute_loss() -> torch.Tensor:
            with autocast(self.device, training=True):
                logits = model(x)
            return loss_of(logits, targets, class_weights)

        # fp16 (GPUs without bf16 tensor cores) scales the loss up, so small gradients do not
        # underflow, and skips a step whose gradients overflowed; elsewhere the scaler is a no-op
        scaler = self.scaler
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss()
        # no check of the loss here: `if not torch.isfinite(loss)` waits for the GPU like .item();
        # a non-finite loss fails the fold when the losses are read (StepLosses), a few steps on
        scaler.scale(loss).backward()
        if self.config.sam_rho > 0:
            sam_ascent_step(model, optimizer, lambda: scaler.scale(compute_loss()), self.config.sam_rho)
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    @torch.inference_mode()
    def evaluate(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        prepare: Prepare,
        labels: torch.Tensor | None = None,
        *,
        rows: torch.Tensor | None = None,
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy on ``labels`` (nan without them) and softmax probabilities (binary
        cross-entropy and one sigmoid per label for multi-label data) of ``inputs``' ``rows`` (all
        by default), gathered a batch at a time: a memory-mapped store's validation fold (a fifth
        of the images) was copied whole into memory before."""
        model.eval()
        p = predict_in_batches(
            [model], inputs, prepare, self.device, multilabel=self.multilabel, batch=self.eval_batch, rows=rows
        )
        if labels is None:
            return math.nan, p.numpy()
        if self.multilabel:
            return nn.functional.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), labels.float()).item(), p.numpy()
        return nn.functional.nll_loss(p.clamp_min(1e-7).log(), labels).item(), p.numpy()


class StepLosses:
    """An epoch's training losses, kept on the device and read by the host every
    :data:`LOSS_READ_STEPS` steps; the first that is not finite fails the fold, naming its step."""

    def __init__(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr = epoch, lr
        self.pending: list[torch.Tensor] = []
        self.read: list[float] = []

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)
        if len(self.pending) >= LOSS_READ_STEPS:
            self._read()

    def total(self) -> float:
        """The sum of the epoch's losses, as floats in step order (the sum a per-step read gave)."""
        self._read()
        return sum(self.read, 0.0)

    def _read(self) -> None:
        if not self.pending:
            return
        values = torch.stack([loss.float() for loss in self.pending]).cpu().tolist()  # the one sync
        self.pending = []
        for value in values:
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss became {value} at epoch {self.epoch + 1}, step {len(self.read) + 1} (lr {self.lr:.2g})"
                )
            self.read.append(value)
