"""How the decode and the start of a search grow with the number of images: time and memory.

    python bench/scale.py [--images 2000 20000 100000] [--resolution 224] [--root /tmp/autocls-scale]
                          [--search-timeout 90] [--first-trial-seconds 30] [--skip-search]

For each N, on N synthetic 320x240 JPEGs in 10 classes (written once under ``--root``, reused):

1. reference rates on 500 of them, one image at a time in one thread: Pillow (``draft`` and the
   crop autocls does: :func:`autocls.data.pixels.load_square`) and ``torchvision.io.decode_jpeg`` with
   an antialiased resize; times the CPUs this process may use gives the ceiling for the decode;
2. the decode into an empty cache (``build_store`` with a cache folder, what a first search does),
   in a fresh process: images/s, its ratio to Pillow's ceiling, peak RSS and peak anonymous memory
   (``RssAnon``) of the process and its decode workers together, sampled every 50 ms, and the size
   of the cache entry. The memory-mapped cache's pages are file pages: they show in RSS and the
   kernel reclaims them, so ``RssAnon`` is what the decode needs;
3. unless ``--skip-search``: ``autocls search --space default --trials 1`` on an empty workdir:
   seconds until its first trial is RUNNING (decode, study set-up and model build included), then
   ``--first-trial-seconds`` of training, with peak anonymous memory of the whole process tree;
4. for N <= 20,000, ``autocls search --space default --timeout T``: its wall time against T and
   the peak anonymous memory of its process tree.

Prints a table (and writes it as Markdown to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

GIB = 2**30
CLASSES = 10


def _write_jpegs(root: str, start: int, stop: int) -> None:
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        folder = Path(root) / f"class_{i % CLASSES}"
        pixels = np.full((240, 320, 3), (i % CLASSES) * 25, np.uint8)
        pixels[::4] = rng.integers(0, 255, (60, 320, 3), dtype=np.uint8)  # texture: a JPEG of typical size
        Image.fromarray(pixels).save(folder / f"{i:07d}.jpg", quality=90)


def make_images(root: Path, count: int) -> Path:
    """``count`` JPEGs under ``root/N`` (made once, in parallel)."""
    folder = root / str(count)
    done = folder / ".complete"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for c in range(CLASSES):
        (folder / f"class_{c}").mkdir(parents=True)
    step = 1000
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(
            pool.map(
                _write_jpegs,
                [str(folder)] * len(range(0, count, step)),
                range(0, count, step),
                [min(count, s + step) for s in range(0, count, step)],
            )
        )
    done.write_text("")
    return folder


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def warm(folder: Path) -> None:
    """Read every file once, so that the reference and the decode both find them in the page cache:
    the rates then compare decoding, not the disk (a cold 100,000-image folder halved the reference)."""
    for path in folder.rglob("*.jpg"):
        path.read_bytes()


def reference_rates(folder: Path, size: int, sample: int = 500) -> dict[str, float]:
    """Images/s of one image at a time in one thread: Pillow as autocls decodes, and torchvision's."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg, read_file

    from autocls.data.images import load_square  # in every version of autocls: the bench runs before and after

    torch.set_num_threads(1)
    every = sorted(folder.rglob("*.jpg"))
    paths = every[:: max(1, len(every) // sample)][:sample]  # spread over the folder
    for path in paths[:50]:
        load_square(path, size)
    start = time.perf_counter()
    for path in paths:
        load_square(path, size)
    pillow = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    for path in paths:
        image = decode_jpeg(read_file(str(path))).unsqueeze(0).float()
        side = min(image.shape[-2:])
        F.interpolate(image[..., :side, :side], size=(size, size), mode="bilinear", antialias=True)
    return {"pillow": pillow, "torchvision": len(paths) / (time.perf_counter() - start)}


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Peak RSS and peak anonymous memory of a process tree, sampled every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_rss, self.peak_anon = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            self.peak_rss = max(self.peak_rss, sum(_status_kib(p, "VmRSS") for p in pids) * 1024)
            self.peak_anon = max(self.peak_anon, sum(_status_kib(p, "RssAnon") for p in pids) * 1024)
            self._stop.wait(0.05)

    def stop(self) -> TreeMemory:
        self._stop.set()
        self._thread.join()
        return self


DECODE_CHILD = """
import json, sys, time
from pathlib import Path
from autocls.data.discover import discover
from autocls.data.images import build_store
data = discover(sys.argv[1])
start = time.perf_counter()
kept, store = build_store(data, int(sys.argv[2]), Path(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - start, "images": len(kept)}))
"""


def measure_decode(folder: Path, size: int, cache: Path) -> dict[str, float]:
    shutil.rmtree(cache, ignore_errors=True)
    child = subprocess.Popen(
        [sys.executable, "-c", DECODE_CHILD, str(folder), str(size), str(cache)], stdout=subprocess.PIPE, text=True
    )
    memory = TreeMemory(child.pid)
    out, _ = child.communicate()
    memory.stop()
    if child.returncode != 0:
        raise SystemExit(f"the decode failed (exit {child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    cache_bytes = sum(f.stat().st_blocks * 512 for f in cache.rglob("*") if f.is_file())
    return {**result, "rss": memory.peak_rss, "anon": memory.peak_anon, "cache": cache_bytes}


def _running_trials(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _search(folder: Path, workdir: Path, *options: str) -> subprocess.Popen:
    """``autocls search FOLDER --space default`` in an empty ``workdir``, quietly."""
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-m", "autocls.cli.main", "search", str(folder), "--space", "default", *options]
    return subprocess.Popen([*command, "--workdir", str(workdir), "--quiet"], stdout=subprocess.DEVNULL)


def measure_first_trial(folder: Path, workdir: Path, train_seconds: float) -> dict[str, float]:
    """Seconds until ``autocls search --trials 1`` has a RUNNING trial, and peak anonymous memory
    of its process tree through ``train_seconds`` of that trial's training."""
    start = time.monotonic()
    child = _search(folder, workdir, "--trials", "1")
    memory = TreeMemory(child.pid)
    first = None
    while child.poll() is None:
        if first is None and _running_trials(workdir / "autocls.db"):
            first = time.monotonic() - start
        if first is not None and time.monotonic() - start > first + train_seconds:
            break
        time.sleep(0.2)
    child.terminate()
    child.wait()
    memory.stop()
    return {"first_trial": first if first is not None else float("nan"), "anon": memory.peak_anon}


def measure_timeout(folder: Path, workdir: Path, timeout: float) -> dict[str, float]:
    """Wall time of ``autocls search --timeout`` and peak anonymous memory of its process tree."""
    start = time.monotonic()
    child = _search(folder, workdir, "--timeout", str(timeout))
    memory = TreeMemory(child.pid)
    code = child.wait()
    memory.stop()
    return {"wall": time.monotonic() - start, "anon": memory.peak_anon, "exit": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--root", type=Path, default=Path("/tmp/autocls-scale"))
    parser.add_argument("--search-timeout", type=float, default=90.0)
    parser.add_argument("--first-trial-seconds", type=float, default=30.0)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    table = Table(title=f"decode and search start at {args.resolution} px, {cpus()} CPUs")
    columns = [
        "images",
        "Pillow x CPUs /s",
        "decode /s",
        "ratio",
        "peak RSS GiB",
        "peak RssAnon GiB",
        "cache GiB",
        "s to first trial",
        "RssAnon training GiB",
        f"--timeout {args.search_timeout:.0f}: s",
        "RssAnon GiB",
    ]
    for column in columns:
        table.add_column(column, justify="right")
    rows = []
    for count in args.images:
        folder = make_images(args.root, count)
        warm(folder)
        rates = reference_rates(folder, args.resolution)
        ceiling = rates["pillow"] * cpus()
        warm(folder)
        decode = measure_decode(folder, args.resolution, args.root / f"cache-{count}")
        rate = decode["images"] / decode["seconds"]
        row = [
            f"{count:,}",
            f"{ceiling:.0f} (tv {rates['torchvision'] * cpus():.0f})",
            f"{rate:.0f}",
            f"{rate / ceiling:.2f}",
            f"{decode['rss'] / GIB:.2f}",
            f"{decode['anon'] / GIB:.2f}",
            f"{decode['cache'] / GIB:.2f}",
        ]
        shutil.rmtree(args.root / f"cache-{count}", ignore_errors=True)
        if args.skip_search:
            row += ["-", "-", "-", "-"]
        else:
            first = measure_first_trial(folder, args.root / f"runs-{count}", args.first_trial_seconds)
            row += [f"{first['first_trial']:.0f}", f"{first['anon'] / GIB:.2f}"]
            if count <= 20000:
                timed = measure_timeout(folder, args.root / f"runs-{count}-t", args.search_timeout)
                row += [f"{timed['wall']:.0f} (exit {timed['exit']})", f"{timed['anon'] / GIB:.2f}"]
            else:
                row += ["-", "-"]
            for name in (f"runs-{count}", f"runs-{count}-t"):
                shutil.rmtree(args.root / name, ignore_errors=True)
        rows.append(row)
        table.add_row(*row)
        Console().print(table)
    if args.out:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
