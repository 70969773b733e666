"""One trial's time alone and beside a busy loop on every core, per threading setting.

    python bench/contention.py [--images 400] [--epochs 2]

Each measurement runs one fold of a fixed EfficientNet-Lite0 configuration (64 px, random
weights, no augmentation) in a fresh process, so that OpenMP reads its settings at start-up: once
alone, once while ``os.cpu_count()`` processes each spin a busy loop (another program on the same
cores). Prints the seconds of each and the slowdown the busy loops cause.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

TRIAL = """
import time, numpy as np, torch
from autocls.config import TrainConfig
from autocls.images import ImageStore
from autocls.trainer import Trainer, configure_threads
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
    "default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "AUTOCLS_THREADS=1": {"AUTOCLS_THREADS": "1"},
}


def spin(stop: multiprocessing.Event) -> None:
    while not stop.is_set():
        pass


def run_trial(env: dict[str, str], images: int, epochs: int) -> tuple[float, int]:
    code = TRIAL.format(images=images, epochs=epochs)
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    seconds, threads = done.stdout.split()
    return float(seconds), int(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    table = Table(title=f"one fold of {args.images} images, {args.epochs} epochs, {os.cpu_count()} cores")
    for column in ("setting", "threads", "alone (s)", "beside busy loops (s)", "slowdown"):
        table.add_column(column)
    for name, env in SETTINGS.items():
        alone, threads = run_trial(env, args.images, args.epochs)
        stop = multiprocessing.Event()
        loops = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(os.cpu_count() or 1)]
        for loop in loops:
            loop.start()
        time.sleep(0.5)  # let the loops take the cores before the trial starts
        try:
            busy, _ = run_trial(env, args.images, args.epochs)
        finally:
            stop.set()
            for loop in loops:
                loop.join()
        table.add_row(name, str(threads), f"{alone:.1f}", f"{busy:.1f}", f"x{busy / alone:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
