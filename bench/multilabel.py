"""Multi-label search on two generated sets: held-out mAP, F1 at the chosen thresholds and at 0.5.

    python bench/multilabel.py [--budget-minutes 5] [--sets shapes digits] [--out /tmp/multilabel]

* shapes: 600 images (32 px) of 0-3 shapes in random colours; the labels are the shapes present;
* digits: 1,200 2x2 mosaics of scikit-learn's bundled handwritten digits (real images), 1-4 digits
  each, train and test mosaics built from disjoint digit images; the labels are the digits present.

Each set is written by ``examples/prepare_multilabel.py``, searched with autocls's defaults for the
budget (``autocls search train.csv --timeout``), refit, and evaluated on its held-out ``test.csv``.
The table shows held-out mAP, macro and micro F1 at the per-label thresholds refit chose on
out-of-fold probabilities and, for comparison, at 0.5, with the thresholds themselves.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import f1_score

import autocls
from autocls.data.multilabel import parse_label_sets
from autocls.report.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from prepare_multilabel import write_digit_mosaics, write_shapes

WRITERS = {"shapes": lambda out: write_shapes(out, 600), "digits": lambda out: write_digit_mosaics(out, 1200)}


def run_set(name: str, out: Path, minutes: float) -> dict:
    data = out / name
    counts = WRITERS[name](data)
    workdir = out / f"{name}-runs"
    start = time.perf_counter()
    study = autocls.search(data / "train.csv", trials=1000, timeout=minutes * 60, workdir=workdir, quiet=False)
    ensemble = autocls.refit(study, workdir=workdir, quiet=False)
    seconds = time.perf_counter() - start
    result = evaluate(ensemble, data / "test.csv")
    truth = parse_label_sets(list(result.predictions["true_label"]), ensemble.class_names)
    probs = result.predictions[[f"prob_{n}" for n in ensemble.class_names]].to_numpy()
    states = [t.state.name for t in study.trials]
    return {
        "set": name,
        "images": f"{counts['train']} / {counts['test']}",
        "labels": len(ensemble.class_names),
        "trials": f"{states.count('COMPLETE')} / {states.count('PRUNED')} / {len(states)}",
        "minutes": seconds / 60,
        "mAP": result.scores["mAP"],
        "macro_f1": result.scores["macro_f1"],
        "micro_f1": result.scores["micro_f1"],
        "macro_f1_at_half": f1_score(truth, probs >= 0.5, average="macro", zero_division=0),
        "thresholds": ", ".join(f"{n} {t:.2f}" for n, t in zip(ensemble.class_names, ensemble.thresholds)),
        "members": len(ensemble.members),
        "oof_mAP": ensemble.manifest.scores.oof_score,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=5.0)
    parser.add_argument("--sets", nargs="+", choices=list(WRITERS), default=list(WRITERS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/autocls-multilabel"))
    args = parser.parse_args()
    rows = [run_set(name, args.out, args.budget_minutes) for name in args.sets]
    table = Table(title=f"multi-label search, {args.budget_minutes:g}-minute budget, held-out images")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float | np.floating) else str(v) for v in row.values()))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
