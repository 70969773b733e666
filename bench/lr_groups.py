"""Per-group learning rates of a layer-decayed ViT recipe, as the trainer's optimizer and schedule set them.

    python bench/lr_groups.py [--backbone vit_small_patch16_224] [--scheduler cosine] [--layer-decay 0.75]

Builds the model (random weights: only its parameter groups matter), the optimizer and the schedule
exactly as a trial does, steps through ``--epochs`` epochs of ``--steps`` updates, and prints each
group's lr at a few updates next to the intended ``lr * lr_scale * schedule(t)``: the ratio column
is 1.000 when layer decay is applied once.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from autocls.train.backbones import create_classifier
from autocls.train.config import TrainConfig
from autocls.train.optim import create_optimizer, create_scheduler


def group_lrs(config: TrainConfig, steps: int) -> list[tuple[int, list[float], list[float], list[float]]]:
    """(update, lr of each group, its lr_scale, the undecayed schedule's lr) at a few updates."""
    plain = TrainConfig(**{**config.to_dict(), "layer_decay": 1.0})
    runs = []
    for cfg in (config, plain):
        model = create_classifier(cfg, 10, load_weights=False)
        optimizer = create_optimizer(model, cfg)
        runs.append((optimizer, create_scheduler(optimizer, cfg, steps)))
    total = config.epochs * steps
    shown = sorted({1, steps, total // 2, total})
    rows = []
    for update in range(1, total + 1):
        for _, scheduler in runs:
            scheduler.step_update(num_updates=update)
            if update % steps == 0:
                scheduler.step(update // steps, 1.0)
        if update in shown:
            decayed, undecayed = runs[0][0].param_groups, runs[1][0].param_groups
            rows.append(
                (
                    update,
                    [g["lr"] for g in decayed],
                    [g.get("lr_scale", 1.0) for g in decayed],
                    [undecayed[0]["lr"]] * len(decayed),
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_small_patch16_224")
    parser.add_argument("--scheduler", default="cosine")
    parser.add_argument("--layer-decay", type=float, default=0.75)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    config = TrainConfig(
        backbone=args.backbone,
        pretrained=False,
        resolution=224,
        lr=args.lr,
        layer_decay=args.layer_decay,
        scheduler=args.scheduler,
        warmup_epochs=1,
        epochs=args.epochs,
    )
    table = Table(title=f"{args.backbone}, {args.scheduler}, layer decay {args.layer_decay}, lr {args.lr:g}")
    for column in ("update", "group", "lr_scale", "lr", "lr * lr_scale * schedule(t)", "ratio"):
        table.add_column(column, justify="right")
    for update, lrs, scales, schedule in group_lrs(config, args.steps):
        # the deepest group, one in the middle, the head: decay grows towards the input
        for group in sorted({0, len(lrs) // 2, len(lrs) - 1}):
            intended = schedule[group] * scales[group]
            table.add_row(
                str(update),
                str(group),
                f"{scales[group]:.4f}",
                f"{lrs[group]:.3e}",
                f"{intended:.3e}",
                f"{lrs[group] / intended:.3f}",
            )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
