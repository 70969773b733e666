"""A saved ensemble against the one student distilled from it: held-out accuracy, calibration, time.

    python bench/distill.py MODEL_DIR TEST_DIR [--label-weights 0 0.5] [--backbone NAME] [--epochs N]

For each label weight, ``autocls distill MODEL_DIR`` (on the data the model was trained on) writes a
student next to the bench's output, then teacher and students are scored on the held-out images of
``TEST_DIR`` (a folder of class folders): accuracy, expected calibration error, and prediction time
per image, batched (as ``autocls predict`` runs) and at batch 1 (a served request), on this CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from autocls.data.images import decode_images
from autocls.final.distill import distill
from autocls.model.ensemble import Ensemble
from autocls.report.evaluate import evaluate
from autocls.runtime.threads import configure_threads
from autocls.study.progress import Reporter

LATENCY_IMAGES = 50


def times_ms(model: Ensemble, images: torch.Tensor) -> tuple[float, float]:
    """(batched ms per image, batch-1 ms per image), after one warm-up call each."""
    model.predict_images(images[:8])
    start = time.perf_counter()
    model.predict_images(images)
    batched = 1000 * (time.perf_counter() - start) / len(images)
    single = images[:LATENCY_IMAGES]
    model.predict_images(single[:1])
    start = time.perf_counter()
    for i in range(len(single)):
        model.predict_images(single[i : i + 1])
    return batched, 1000 * (time.perf_counter() - start) / len(single)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--label-weights", type=float, nargs="+", default=[0.0])
    parser.add_argument("--backbone")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--out", type=Path, help="where students are written (default: beside MODEL)")
    args = parser.parse_args()
    configure_threads()
    out = args.out or args.model.parent
    teacher = Ensemble.load(args.model, "cpu")
    paths = sorted(p for p in args.test.rglob("*") if p.is_file())
    images, _, _ = decode_images(paths, teacher.decode_size)

    rows = []

    def score(name: str, model: Ensemble, seconds: float | None) -> None:
        result = evaluate(model, args.test)
        batched, single = times_ms(model, images)
        folds = sum(len(m.models) for m in model.members) * (1 + len(model.tta))
        rows.append(
            (
                name,
                f"{result.accuracy:.4f}",
                f"{result.ece:.4f}",
                f"{folds}",
                f"{batched:.2f}",
                f"{single:.2f}",
                f"{seconds:.0f} s" if seconds is not None else "",
            )
        )
        print(rows[-1], flush=True)

    score(f"teacher ({len(teacher.members)} members)", teacher, None)
    for weight in args.label_weights:
        target = out / f"student-w{weight:g}"
        result = distill(
            args.model,
            target,
            backbone=args.backbone,
            epochs=args.epochs,
            label_weight=weight,
            device="cpu",
            reporter=Reporter(),
            overwrite=True,
        )
        name = f"student {result.student.config.backbone}, label weight {weight:g}"
        score(name, Ensemble.load(target, "cpu"), result.seconds)

    table = Table(title=f"{args.model} on {len(paths)} held-out images of {args.test}")
    columns = ("model", "held-out accuracy", "ECE", "forward passes", "ms/image batched", "ms/image batch 1", "distill")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)
    print("| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
