"""Fashion-MNIST from Debian's dataset-fashion-mnist: search, refit, evaluate on held-out images.

    apt-get install dataset-fashion-mnist
    python examples/fashion_mnist.py [--train 2000] [--test 2000] [--minutes 30] [--fast]

A stratified training subset and a disjoint held-out set from t10k, a time-bounded search of the
`fast` space, the best trial refit as a fold ensemble, then held-out accuracy. ``--fast`` is a
smoke run used by the tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare_fashion_mnist import write_fashion_mnist
from quickstart_digits import search_refit_evaluate


def run(workdir: Path, train: int, test: int, minutes: float, fast: bool) -> float:
    data = workdir / "fashion"
    write_fashion_mnist(data, train=train, test=test)
    return search_refit_evaluate(data, workdir / "runs", "fashion", fast, trials=1000, timeout=minutes * 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--fast", action="store_true", help="a smoke run for the tests")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    if args.fast:
        args.train, args.test = min(args.train, 200), min(args.test, 100)
    if args.workdir:
        run(args.workdir, args.train, args.test, args.minutes, args.fast)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), args.train, args.test, args.minutes, args.fast)


if __name__ == "__main__":
    main()
