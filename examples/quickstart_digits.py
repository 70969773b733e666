"""Quickstart: scikit-learn's bundled digits, end to end, from Python, offline.

    python examples/quickstart_digits.py [--fast]

Writes the digits as an image folder, searches the `fast` space, refits the best trial as a fold
ensemble and evaluates it on the held-out digits. ``--fast`` is a smoke run (a few hundred images,
one trial, one epoch) used by the tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare_digits import write_digits

import autocls
from autocls.report.evaluate import evaluate
from autocls.study.space import load_space, space_from_dict


def smoke_space():
    """The fast space cut down to one epoch at 32 px: for tests, not for results."""
    spec = load_space("fast").to_dict()
    spec["fixed"].update(epochs=1, patience=1)
    spec["params"]["resolution"] = {"choices": [32]}
    spec["params"]["backbone"] = {"choices": ["tf_efficientnet_lite0"]}
    return space_from_dict(spec, name="fast-smoke")


def run(workdir: Path, fast: bool) -> float:
    data = workdir / "digits"
    write_digits(data, holdout=0.2, limit=300 if fast else None)
    return search_refit_evaluate(data, workdir / "runs", "digits", fast, trials=8)


def search_refit_evaluate(
    data: Path, workdir: Path, name: str, fast: bool, trials: int, timeout: float | None = None
) -> float:
    """Search on ``data/train``, refit the best trial, return the accuracy on ``data/test``."""
    study = autocls.search(
        data / "train",
        trials=1 if fast else trials,
        folds=2 if fast else 5,
        space=smoke_space() if fast else "fast",
        timeout=None if fast else timeout,
        workdir=workdir,
        study_name=name,
        quiet=fast,
    )
    print(f"best trial {study.best_trial.number}: cv accuracy {study.best_value:.4f}")
    ensemble = autocls.refit(study, workdir=workdir)
    result = evaluate(ensemble, data / "test")
    print(f"held-out accuracy {result.accuracy:.4f} on {len(result.predictions)} images")
    return result.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a smoke run for the tests")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    if args.workdir:
        run(args.workdir, args.fast)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), args.fast)


if __name__ == "__main__":
    main()
