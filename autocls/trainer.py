"""The one trainer: trains a fold model for a :class:`TrainConfig`, shared by search and refit.

:func:`cross_validate` runs it over stratified folds; observers hear about every epoch and fold so
the study driver can report to Optuna's pruner and the console can show progress, without the
trainer knowing about either.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, train_test_split
from timm.data.mixup import Mixup, mixup_target
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from autocls.augment import create_augmentation
from autocls.backbones import create_classifier, split_frozen_prefix
from autocls.config import TrainConfig
from autocls.errors import AutoclsError, NonFiniteLossError
from autocls.images import ImageStore
from autocls.metrics import get_metric
from autocls.threads import adjust_threads

logger = logging.getLogger(__name__)

EVAL_BATCH = 256
MIN_IMPROVEMENT = 1e-4  # a monitored loss must drop by this much to reset early stopping's patience
# Schedules that anneal the lr to the end of training. Their last epochs, at the smallest lr, are
# where they gain most: a fold trains to the end and keeps its last weights. Stopping on a noisy
# validation loss cut one-cycle folds short and kept weights taken at a high lr, mid-schedule;
# a losing trial is stopped by the pruner instead. Early stopping applies only where the lr does not
# anneal to an end (plateau, constant).
ANNEALING_SCHEDULERS = frozenset({"cosine", "onecycle", "step"})
# Share of a fold's training images held out to monitor early stopping and the plateau schedule
# (schedules that do not anneal): the fold's validation images then choose nothing, and the score a
# fold reports is an honest estimate for the weights it keeps.
MONITOR_SHARE = 0.1


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


def folds_hash(splits: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """A short hash of which image is in which validation fold, to prove two runs used the same folds."""
    digest = hashlib.sha256()
    for _, val_idx in splits:
        digest.update(np.sort(val_idx).astype(np.int64).tobytes() + b"|")
    return digest.hexdigest()[:16]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AutoclsError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto.")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise AutoclsError(f"--device must be auto, cpu or cuda, got {name!r}.")
    return torch.device(name)


STOP_REQUESTED = threading.Event()


@contextlib.contextmanager
def stop_on_ctrl_c():
    """Within the block, Ctrl-C is a request the trainer honours after the current batch; a second
    Ctrl-C interrupts at once. A KeyboardInterrupt raised at an arbitrary point can land in a garbage
    collector callback (SQLAlchemy's), where Python prints and swallows it: the search then went on.

    The request is cleared and the caller's SIGINT handler restored on the way out, so a later search
    in the same process (a notebook, the Python API) does not stop at once.
    """
    STOP_REQUESTED.clear()
    # signal handlers can be set from the main thread only; an ignored (nohup) or custom SIGINT
    # handler is the caller's choice and stays
    ours = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )

    def handler(signum: int, frame: object) -> None:
        if STOP_REQUESTED.is_set():
            raise KeyboardInterrupt
        STOP_REQUESTED.set()

    previous = signal.signal(signal.SIGINT, handler) if ours else None
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)
        STOP_REQUESTED.clear()


def _check_stop() -> None:
    if STOP_REQUESTED.is_set():
        raise KeyboardInterrupt


def derive_seed(*entropy: int) -> int:
    """A 32-bit seed for a tuple of integers, e.g. (study seed, trial number) or (trial seed, fold).

    numpy's ``SeedSequence`` hashes the whole tuple, so distinct tuples get unrelated seeds; a sum
    (``seed + trial + fold``) gave trial 1 fold 0 and trial 0 fold 1 the same seed.
    """
    return int(np.random.SeedSequence([int(e) % 2**64 for e in entropy]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (model init, torchvision augmentation), numpy (timm's Mixup) and ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    present = np.unique(labels[train_idx], return_counts=True)[1]
    size = max(len(present), round(MONITOR_SHARE * len(train_idx)))
    if len(train_idx) - size < max(2, len(present)):
        return train_idx, train_idx
    stratify = labels[train_idx] if present.min() >= 2 else None
    fit, monitor = train_test_split(train_idx, test_size=size, stratify=stratify, random_state=seed % 2**32)
    return np.sort(fit), np.sort(monitor)


def anneals(config: TrainConfig) -> bool:
    """Whether ``config``'s schedule anneals the lr to the end (see :data:`ANNEALING_SCHEDULERS`)."""
    return config.scheduler in ANNEALING_SCHEDULERS


class Trainer:
    """Trains one fold model of ``config`` on images from an :class:`ImageStore`.

    Every technique of the configuration lives here, once, for search and refit alike: timm's
    optimizers (with layer-wise lr decay) and schedulers, SAM, torchvision augmentation policies,
    RandomErasing, timm's MixUp/CutMix, label smoothing, class-weighted loss or a class-balanced
    sampler, and early stopping where the schedule does not anneal.
    """

    def __init__(
        self,
        config: TrainConfig,
        num_classes: int,
        device: torch.device,
        weights_dir: Path | None = None,
        seed: int = 0,
        metric: str = "accuracy",
        feature_cache: bool = True,
    ) -> None:
        self.feature_cache = feature_cache
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.weights_dir = weights_dir
        self.seed = seed
        self.metric = get_metric(metric)
        self.augment = create_augmentation(config.augmentation, config.random_erasing)
        self.mixup = (
            Mixup(
                mixup_alpha=config.mixup,
                cutmix_alpha=config.cutmix,
                label_smoothing=config.label_smoothing,
                num_classes=num_classes,
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
        fold: int = 0,
        observer: TrainingObserver | None = None,
    ) -> FoldResult:
        """Train on ``train_idx`` and report every epoch's score on ``val_idx``.

        The weights kept, and the score the fold reports, are chosen without ``val_idx``'s labels:
        an annealing schedule keeps its last epoch; any other early-stops on images held out of
        ``train_idx`` (:func:`monitor_split`) and keeps the epoch best on those.
        """
        observer = observer or TrainingObserver()
        cfg = self.config
        seed = derive_seed(self.seed, fold)
        seed_everything(seed)
        generator = torch.Generator().manual_seed(seed)
        stopping = None if anneals(cfg) else EarlyStopping(cfg.patience)
        monitor_idx = None
        if stopping is not None:
            train_idx, monitor_idx = monitor_split(train_idx, labels.numpy(), seed)
        batch = min(cfg.batch_size, len(train_idx))
        batch = max(2, batch - batch % 2)  # MixUp/CutMix pair each image with another: batches must be even
        steps = max(1, len(train_idx) // batch)  # drop_last: no odd, tiny final batch
        model = self._to_device(create_classifier(cfg, self.num_classes, self.weights_dir))
        optimizer = create_optimizer(model, cfg)
        scheduler = create_scheduler(optimizer, cfg, steps)
        norm = _normaliser(model, self.device)
        prepare_train = functools.partial(self._prepare, norm=norm, augment=True)
        prepare_eval = functools.partial(self._prepare, norm=norm, augment=False)
        net, inputs = model, store.at(cfg.resolution)
        cached = self._cached_inputs(model, store, prepare_eval) if self.feature_cache else None
        if cached is not None:
            net, inputs = cached
            prepare_train = prepare_eval = self._features_to_device
        train_t = torch.as_tensor(train_idx)
        class_weights, sample_weights = self._balancing(labels[train_t])
        val_t = torch.as_tensor(val_idx)
        val_inputs, val_labels = inputs[val_t], labels[val_t]
        if monitor_idx is not None:
            monitor_t = torch.as_tensor(monitor_idx)
            monitor_inputs, monitor_labels = inputs[monitor_t], labels[monitor_t]

        history: list[EpochRecord] = []
        kept_epoch, kept_state, kept_probs = 0, None, None
        updates = 0
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            if sample_weights is not None:
                order = train_t[torch.multinomial(sample_weights, len(train_t), replacement=True, generator=generator)]
            else:
                order = train_t[torch.randperm(len(train_t), generator=generator)]
            net.train()
            total = 0.0
            for step in range(steps):
                _check_stop()
                idx = order[step * batch : (step + 1) * batch]
                loss = self._train_step(net, optimizer, prepare_train(inputs[idx]), labels[idx], class_weights)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss became {loss} at epoch {epoch + 1}, step {step + 1} (lr {cfg.lr:.2g})"
                    )
                updates += 1
                scheduler.step_update(num_updates=updates)
                total += loss
            lr = max(group["lr"] for group in optimizer.param_groups)
            val_loss, probs = self.evaluate(net, val_inputs, prepare_eval, val_labels)
            monitor_loss = None
            if monitor_idx is not None:
                monitor_loss, _ = self.evaluate(net, monitor_inputs, prepare_eval, monitor_labels)
            scheduler.step(epoch + 1, monitor_loss)
            score = self.metric(val_labels.numpy(), probs)
            record = EpochRecord(epoch, total / steps, val_loss, score, lr, time.perf_counter() - start, monitor_loss)
            history.append(record)
            keep = stopping.update(epoch, monitor_loss) if stopping is not None else epoch == cfg.epochs - 1
            if keep:
                kept_epoch, kept_probs = epoch, probs
                kept_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            observer.on_epoch_end(fold, record)
            adjust_threads()  # another program may have started or stopped on our cores
            if stopping is not None and stopping.should_stop(epoch):
                break
        result = FoldResult(fold, history, kept_epoch, np.asarray(val_idx), kept_probs, model.frozen_stages, kept_state)
        observer.on_fold_end(result)
        return result

    def _balancing(self, train_labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Class weights for the loss, or per-image weights for the sampler, as ``imbalance`` asks.

        Both are inverse class frequencies ("balanced" in scikit-learn's sense).
        """
        counts = torch.bincount(train_labels, minlength=self.num_classes).float().clamp_min(1)
        inverse = counts.sum() / (self.num_classes * counts)
        if self.config.imbalance == "class_weight":
            return inverse.to(self.device), None
        if self.config.imbalance == "sampler":
            return None, inverse[train_labels]
        return None, None

    def _cached_inputs(
        self, model: nn.Module, store: ImageStore, prepare: Callable
    ) -> tuple[nn.Module, torch.Tensor] | None:
        """The network left to train and its cached inputs, when a frozen part can run once.

        A frozen, pretrained part that sees unaugmented, unmixed images computes the same output
        every epoch and fold: it runs once over all images (in eval mode) and only the rest trains.
        Everything below the classifier frozen (a linear probe) caches pooled features; the first
        stages frozen cache the last frozen stage's feature maps. ``None`` when nothing can be cached.
        """
        if not self.config.pretrained or self.augment is not None or self.mixup is not None:
            return None  # random frozen weights differ per fold; augmented inputs differ per epoch
        images = store.at(self.config.resolution)
        if self._only_head_trains(model):
            pooled = functools.partial(model.forward_head, pre_logits=True)
            features = self._features(model, "pre-logits", store, prepare, lambda x: pooled(model.forward_features(x)))
            return _HeadOnFeatures(model), features
        model.eval()
        split = split_frozen_prefix(model, prepare(images[:2]))
        if split is None:
            return None
        prefix, rest = split
        with torch.inference_mode():
            per_image = prefix(prepare(images[:1])).numel() * 4
        if per_image * len(images) > FEATURE_CACHE_BYTES:
            logger.debug("frozen-prefix cache would need %d MiB; not cached", per_image * len(images) >> 20)
            return None
        return _RestOnPrefix(model, rest), self._features(model, f"prefix {len(prefix)}", store, prepare, prefix)

    def _only_head_trains(self, model: nn.Module) -> bool:
        head = {id(p) for p in model.get_classifier().parameters()}
        return all(not p.requires_grad for p in model.parameters() if id(p) not in head)

    def _features(
        self, model: nn.Module, part: str, store: ImageStore, prepare: Callable, frozen: Callable
    ) -> torch.Tensor:
        """``frozen`` applied to every image of ``store`` once per (backbone, weights, resolution,
        frozen part); the store keeps the result for the next folds and trials."""
        images = store.at(self.config.resolution)

        def compute() -> torch.Tensor:
            model.eval()
            chunks = []
            with torch.inference_mode(), self._autocast():
                for start in range(0, len(images), EVAL_BATCH):
                    chunks.append(frozen(prepare(images[start : start + EVAL_BATCH])).float().cpu())
            return torch.cat(chunks)

        key = (self.config.backbone, str(self.weights_dir), self.config.resolution, part)
        return store.features(key, compute)

    def _features_to_device(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and features.ndim == 4:
            features = features.contiguous(memory_format=torch.channels_last)
        return features

    def _train_step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        labels: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> float:
        y = labels.to(self.device, non_blocking=True)
        if self.mixup is not None:
            x, targets = self.mixup(x, y)
        else:
            targets = mixup_target(y, self.num_classes, smoothing=self.config.label_smoothing)

        def compute_loss() -> torch.Tensor:
            with self._autocast():
                logits = model(x)
            return soft_cross_entropy(logits, targets, class_weights)

        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss()
        if not torch.isfinite(loss):
            return float(loss.item())
        loss.backward()
        if self.config.sam_rho > 0:
            sam_ascent_step(model, optimizer, compute_loss, self.config.sam_rho)
        optimizer.step()
        return float(loss.item())

    @torch.inference_mode()
    def evaluate(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        prepare: Callable[[torch.Tensor], torch.Tensor],
        labels: torch.Tensor | None = None,
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy on ``labels`` (nan without them) and softmax probabilities."""
        model.eval()
        probs = []
        for start in range(0, len(inputs), EVAL_BATCH):
            x = prepare(inputs[start : start + EVAL_BATCH])
            with self._autocast():
                logits = model(x)
            probs.append(logits.float().softmax(dim=1).cpu())
        p = torch.cat(probs)
        loss = nn.functional.nll_loss(p.clamp_min(1e-7).log(), labels).item() if labels is not None else math.nan
        return loss, p.numpy()

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


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against soft targets (MixUp/CutMix, label smoothing), optionally class-weighted.

    With class weights each image counts with the weight of its (mixed) target and the sum is
    normalised by the total weight, which for hard targets is torch's weighted ``cross_entropy``.
    timm's ``SoftTargetCrossEntropy`` has no class weights, hence this one function for both.
    """
    per_image = -(targets * logits.float().log_softmax(dim=1)).sum(dim=1)
    if class_weights is None:
        return per_image.mean()
    weights = targets @ class_weights
    return (per_image * weights).sum() / weights.sum()


def sam_ascent_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, compute_loss: Callable[[], torch.Tensor], rho: float
) -> None:
    """Sharpness-Aware Minimisation (Foret et al., 2021), first order; timm has no SAM.

    With the gradient at w already in ``.grad``, step to w + rho * g/|g|, take the gradient there
    and step back: the caller's ``optimizer.step()`` then applies the gradient of the worst nearby
    point at w. Wrapping the step rather than the optimizer keeps timm's schedulers and param groups.
    The ascent pass leaves BatchNorm's running statistics as the first pass left them, as reference
    SAM implementations do: each batch counts once, and not at the perturbed weights.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
    offsets = [p.grad * (rho / (grad_norm + 1e-12)) for p in params]
    with torch.no_grad():
        torch._foreach_add_(params, offsets)
    optimizer.zero_grad(set_to_none=True)
    with batchnorm_stats_frozen(model):
        compute_loss().backward()
    with torch.no_grad():
        torch._foreach_sub_(params, offsets)


@contextlib.contextmanager
def batchnorm_stats_frozen(model: nn.Module):
    """BatchNorm layers in train mode still normalise with batch statistics, but their running
    statistics (and batch counts) are restored on the way out. Restoring copies is exact even for a
    batch with non-finite values, where a momentum of 0 would still write 0 * nan."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [{name: buf.clone() for name, buf in m.named_buffers(recurse=False)} for m in layers]
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, buffers in zip(layers, saved, strict=True):
                for name, value in buffers.items():
                    getattr(layer, name).copy_(value)


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


# A frozen prefix's feature maps are kept in memory only up to this size (early stages of a CNN at
# a high resolution are large); beyond it the prefix runs every step, as without a cache.
FEATURE_CACHE_BYTES = 4 << 30


class _HeadOnFeatures(nn.Module):
    """The model's dropout and classifier, applied to cached pre-logit features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.drop = nn.Dropout(getattr(model, "drop_rate", 0.0))
        self.head = model.get_classifier()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features))


class _RestOnPrefix(nn.Module):
    """The model's trainable stages and head, applied to a frozen prefix's cached feature maps.

    ``model`` is held as a submodule so ``train()``/``eval()`` reach its dropout and BatchNorm layers.
    """

    def __init__(self, model: nn.Module, rest: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rest = rest

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.rest(features))


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
    metric: str = "accuracy",
) -> CVResult:
    """Train one model per split with the same :class:`Trainer`; models are kept only if asked."""
    observer = observer or TrainingObserver()
    trainer = Trainer(config, num_classes, device, weights_dir, seed, metric)
    label_t = torch.as_tensor(labels)
    results = []
    for fold, (train_idx, val_idx) in enumerate(splits):
        observer.on_fold_start(fold, len(splits), config.epochs)
        result = trainer.fit(store, label_t, train_idx, val_idx, fold, observer)
        if not keep_models:
            result.state_dict = None
        results.append(result)
    return CVResult(results, labels, num_classes, metric)
