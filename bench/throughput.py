"""Trainer throughput against the model's own limit, on camera-sized JPEGs.

    python bench/throughput.py [--images 320] [--model tf_efficientnet_lite0] [--resolution 64] [--batch 64]

1. raw: forward+backward+optimizer step of the model on random tensors (the model's limit);
2. trainer: autocls's Trainer on a folder of 2400x1800 JPEGs (generated), timed from the second
   epoch on, as a search sees it (the first decodes the images into the store);
prints a table and ``throughput ratio: X`` (trainer / raw).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from autocls.config import TrainConfig
from autocls.data import discover
from autocls.images import build_store
from autocls.trainer import Trainer, configure_threads, create_optimizer


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


def raw_speed(config: TrainConfig, batch: int, steps: int = 12) -> float:
    model = timm.create_model(config.backbone, num_classes=4)
    optimizer = create_optimizer(model, config)
    x = torch.randn(batch, 3, config.resolution, config.resolution)
    y = torch.randint(0, 4, (batch,))
    model.train()
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()  # two warm-up steps
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    configure_threads()
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
    raw = raw_speed(config, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        start = time.perf_counter()
        write_photos(root, args.images)
        written = time.perf_counter() - start
        data = discover(root)
        start = time.perf_counter()
        data, store = build_store(data, args.resolution)
        decode = time.perf_counter() - start
        labels = torch.as_tensor(data.labels)
        val = np.arange(0, len(data), 20)  # a small validation set: the benchmark is about training
        train = np.setdiff1d(np.arange(len(data)), val)
        result = Trainer(config, len(data.class_names), torch.device("cpu")).fit(
            store.at(args.resolution), labels, train, val
        )
    steady = result.history[1:]
    trained = (len(train) // args.batch) * args.batch
    trainer = trained * len(steady) / sum(r.seconds for r in steady)
    table = Table(title=f"{args.model}, {args.resolution} px, batch {args.batch}, {torch.get_num_threads()} threads")
    for column in ("what", "images/s", "note"):
        table.add_column(column)
    table.add_row("raw forward+backward", f"{raw:.1f}", "random tensors")
    table.add_row("decode into the store", f"{len(data) / decode:.1f}", f"{args.images} 2400x1800 JPEGs, once")
    table.add_row("trainer, epochs 2+", f"{trainer:.1f}", "light augmentation, validation included")
    Console().print(table)
    print(f"(writing the JPEGs took {written:.0f}s)")
    print(f"throughput ratio: {trainer / raw:.2f}")


if __name__ == "__main__":
    main()
