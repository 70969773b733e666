"""Pruned vs unpruned search over the same trials: how much time does pruning save, and is the best kept?

    python bench/pruning.py DATA [--trials 10] [--folds 5] [--space fast] [--epochs 4]

Samples ``--trials`` configurations from the space once (random sampler, fixed seed), then runs
them as three studies in this process, one after the other: without pruning, with autocls's
FoldAwarePruner, and with Optuna's WilcoxonPruner (built for per-instance scores such as k-fold
scores) between folds, after the same median rule inside the first fold. Same configurations,
folds and seeds, so a trial that is not pruned reaches the same score in each. Prints a table per
trial, the best score each reached and the time it took.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time
from pathlib import Path

import optuna
from rich.console import Console
from rich.table import Table

from autocls.data.discover import DataSpec
from autocls.runtime.control import resolve_device
from autocls.runtime.logs import setup_logging
from autocls.runtime.threads import configure_threads
from autocls.study import driver as study_module
from autocls.study.driver import run_search
from autocls.study.pruning import FOLD_STEP, FoldAwarePruner
from autocls.study.setup import SearchRequest, narrow_to_available_weights
from autocls.study.space import SearchSpace, load_space, space_from_dict


def sample_configs(space: SearchSpace, trials: int, seed: int) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(trials):
        trial = study.ask()
        space.sample(trial)
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)
    return configs


def per_fold(trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """A copy of ``trial`` whose intermediate values are its fold scores, one per fold (step f),
    recovered from the running fold means autocls reports at steps FOLD_STEP + f."""
    means = sorted((s - FOLD_STEP, v) for s, v in trial.intermediate_values.items() if s >= FOLD_STEP)
    view = copy.copy(trial)
    view.intermediate_values = {f: (f + 1) * m - f * (means[f - 1][1] if f else 0.0) for f, m in means}
    return view


class FoldView:
    """The study as WilcoxonPruner should see it: the best trial with per-fold intermediate values."""

    def __init__(self, study: optuna.Study) -> None:
        self.direction = study.direction
        self.best_trial = per_fold(study.best_trial)


class MedianThenWilcoxon(optuna.pruners.BasePruner):
    """autocls's median rule inside the first fold; Optuna's WilcoxonPruner on fold scores between folds."""

    def __init__(self) -> None:
        self.epochs = FoldAwarePruner().epoch_pruner
        self.folds = optuna.pruners.WilcoxonPruner(p_threshold=0.1)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if step < FOLD_STEP:
            return bool(self.epochs.prune(study, trial))
        try:
            view = FoldView(study)
        except ValueError:  # no completed trial yet
            return False
        return self.folds.prune(view, per_fold(trial))


def run(data: Path, configs: list[dict], space: SearchSpace, folds: int, pruner: str, workdir: Path):
    storage = f"sqlite:///{workdir / pruner}.db"
    study = optuna.create_study(study_name="bench", storage=storage, direction="maximize")
    for params in configs:
        study.enqueue_trial(params)
    request = SearchRequest(
        DataSpec.of(data),
        workdir=workdir,
        storage=storage,
        study_name="bench",
        space=space,
        trials=len(configs),
        folds=folds,
        pruning=pruner != "none",
    )
    start = time.perf_counter()
    if pruner == "wilcoxon":
        with patched_pruner(MedianThenWilcoxon()):
            run_search(request, resolve_device("auto"))
    else:
        run_search(request, resolve_device("auto"))
    return optuna.load_study(study_name="bench", storage=storage).trials, time.perf_counter() - start


@contextlib.contextmanager
def patched_pruner(pruner: optuna.pruners.BasePruner):
    """Run the study with ``pruner`` in place of autocls's (the driver builds its pruner by name)."""
    original = study_module.make_pruner
    study_module.make_pruner = lambda enabled=True: pruner
    try:
        yield
    finally:
        study_module.make_pruner = original


PRUNERS = ("none", "foldaware", "wilcoxon")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--space", default="fast")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    configure_threads()
    setup_logging(quiet=True)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        spec = load_space(args.space).to_dict()
        spec["fixed"]["epochs"] = args.epochs
        space = narrow_to_available_weights(space_from_dict(spec, name=args.space), None)
        configs = sample_configs(space, args.trials, args.seed)
        runs = {name: run(args.data, configs, space, args.folds, name, workdir) for name in PRUNERS}

    title = f"pruning on {args.data} ({args.trials} trials, {args.folds} folds, {args.epochs} epochs)"
    table = Table(title=title)
    table.add_column("trial")
    for name in PRUNERS:
        table.add_column(f"{name}: state")
        table.add_column("score")
        table.add_column("s")
    for number in range(args.trials):
        row = [str(number)]
        for trials, _ in runs.values():
            t = trials[number]
            value = f"{t.value:.4f}" if t.value is not None else "-"
            row += [t.state.name, value, f"{t.duration.total_seconds():.0f}"]
        table.add_row(*row)
    console = Console(width=160)
    console.print(table)
    summary = Table(title="each pruner: the best score it kept, and what it cost")
    for column in ("pruner", "best score", "wall time (s)", "time to its best (s)", "pruned", "time / unpruned"):
        summary.add_column(column)
    unpruned_time = runs["none"][1]
    for name, (trials, seconds) in runs.items():
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(done, key=lambda t: t.value)
        to_best = sum(t.duration.total_seconds() for t in trials if t.number <= best.number)
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
        row = (
            name,
            f"{best.value:.4f}",
            f"{seconds:.0f}",
            f"{to_best:.0f}",
            str(pruned),
            f"{seconds / unpruned_time:.2f}",
        )
        summary.add_row(*row)
    console.print(summary)


if __name__ == "__main__":
    main()
