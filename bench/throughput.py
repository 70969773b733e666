"""Trainer throughput against the model's own limit, on camera-sized JPEGs; augmentation throughput.

    python bench/throughput.py [--images 320] [--model tf_efficientnet_lite0] [--resolution 64] [--batch 64]
                               [--augment-only] [--device cuda]

0. augmentation: each policy at 224 px, batch 64, as the per-image loop of torchvision transforms
   autocls used before and as its batched kornia path, same threads, images/s;
1. raw: forward+backward+optimizer step of the model on random tensors (the model's limit), as
   many steps as the trainer's measured epochs take, median of three;
2. trainer: autocls's Trainer on a folder of 2400x1800 JPEGs (generated), timed from the second
   epoch on, as a search sees it (the images were decoded once into the store before), validation
   timed apart and left out: only training steps are compared with the raw steps; again with the
   store *staged* (each batch gathered into a reused host buffer and copied, as on a GPU whose
   memory the store does not fit);
3. without the decoded-image cache: the notebook pipeline, torchvision ImageFolder + DataLoader
   decoding and resizing every JPEG every epoch, same model, augmentation and optimizer;
4. the frozen-feature caches: the same trial (pretrained, no augmentation) with a quarter, half,
   three quarters or all of the stages frozen, cache on and off, on 1,024 images in memory;
prints a table and ``throughput ratio: X`` (trainer / raw).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torchvision.transforms import v2

import autocls.data.images
import autocls.train.trainer
from autocls.data.discover import discover
from autocls.data.images import ImageStore, build_store
from autocls.runtime.control import resolve_device
from autocls.runtime.threads import configure_threads
from autocls.train.backbones import create_classifier
from autocls.train.config import TrainConfig
from autocls.train.feeding import BatchFeeder, autocast, model_norm, model_to_device, normalise, to_device_layout
from autocls.train.foldparts import batch_plan
from autocls.train.optim import create_optimizer
from autocls.train.trainer import Trainer


def write_photos(root: Path, count: int, classes: int = 4) -> None:
    """Camera-sized JPEGs: smooth colour fields plus noise, so they compress like photos."""
    rng = np.random.default_rng(0)
    xs = np.mgrid[0:1800, 0:2400][1]
    for i in range(count):
        label = i % classes
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.stack([np.sin(xs / (200 + 50 * label) + c) * 80 + 128 for c in range(3)], axis=-1)
        noisy = base + rng.normal(0, 12, base.shape)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"IMG_{i:04d}.jpg", quality=90)


def augmentation_speeds(resolution: int = 224, batch: int = 64, batches: int = 4) -> dict[str, tuple[float, float]]:
    """Images/s of each policy: (per-image torchvision loop, batched kornia), after a warm-up batch."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from autocls.train.augment import create_augmentation
    from tests.helpers import TORCHVISION_POLICIES

    images = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8)
    speeds = {}
    for policy, steps in TORCHVISION_POLICIES.items():
        loop = v2.Compose(steps())
        batched = create_augmentation(policy)

        def per_image(transform: v2.Compose = loop) -> None:
            torch.stack([transform(image) for image in images]).float().div_(255)

        def whole_batch(augment: torch.nn.Module = batched) -> None:
            augment(images)

        speeds[policy] = tuple(_images_per_second(run, batch, batches) for run in (per_image, whole_batch))
    return speeds


def _images_per_second(run, batch: int, batches: int) -> float:
    run()  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        run()
    return batch * batches / (time.perf_counter() - start)


def raw_speed(
    config: TrainConfig, images: torch.Tensor, batch: int, device: torch.device, steps: int = 8, repeats: int = 3
) -> float:
    """The median of ``repeats`` timings of ``steps`` training steps, after warm-up: the model's limit.

    The model is built as the trainer builds it (same weights) and steps on a batch of the same
    images: a randomly initialised model on random tensors measured 10-20% slower per step than
    the trainer's (denormal floats in its gradients), which made the trainer look faster than its
    own model. On a GPU the steps run under the trainer's bf16 autocast and the clock is read
    after a synchronisation, so that queued kernels are counted."""
    model = model_to_device(create_classifier(config, 4), device)  # the trainer's memory format (channels-last)
    optimizer = create_optimizer(model, config)
    mean, std = model_norm(model, device)
    x = to_device_layout(normalise(images[:batch].to(device), mean, std))
    y = torch.randint(0, 4, (batch,), device=device)
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        with autocast(device):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(4):
        step()  # warm-up: oneDNN (cuDNN) picks its kernels on the first steps
    speeds = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize()
        speeds.append(batch * steps / (time.perf_counter() - start))
    return float(np.median(speeds))


def imagefolder_speed(root: Path, config: TrainConfig, batch: int, workers: int, device: torch.device) -> float:
    """Images/s of the second epoch of the usual notebook loop, decoding every file every epoch."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.Resize((config.resolution, config.resolution)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(15),
            transforms.ColorJitter(0.2, 0.2, 0.2),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(root, transform), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True
    )
    model = create_classifier(config, 4).to(device)
    optimizer = create_optimizer(model, config)
    model.train()
    for _ in range(2):
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            optimizer.zero_grad()
            with autocast(device):
                loss = torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            seen += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the last queued steps count too
    return seen / (time.perf_counter() - start)


class TimedTrainer(Trainer):
    """A Trainer that times its evaluations, so that training steps can be timed apart from them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.evaluations: list[float] = []

    def evaluate(self, *args, **kwargs):
        start = time.perf_counter()
        result = super().evaluate(*args, **kwargs)
        self.evaluations.append(time.perf_counter() - start)
        return result


