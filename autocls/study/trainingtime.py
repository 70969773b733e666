"""The training-time model: how long a configuration takes to cross-validate on this machine, before it runs.

A trial's time is its training and evaluation passes: per fold and epoch, the training images
through forward+backward and the validation images through forward. The training speed of a
(backbone, resolution, freezing, batch) is measured here with a few steps on random tensors
(seconds for a small CNN, and once: it is kept in the workdir's ``cache/speeds.json``, per CPU
thread count, or per GPU model), and the estimate is corrected by how long finished trials really
took against their estimates (data path, augmentation, early stopping). The time plan
(:mod:`autocls.study.budget`) uses it to skip what cannot finish in the time left and to size the
warm-start recipes to the budget. The same file keeps each model's per-image latency and parameter
count, measured here too, for the deployment limits (:mod:`autocls.study.limits`, whose
:class:`~autocls.study.limits.DeploymentCost` is what a delivered model costs per image, not in training).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import torch

from autocls.runtime.atomic import exclusive, write_atomically
from autocls.runtime.devicememory import retry_halving
from autocls.storage.records import TrialRecord
from autocls.train.backbones import create_classifier
from autocls.train.config import TrainConfig
from autocls.train.feeding import autocast, grad_scaler, model_to_device, to_device_layout
from autocls.train.optim import create_optimizer

logger = logging.getLogger(__name__)

# Per-image speed on a CPU grows up to a batch of a few dozen (lite0 at 64 px, 2 cores: 64 images/s
# at batch 8, 108 at 16, 115 at 32, 118 at 64), so probes use 32;
# a model so slow that one probe step takes SLOW_STEP seconds is timed once.
PROBE_BATCH = 32
SLOW_STEP = 3.0
PROBE_SECONDS = 2.0
MAX_PROBE_STEPS = 12
# On a CPU a convolution's time grows with the pixels, so a probe at a lower resolution, scaled by
# the pixel ratio, predicts the higher ones (on the safe side: per-pixel cost falls a little as
# images grow). It keeps a search's set-up inside short budgets: the default space's recipes probed
# at 224 px took 135 s on 2 cores before the first image was decoded, against 45 s at 128 px
# (`--timeout 90` then ran 150 s). A GPU is not pixel-bound at these sizes: it measures each one.
CPU_PROBE_RESOLUTION = 128
PROBE_CLASSES = 10  # the head's size hardly matters to the time
EVAL_SPEED_UP = 3.0  # a forward pass alone costs about a third of forward+backward
LATENCY_SECONDS = 0.5  # per-image latency: the median of passes over about this long
MAX_LATENCY_RUNS = 25
# Before any trial of a study has finished, real epochs are taken to last this much longer than the
# probe estimates (probes time bare forward+backward steps; a trial also augments, evaluates and
# keeps weights). Measured over the first trials of 13 Fashion-MNIST benchmark studies on this
# 2-core machine: real/estimated 1.00-1.63, median 1.19. Plans sized with 1.0 missed by a fold.
PRIOR_CORRECTION = 1.2


@dataclass
class TrainingTimeModel:
    """Estimates of training speed and trial time (and the measured latency and size of a model);
    measurements are kept in ``cache_file`` (:attr:`autocls.storage.workdir.Workdir.speeds`)."""

    device: torch.device
    cache_file: Path | None = None
    speeds: dict[str, float] = field(default_factory=dict)
    correction: float = PRIOR_CORRECTION  # real over estimated time; learnt from finished trials
    # per backbone: real over estimated time of a run of its own (a portfolio probe), relative to
    # the correction then in force; see calibrate
    backbone_factors: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cache_file is not None and self.cache_file.is_file():
            with contextlib.suppress(OSError, ValueError):  # a damaged cache is measured again
                self.speeds.update(json.loads(self.cache_file.read_text()))

    def images_per_second(self, config: TrainConfig) -> float:
        """Training images per second of ``config``'s model on this device, measured once (on a
        CPU, above :data:`CPU_PROBE_RESOLUTION`, at that resolution and scaled by the pixels)."""
        if self.device.type == "cpu" and config.resolution > CPU_PROBE_RESOLUTION:
            at_probe = TrainConfig.from_dict({**config.to_dict(), "resolution": CPU_PROBE_RESOLUTION})
            return self.images_per_second(at_probe) * (CPU_PROBE_RESOLUTION / config.resolution) ** 2
        key = (
            f"{self.device_key()}/{config.backbone}/{config.resolution}px/"
            f"freeze{config.freeze}/b{self._probe_batch(config)}"
        )
        if key not in self.speeds:
            self.speeds[key] = self._measure(config)
            self._save()
        return self.speeds[key]

    def epoch_seconds(self, config: TrainConfig, train_images: int, val_images: int) -> float:
        """Seconds of one epoch, training plus validation passes, before the study's correction (with
        the backbone's own factor, when :meth:`calibrate` has measured one)."""
        speed = self.images_per_second(config)
        factor = self.backbone_factors.get(config.backbone, 1.0)
        return (train_images / speed + val_images / (speed * EVAL_SPEED_UP)) * factor

    def calibrate(self, config: TrainConfig, train_images: int, val_images: int, seconds: float) -> None:
        """Scale ``config.backbone``'s estimates so that one fold of ``config`` (``train_images`` and
        ``val_images``, all its epochs) is estimated at ``seconds``, the time it really took.

        The speed probes time a few steps on random tensors; their noise is per model. On 2 CPU
        cores one process measured EfficientNet-Lite1 at 72 images/s at 64 px where another had
        measured 99, and sized Lite1's recipe to 4 epochs instead of 6, while its folds then ran at
        the faster speed. A real fold of the same backbone (a portfolio probe) is the better measure.
        It is taken at the probe's low fidelity, and does not carry over to other resolutions exactly
        (Lite0 and Lite1 at 64 px took 1.2-1.8x per epoch what their 48-px probes took): the study's
        correction, learnt from each finished trial (:meth:`learn_from`), takes up the rest.
        """
        self.backbone_factors.pop(config.backbone, None)
        estimate = self.epoch_seconds(config, train_images, val_images) * config.epochs * self.correction
        if estimate > 0 and seconds > 0:
            self.backbone_factors[config.backbone] = seconds / estimate

    def trial_seconds(self, config: TrainConfig, images: int, folds: int, trained: int | None = None) -> float:
        """Estimated seconds to cross-validate ``config`` on ``images`` images split into ``folds``
        folds, every epoch run, training ``trained`` of the folds (all by default)."""
        per_epoch = self.epoch_seconds(config, images - images // folds, images // folds)
        return per_epoch * config.epochs * (trained or folds) * self.correction

    def learn_from(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        """Set the correction to the median ratio of real to estimated epoch time of past trials."""
        ratios = []
        for trial in trials:
            record = TrialRecord.read(trial)
            estimate, epochs = record.estimated_epoch_seconds, record.epoch_seconds
            if estimate and epochs:
                ratios.append(float(np.mean(epochs)) / estimate)
        if ratios:
            self.correction = float(np.median(ratios))

    def latency_ms(self, config: TrainConfig) -> float:
        """Milliseconds one of ``config``'s models takes to predict one image (batch 1, inference,
        on this device), the median of a few passes; measured once like the training speed."""
        key = f"latency/{self.device_key()}/{config.backbone}/{config.resolution}px"
        if key not in self.speeds:
            self.speeds[key] = self._measure_latency(config)
            self._save()
        return self.speeds[key]

    def device_key(self) -> str:
        """What a measurement depends on besides the model: a CPU's thread count, or a GPU's model
        (its name; the precision follows from it), not this process's threads, which differ between
        a ``--workers`` parent and its children and say nothing of a GPU's speed. A workdir moved to
        another GPU model measures again."""
        if self.device.type == "cuda":
            return f"cuda/{torch.cuda.get_device_name(self.device)}"
        return f"{self.device.type}/{torch.get_num_threads()}t"

    def parameters(self, config: TrainConfig) -> int:
        """Parameters of ``config``'s model (its head sized for :data:`PROBE_CLASSES` classes)."""
        key = f"params/{config.backbone}"
        if key not in self.speeds:
            model = create_classifier(TrainConfig.from_dict({**config.to_dict(), "pretrained": False}), PROBE_CLASSES)
            self.speeds[key] = float(sum(p.numel() for p in model.parameters()))
            self._save()
        return int(self.speeds[key])

    @torch.inference_mode()
    def _measure_latency(self, config: TrainConfig) -> float:
        probe = TrainConfig.from_dict({**config.to_dict(), "pretrained": False})
        model = model_to_device(create_classifier(probe, PROBE_CLASSES), self.device).eval()
        x = to_device_layout(torch.randn(1, 3, config.resolution, config.resolution, device=self.device))

        def once() -> float:
            start = time.perf_counter()
            with autocast(self.device):  # prediction's precision
                model(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter() - start

        once()  # warm-up: allocators and kernel choice
        times = [once()]
        while sum(times) < LATENCY_SECONDS and len(times) < MAX_LATENCY_RUNS:
            times.append(once())
        return 1000.0 * float(np.median(times))

    def _measure(self, config: TrainConfig) -> float:
        """Training images per second at the probe's batch; where that batch runs out of device
        memory, at the batch a fold would then train at (half, down to the floor, as
        :func:`autocls.train.cv.fit_fold` does), so a configuration that trains is never failed, or its
        warm-start recipe dropped, by its probe."""

        def measure(batch: int) -> float:
            return self._measure_at(config, batch)

        return retry_halving(measure, self._probe_batch(config), self.device)[0]

    def _measure_at(self, config: TrainConfig, batch: int) -> float:
        probe = TrainConfig.from_dict({**config.to_dict(), "pretrained": False})
        model = model_to_device(create_classifier(probe, PROBE_CLASSES), self.device)  # as the trainer lays it out
        optimizer = create_optimizer(model, probe)
        scaler = grad_scaler(self.device)
        x = to_device_layout(torch.randn(batch, 3, config.resolution, config.resolution, device=self.device))
        y = torch.randint(0, PROBE_CLASSES, (batch,), device=self.device)
        model.train()

        def step() -> float:
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, training=True):  # the trainer's precision
                loss = torch.nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter() - start

        warm_up = step()  # allocators and kernel choice
        if warm_up >= 2 * SLOW_STEP:
            # a step this slow is dominated by its arithmetic, not by the warm-up: timing a second
            # one would double the probe (and the set-up of a short budget) for a few percent
            return batch / warm_up
        seconds = [step()]
        # the best of several steps over at least PROBE_SECONDS, unless one step already takes long:
        # a best of two, taken as a process starts, once measured lite0 at 72 images/s against 134
        # later, and sized the first recipe to 4 epochs instead of 8
        while seconds[0] < SLOW_STEP and sum(seconds) < PROBE_SECONDS and len(seconds) < MAX_PROBE_STEPS:
            seconds.append(step())
        speed = batch / min(seconds)
        logger.debug("measured %s at %d px: %.1f images/s", config.backbone, config.resolution, speed)
        return speed

    def _probe_batch(self, config: TrainConfig) -> int:
        # a GPU's speed depends on the batch; a CPU's per-image speed hardly does
        return config.batch_size if self.device.type == "cuda" else min(config.batch_size, PROBE_BATCH)

    def _save(self) -> None:
        if self.cache_file is None:
            return
        try:
            # other workers may have measured other models since: merge under a lock, replace atomically
            with exclusive(self.cache_file):
                with contextlib.suppress(OSError, ValueError):
                    self.speeds = {**json.loads(self.cache_file.read_text()), **self.speeds}
                write_atomically(self.cache_file, json.dumps(self.speeds, indent=1, sort_keys=True).encode())
        except OSError as err:  # a read-only workdir costs a re-measurement next time, nothing else
            logger.debug("could not keep measured speeds in %s: %s", self.cache_file, err)
