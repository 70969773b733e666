"""One trial's time alone and beside a busy loop on every core, per threading setting.

    python bench/contention.py [--images 400] [--epochs 2]

Each measurement runs one fold of a fixed EfficientNet-Lite0 configuration (64 px, random
weights, no augmentation) in a fresh process, so that OpenMP reads its settings at start-up: once
alone, once while ``os.cpu_count()`` processes each spin a busy loop (another program on the same
cores), and once with the loops starting a few seconds into the trial (a program started
mid-search). Prints the seconds of each, the thread count the trial ended with, and the slowdown
the busy loops cause.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

TRIAL = """
import time, numpy as np, torch
from autocls.train.config import TrainConfig
from autocls.data.images import ImageStore
from autocls.runtime.threads import configure_threads
from autocls.train.trainer import Trainer
configure_threads()
n, epochs = {images}, {epochs}
store = ImageStore(torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8))
labels = torch.arange(n) % 4
config = TrainConfig(backbone="tf_efficientnet_lite0", pretrained=False, resolution=64, augmentation="none",
                     batch_size=32, epochs=epochs)
start = time.perf_counter()
Trainer(config, 4, torch.device("cpu")).fit(store, labels, np.arange(n)[n // 5:], np.arange(n)[: n // 5])
print(time.perf_counter() - start, torch.get_num_threads())
"""

SETTINGS = {
    "default (adapts to the load)": {},
    "AUTOCLS_THREADS=<all CPUs> (the old default)": {"AUTOCLS_THREADS": str(len(os.sched_getaffinity(0)))},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "AUTOCLS_THREADS=1": {"AUTOCLS_THREADS": "1"},
}
LATE_START_SECONDS = 3.0


def spin(stop: multiprocessing.Event) -> None:
    while not stop.is_set():
        pass


def run_trial(env: dict[str, str], images: int, epochs: int, loops_after: float | None = None) -> tuple[float, int]:
    """Seconds of one fold and the thread count it ended with; with ``loops_after``, a busy loop on
    every core starts that many seconds after the trial (another program starting mid-search)."""
    code = TRIAL.format(images=images, epochs=epochs)
    trial = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    with busy_loops(loops_after):
        out, _ = trial.communicate()
    if trial.returncode:
        raise SystemExit(f"the trial failed with exit code {trial.returncode}")
    seconds, threads = out.split()
    return float(seconds), int(threads)


@contextlib.contextmanager
def busy_loops(after: float | None):
    if after is None:
        yield
        return
    time.sleep(after)
    stop = multiprocessing.Event()
    loops = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(os.cpu_count() or 1)]
    for loop in loops:
        loop.start()
    try:
        yield
    finally:
        stop.set()
        for loop in loops:
            loop.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    table = Table(title=f"one fold of {args.images} images, {args.epochs} epochs, {os.cpu_count()} cores")
    late = f"loops start {LATE_START_SECONDS:.0f} s in (s)"
    columns = ("setting", "alone (s)", "beside busy loops (s)", "slowdown", late)
    for column in columns:
        table.add_column(column)
    for name, env in SETTINGS.items():
        alone, threads = run_trial(env, args.images, args.epochs)
        with busy_loops(0.0):
            time.sleep(0.5)  # let the loops take the cores before the trial starts
            busy, busy_threads = run_trial(env, args.images, args.epochs)
        late, late_threads = run_trial(env, args.images, args.epochs, loops_after=LATE_START_SECONDS)
        table.add_row(
            name,
            f"{alone:.1f} ({threads} threads)",
            f"{busy:.1f} ({busy_threads})",
            f"x{busy / alone:.1f}",
            f"{late:.1f} ({late_threads})",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
