"""Pruned vs unpruned search over the same trials: how much time does pruning save, and is the best kept?

    python bench/pruning.py DATA [--trials 10] [--folds 3] [--space fast] [--epochs 4]

Samples ``--trials`` configurations from the space once (random sampler, fixed seed), then runs
them as two studies in this process, one after the other: without pruning, and with autocls's
FoldAwarePruner. Same configurations, folds and seeds, so a trial that is not pruned reaches the
same score in both. Prints a table per trial and the time ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
from rich.console import Console
from rich.table import Table

from autocls.data import DataSpec
from autocls.progress import setup_logging
from autocls.runtime import resolve_device
from autocls.space import SearchSpace, load_space, space_from_dict
from autocls.study import run_search
from autocls.studysetup import SearchRequest, narrow_to_available_weights
from autocls.threads import configure_threads


def sample_configs(space: SearchSpace, trials: int, seed: int) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(trials):
        trial = study.ask()
        space.sample(trial)
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)
    return configs


def run(data: Path, configs: list[dict], space: SearchSpace, folds: int, pruning: bool, workdir: Path):
    storage = f"sqlite:///{workdir / ('pruned' if pruning else 'unpruned')}.db"
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
        pruning=pruning,
    )
    start = time.perf_counter()
    run_search(request, resolve_device("auto"))
    return optuna.load_study(study_name="bench", storage=storage).trials, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--folds", type=int, default=3)
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
        unpruned, unpruned_time = run(args.data, configs, space, args.folds, False, workdir)
        pruned, pruned_time = run(args.data, configs, space, args.folds, True, workdir)

    table = Table(title=f"pruning on {args.data} ({args.trials} trials, {args.folds} folds, {args.epochs} epochs)")
    for column in ("trial", "unpruned score", "unpruned s", "pruned state", "pruned score", "pruned s"):
        table.add_column(column)
    for a, b in zip(unpruned, pruned, strict=True):
        table.add_row(
            str(a.number),
            f"{a.value:.4f}",
            f"{a.duration.total_seconds():.0f}",
            b.state.name,
            f"{b.value:.4f}" if b.value is not None else "-",
            f"{b.duration.total_seconds():.0f}",
        )
    console = Console()
    console.print(table)
    best_unpruned = max(t.value for t in unpruned if t.value is not None)
    done = [t for t in pruned if t.state == optuna.trial.TrialState.COMPLETE]
    best_pruned = max(t.value for t in done)
    best_trial = max(done, key=lambda t: t.value)
    to_best = sum(t.duration.total_seconds() for t in pruned if t.number <= best_trial.number)
    console.print(f"best score: unpruned {best_unpruned:.4f}, pruned {best_pruned:.4f}")
    console.print(f"wall time: unpruned {unpruned_time:.0f}s, pruned {pruned_time:.0f}s")
    console.print(f"pruned/unpruned time ratio (all trials): {pruned_time / unpruned_time:.2f}")
    console.print(f"pruned time to its best / unpruned time: {to_best / unpruned_time:.2f}")


if __name__ == "__main__":
    main()
