"""autocls against the hand-tuned recipe and random search on Fashion-MNIST, one time budget each.

    apt-get install dataset-fashion-mnist
    python bench/fashion_mnist.py [--budget-minutes 30] [--train 2000] [--test 2000] [--arms a0bc] [--seed 0]
                                  [--speeds F]

Runs, in one process and one after another, on a stratified training subset and a disjoint
held-out set (t10k):

(a) autocls with its defaults: ``search --timeout`` then ``refit`` (the model it recommends: an
    ensemble selected across the kept trials, or the best trial's), together within the budget;
(0) the first warm-start recipe alone, as (a) sizes it for the same budget: ``search --trials 1``
    then ``refit --best`` (its k-fold ensemble);
(1) the first warm-start recipe on one split (trained on 4/5 of the images, checked on 1/5), sized
    by autocls for the same budget: the best a single recipe does in the time, the reference for
    short budgets;
(b) the recipe people write by hand: EfficientNet-Lite0 (ImageNet), Adam lr 1e-4,
    ReduceLROnPlateau, flip/rotation/colour jitter, a class-weighted sampler, 5-fold ensemble;
(c) random search over the same space, without pruning or warm start, same budget, then refit.

``--seed`` draws another stratified subset of both sets.

Prints a table of held-out accuracy, wall time and trials, and writes it as Markdown (with the
date and the machine) to ``--out``/results.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from rich.console import Console
from rich.table import Table

import autocls
from autocls.report.evaluate import evaluate
from autocls.runtime.errors import AutoclsError
from autocls.storage.workdir import Workdir
from autocls.study.space import space_from_dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from prepare_fashion_mnist import write_fashion_mnist  # noqa: E402  (an example script, not a package)

REFIT_RESERVE = 60.0  # seconds of the budget kept for refit --best (it reuses the search's fold models)

# (b): what a notebook does, at the resolution this machine affords (224 px trains at a few images a second)
HAND_RECIPE = {
    "backbone": "tf_efficientnet_lite0",
    "pretrained": True,
    "resolution": 64,
    "freeze": 0.0,
    "optimizer": "adam",
    "lr": 1e-4,
    "weight_decay": 0.0,
    "scheduler": "plateau",
    "augmentation": "light",
    "imbalance": "sampler",
    "batch_size": 32,
    "epochs": 10,
    "patience": 3,
}


@dataclass
class ArmResult:
    name: str
    held_out: float
    cv: float
    seconds: float
    trials: str
    winner: str  # the best trial and, per fold, epochs run / epoch kept (1-based)
    oof: float  # the delivered model's out-of-fold accuracy
    members: str  # the delivered model's trials and weights, and its test-time views


def trial_counts(study: optuna.Study) -> str:
    skipped = sum("skipped" in t.user_attrs for t in study.trials)  # FAIL now, PRUNED before
    states = [t.state.name for t in study.trials if "skipped" not in t.user_attrs]
    parts = [
        f"{states.count('COMPLETE')} complete",
        f"{states.count('PRUNED')} pruned",
        f"{skipped} skipped",
        f"{states.count('FAIL')} failed",
    ]
    return ", ".join(p for p in parts if not p.startswith("0 ") or p.endswith("complete"))


SPEEDS: Path | None = None  # --speeds: measured training speeds every arm starts from


def run_arm(name: str, data: Path, test: Path, workdir: Path, best: bool = False, **search: object) -> ArmResult:
    print(f"\n=== {name} ===", flush=True)
    if SPEEDS is not None:
        # the warm-start recipes are sized from two probe steps a model; their noise can flip a
        # recipe between 4 and 8 epochs, so runs to be compared start from the same measurements
        speeds = Workdir(workdir).speeds
        speeds.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SPEEDS, speeds)
    start = time.perf_counter()
    study = autocls.search(data, workdir=workdir, study_name="bench", quiet=False, **search)
    ensemble = autocls.refit(study, workdir=workdir, quiet=False, best=best)
    seconds = time.perf_counter() - start
    result = evaluate(ensemble, test)
    print(f"{name}: held-out accuracy {result.accuracy:.4f} after {seconds:.0f}s", flush=True)
    if "portfolio_probes" in study.user_attrs:  # which recipe the first rung put first (autocls.study.halving)
        print(f"{name}: portfolio probes {study.user_attrs['portfolio_probes']}", flush=True)
    winner = winning_trial_epochs(study.best_trial)
    print(f"{name}: best trial {winner}", flush=True)
    manifest = ensemble.manifest
    described = " + ".join(f"#{m.trial} x{m.weight:.2f}" for m in manifest.members)
    described += "".join(f" +{view}" for view in manifest.tta)
    oof = manifest.scores.oof_accuracy if manifest.scores.oof_accuracy is not None else float("nan")
    print(f"{name}: delivered {described}, out-of-fold accuracy {oof:.4f}", flush=True)
    return ArmResult(name, result.accuracy, study.best_value, seconds, trial_counts(study), winner, oof, described)


def one_split_arm(data: Path, test: Path, workdir: Path, **search: object) -> ArmResult:
    """Arm (1): the study's plan forced to one fold of five (a hold-out split); the first recipe is
    then sized to its share of the budget on that one split."""
    from autocls.study import setup as studysetup

    planned = studysetup.folds_to_train
    studysetup.folds_to_train = lambda *args, **kwargs: 1
    try:
        return run_arm("(a1) first recipe, one split", data, test, workdir, best=True, **search)
    finally:
        studysetup.folds_to_train = planned


def winning_trial_epochs(trial: optuna.trial.FrozenTrial) -> str:
    """``#N: run/kept ...``: each fold's epochs run and the epoch whose weights were kept (1-based)."""
    folds = trial.user_attrs.get("folds", [])
    epochs = " ".join(f"{f['epochs_run']}/{f['best_epoch'] + 1}" for f in folds)
    return f"#{trial.number} {epochs}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--arms", default="a0bc", help="which of a, 0, 1, b, c to run (default: a0bc)")
    parser.add_argument("--seed", type=int, default=0, help="which stratified subset of both sets")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-runs" / "fashion")
    parser.add_argument(
        "--speeds",
        type=Path,
        help="a speeds.json from an earlier run's WORKDIR/cache: same cost estimates, same sizing",
    )
    args = parser.parse_args()
    global SPEEDS
    SPEEDS = args.speeds
    budget = args.budget_minutes * 60
    data = args.out / f"data-{args.seed}-{args.train}-{args.test}"
    if not (data / "train").is_dir():
        write_fashion_mnist(data, train=args.train, test=args.test, seed=args.seed)
    train, test = data / "train", data / "test"
    runs = args.out / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    search_budget = {"timeout": budget - REFIT_RESERVE, "trials": 1000}
    arms = {
        "a": lambda: run_arm("(a) autocls defaults", train, test, runs / "a", **search_budget),
        "0": lambda: run_arm(
            "(a0) first recipe alone", train, test, runs / "a0", best=True, timeout=budget - REFIT_RESERVE, trials=1
        ),
        "1": lambda: one_split_arm(train, test, runs / "a1", timeout=budget - REFIT_RESERVE, trials=1),
        "b": lambda: run_arm(
            "(b) hand recipe",
            train,
            test,
            runs / "b",
            space=space_from_dict({"fixed": HAND_RECIPE}, name="hand"),
            trials=1,
            warm_start=False,
            best=True,
        ),
        "c": lambda: run_arm(
            "(c) random search, no pruning",
            train,
            test,
            runs / "c",
            sampler="random",
            pruning=False,
            warm_start=False,
            **search_budget,
        ),
    }
    results = []
    for key in args.arms:
        try:
            results.append(arms[key]())
        except AutoclsError as error:  # e.g. a budget too short for any trial: the other arms still run
            print(f"arm {key}: no model: {error}", flush=True)
    if not results:
        sys.exit("fashion_mnist: no arm delivered a model")

    title = (
        f"Fashion-MNIST subset {args.seed}, {args.train} training / {args.test} held-out images, "
        f"budget {args.budget_minutes:g} min; "
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
    )
    columns = (
        "arm",
        "held-out accuracy",
        "best CV accuracy",
        "CV - held-out",
        "wall time",
        "trials",
        "best trial: epochs run/kept per fold",
        "delivered model (OOF accuracy)",
    )
    rows = [
        (
            r.name,
            f"{r.held_out:.4f}",
            f"{r.cv:.4f}",
            f"{r.cv - r.held_out:+.4f}",
            f"{r.seconds / 60:.1f} min",
            r.trials,
            r.winner,
            f"{r.members} ({r.oof:.4f})",
        )
        for r in results
    ]
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=220).print(table)
    markdown = [title, "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    markdown += ["| " + " | ".join(row) + " |" for row in rows]
    (runs / "results.md").write_text("\n".join(markdown) + "\n")
    print(f"table written to {runs / 'results.md'}")


if __name__ == "__main__":
    main()