def trainer_speed(
    config: TrainConfig,
    store_images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    cache: bool = True,
    staged: bool = False,
) -> float:
    """Images/s of the Trainer's training steps from the second epoch on (its evaluations timed apart).

    ``staged`` sends every batch through the feeder's host buffers and copies, the path a GPU takes
    for a store too large for its memory (page-locked, with a side stream, on a GPU)."""
    val = np.arange(0, len(labels), 20)  # a small validation set: the benchmark is about training
    train = np.setdiff1d(np.arange(len(labels)), val)
    store = ImageStore(store_images)  # a new store: no features cached by an earlier measurement
    trainer = TimedTrainer(config, 4, device, feature_cache=cache)
    feeder, place = autocls.train.trainer.BatchFeeder, autocls.data.images.place_images
    if staged:
        autocls.train.trainer.BatchFeeder = partial(BatchFeeder, staged=True)
        # the store stays in host memory, as one over its share of the GPU's memory does
        autocls.data.images.place_images = lambda images, device: images
    try:
        result = trainer.fit(store, labels, train, val)
    finally:
        autocls.train.trainer.BatchFeeder, autocls.data.images.place_images = feeder, place
    per_epoch = len(trainer.evaluations) // len(result.history)  # validation, and early stopping's monitor
    steady = result.history[1:]
    evaluating = sum(trainer.evaluations[per_epoch:])
    batch, steps = batch_plan(config.batch_size, len(train))
    return batch * steps * len(steady) / (sum(r.seconds for r in steady) - evaluating)


def frozen_speeds(config: TrainConfig, device: torch.device, images: int = 1024) -> dict[float, tuple[float, float]]:
    """Trainer speed (epochs 2+) with the frozen-feature cache off and on, per freeze fraction."""
    pixels = torch.randint(0, 256, (images, 3, config.resolution, config.resolution), dtype=torch.uint8)
    labels = torch.arange(images) % 4
    speeds = {}
    for freeze in (0.25, 0.5, 0.75, 1.0):
        probe = replace(config, augmentation="none", freeze=freeze, pretrained=True)
        speeds[freeze] = (
            trainer_speed(probe, pixels, labels, device, cache=False),
            trainer_speed(probe, pixels, labels, device),
        )
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--photos", type=Path, help="keep the generated JPEGs here and reuse them next time")
    parser.add_argument("--augment-only", action="store_true", help="only the augmentation table")
    parser.add_argument("--no-frozen", action="store_true", help="leave out the frozen-feature cache rows")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = parser.parse_args()
    device = resolve_device(args.device)
    configure_threads()
    augmentation = Table(title=f"augmentation at 224 px, batch 64, {torch.get_num_threads()} threads, images/s")
    for column in ("policy", "per-image loop (torchvision)", "batched (kornia)", "speed-up"):
        augmentation.add_column(column)
    for policy, (loop, batched) in augmentation_speeds().items():
        augmentation.add_row(policy, f"{loop:.0f}", f"{batched:.0f}", f"x{batched / loop:.2f}")
    Console().print(augmentation)
    if args.augment_only:
        return
    config = TrainConfig(
        backbone=args.model,
        resolution=args.resolution,
        batch_size=args.batch,
        epochs=args.epochs,
        patience=args.epochs,
        augmentation="light",
        optimizer="adamw",
        lr=1e-3,
        scheduler="cosine",
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = args.photos or Path(tmp) / "photos"
        start = time.perf_counter()
        if not root.is_dir():
            write_photos(root, args.images)
        written = time.perf_counter() - start
        data = discover(root)
        start = time.perf_counter()
        data, store = build_store(data, args.resolution)
        decode = time.perf_counter() - start
        labels = torch.as_tensor(data.labels)
        images = store.at(args.resolution)
        trainer = trainer_speed(config, images, labels, device)
        staged = trainer_speed(config, images, labels, device, staged=True)
        batch, steps = batch_plan(args.batch, len(labels) - len(labels[::20]))
        # as many steps as the trainer's
        raw = raw_speed(config, images, batch, device, steps=steps * (args.epochs - 1))
        notebook = imagefolder_speed(root, config, args.batch, torch.get_num_threads(), device)
    frozen = {} if args.no_frozen else frozen_speeds(config, device)
    title = f"{args.model}, {args.resolution} px, batch {args.batch}, {torch.get_num_threads()} threads, {device}"
    table = Table(title=title)
    for column in ("what", "images/s", "note"):
        table.add_column(column)
    table.add_row("raw forward+backward", f"{raw:.1f}", "the trainer's model and images, no augmentation")
    table.add_row("decode into the store", f"{len(data) / decode:.1f}", f"{args.images} 2400x1800 JPEGs, once")
    table.add_row("trainer, epochs 2+", f"{trainer:.1f}", "light augmentation, validation timed apart")
    table.add_row("trainer, store staged", f"{staged:.1f}", "the same through host buffers and copies (GPU path)")
    table.add_row(
        "ImageFolder + DataLoader", f"{notebook:.1f}", "no image cache: decode + resize every epoch (epoch 2)"
    )
    for freeze, (off, on) in frozen.items():
        table.add_row(f"{freeze:.0%} of stages frozen, cache off", f"{off:.1f}", "no augmentation, pretrained")
        table.add_row(f"{freeze:.0%} of stages frozen, cache on", f"{on:.1f}", f"speed-up x{on / off:.2f}")
    Console().print(table)
    print(f"(writing the JPEGs took {written:.0f}s)")
    print(f"decoded-image cache speed-up: x{trainer / notebook:.2f} (trainer vs ImageFolder + DataLoader)")
    print(f"throughput ratio: {trainer / raw:.2f}")


if __name__ == "__main__":
    main()
