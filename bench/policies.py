"""Every augmentation policy through a whole search on the digits example: completes, and how well.

    python bench/policies.py [--out bench-runs/policies]

For each policy (and RandomErasing with the light policy), one trial of a fixed EfficientNet-Lite0
recipe (ImageNet weights, 32 px, 4 epochs, 3 folds) on scikit-learn's digits (1,437 training
images), through ``autocls.search`` as a user runs it; prints the trial's state, CV accuracy and
seconds per policy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import autocls
from autocls.study.space import space_from_dict
from autocls.train.config import AUGMENTATIONS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from prepare_digits import write_digits  # noqa: E402  (an example script, not a package)

RECIPE = {
    "backbone": "tf_efficientnet_lite0",
    "pretrained": True,
    "resolution": 32,
    "epochs": 4,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 3e-3,
    "scheduler": "cosine",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-runs" / "policies")
    args = parser.parse_args()
    write_digits(args.out / "digits", holdout=0.2)
    rows = []
    variants = [(policy, 0.0) for policy in AUGMENTATIONS] + [("light", 0.25)]
    for policy, erasing in variants:
        name = f"{policy}-erase{erasing:g}"
        fixed = {**RECIPE, "augmentation": policy, "random_erasing": erasing}
        start = time.perf_counter()
        study = autocls.search(
            args.out / "digits" / "train",
            workdir=args.out / name,
            study_name=name,
            space=space_from_dict({"fixed": fixed}, name=name),
            trials=1,
            folds=3,
            warm_start=False,
            quiet=True,
        )
        trial = study.trials[0]
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        rows.append((policy, f"{erasing:g}", trial.state.name, value, f"{time.perf_counter() - start:.0f}"))
        print(rows[-1], flush=True)
    table = Table(title="digits, one Lite0 trial per policy (32 px, 4 epochs, 3 folds)")
    for column in ("policy", "random erasing", "trial", "CV accuracy", "seconds"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
