"""Training and inference speed on this machine's CPU in the default (NCHW) and channels-last memory
formats: does channels-last, which autocls uses on a GPU, pay on a CPU too?

    python bench/memory_format.py [--models tf_efficientnet_lite0,tf_efficientnet_lite1] [--resolutions 64,96]
                                  [--batch 64] [--steps 8] [--repeats 3]

For each model and resolution: forward+backward+AdamW steps (the trainer's step, fp32) and
inference forwards on one batch, the two formats alternated ``--repeats`` times; prints images/s
(median) and the channels-last / default ratio. Pretrained weights where autocls finds them
locally (a randomly initialised model steps slower: denormal floats in its gradients).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from autocls.runtime.threads import configure_threads
from autocls.train.backbones import check_weights, create_classifier
from autocls.train.config import TrainConfig
from autocls.train.optim import create_optimizer

FORMATS = {"default": torch.contiguous_format, "channels_last": torch.channels_last}


def speeds(name: str, resolution: int, batch: int, steps: int, repeats: int) -> dict[str, tuple[float, float]]:
    """images/s of (training steps, inference forwards) per memory format, medians over ``repeats``."""
    pretrained = check_weights(name, None) is None
    config = TrainConfig(backbone=name, pretrained=pretrained, resolution=resolution, batch_size=batch)
    models = {fmt: create_classifier(config, 10).to(memory_format=f) for fmt, f in FORMATS.items()}
    optimizers = {fmt: create_optimizer(models[fmt], config) for fmt in FORMATS}
    x = torch.randn(batch, 3, resolution, resolution)
    y = torch.randint(0, 10, (batch,))
    inputs = {fmt: x.contiguous(memory_format=f) for fmt, f in FORMATS.items()}
    train: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    infer: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    for _ in range(repeats):
        for fmt in FORMATS:  # alternated: the machine's drift falls on both alike
            model, optimizer = models[fmt].train(), optimizers[fmt]
            for i in range(steps + 1):
                if i == 1:  # the first step warms up the allocator and oneDNN's kernel choice
                    start = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(inputs[fmt]), y).backward()
                optimizer.step()
            train[fmt].append(batch * steps / (time.perf_counter() - start))
            model.eval()
            with torch.inference_mode():
                model(inputs[fmt])
                start = time.perf_counter()
                for _ in range(steps):
                    model(inputs[fmt])
            infer[fmt].append(batch * steps / (time.perf_counter() - start))
    return {fmt: (statistics.median(train[fmt]), statistics.median(infer[fmt])) for fmt in FORMATS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tf_efficientnet_lite0,tf_efficientnet_lite1")
    parser.add_argument("--resolutions", default="64,96")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_threads()
    threads = torch.get_num_threads()
    table = Table(title=f"memory format on CPU, {threads} threads, batch {args.batch}, fp32 (images/s, median)")
    columns = ("model", "px", "train default", "train channels-last", "ratio", "infer default", "infer c-l", "ratio")
    for column in columns:
        table.add_column(column)
    for name in args.models.split(","):
        for resolution in (int(r) for r in args.resolutions.split(",")):
            got = speeds(name, resolution, args.batch, args.steps, args.repeats)
            (td, id_), (tc, ic) = got["default"], got["channels_last"]
            train = (f"{td:.1f}", f"{tc:.1f}", f"x{tc / td:.2f}")
            table.add_row(name, str(resolution), *train, f"{id_:.1f}", f"{ic:.1f}", f"x{ic / id_:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
