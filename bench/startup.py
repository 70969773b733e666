"""How long ``autocls predict MODEL one.png`` takes in a fresh process, and which libraries each light
command loads.

    python bench/startup.py [--model DIR] [--source TREE] [--repeats 5]

Each command runs ``--repeats`` times in a new interpreter (``python -m autocls.cli``, as the
``autocls`` script does), the sources taking turns; the table gives the median and the fastest wall time, and the heavy
libraries and autocls stages the process had imported when it ended. ``--source`` runs another
checkout's autocls (an older commit, for a before/after figure) on the same model and image.
Without ``--model`` a tiny model is searched and refit first (a few seconds), in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "timm", "optuna", "sklearn", "pandas", "kornia", "optuna_dashboard")
STAGES = ("study", "final", "storage", "report")
# runs the command as `python -m autocls.cli` does, then writes what the process imported
PROBE = """
import json, os, runpy, sys
sys.argv = ["autocls", *json.loads(os.environ["STARTUP_ARGS"])]
code = 0
try:
    runpy.run_module("autocls.cli", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code or 0
with open(os.environ["STARTUP_OUT"], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""

TINY_SPACE = """
name = "startup"
[fixed]
backbone = "resnet18"
pretrained = false
resolution = 32
epochs = 1
batch_size = 8
"""


def tiny_model(folder: Path) -> Path:
    """Two classes of 12 coloured squares, one trial, one fold pair: a model in a few seconds."""
    rng = np.random.default_rng(0)
    for label, base in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (folder / "data" / label).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.array(base) + rng.integers(-25, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / "data" / label / f"{i}.png")
    (folder / "space.toml").write_text(TINY_SPACE)
    for args in (
        ["search", str(folder / "data"), "--trials", "1", "--folds", "2", "--space", str(folder / "space.toml")],
        ["refit", "--best"],
    ):
        subprocess.run(
            [sys.executable, "-m", "autocls.cli", *args, "--workdir", str(folder / "runs"), "--quiet"],
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    return folder / "runs" / "data" / "model"


def run_once(args: list[str], source: Path, scratch: Path) -> tuple[float, dict]:
    out = scratch / "imports.json"
    env = {**os.environ, "PYTHONPATH": str(source), "STARTUP_ARGS": json.dumps(args), "STARTUP_OUT": str(out)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=scratch, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"autocls {' '.join(args)} failed under {source}:\n{done.stderr[-2000:]}")
    return seconds, json.loads(out.read_text())


def loaded(modules: list[str]) -> str:
    tops = {m.split(".")[0] for m in modules}
    stages = {m.split(".")[1] for m in modules if m.startswith("autocls.") and m.count(".") >= 1}
    names = [lib for lib in LIBRARIES if lib in tops] + [f"autocls.{s}" for s in STAGES if s in stages]
    return ", ".join(names) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a saved model folder (default: a tiny one made here)")
    parser.add_argument("--source", type=Path, action="append", help="source tree(s) to time (default: this one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sources = args.source or [ROOT]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        model = args.model or tiny_model(scratch / "model")
        image = next((model.parent.parent.parent / "data").rglob("*.png"), None) if not args.model else None
        if image is None:
            image = scratch / "one.png"
            Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(image)
        commands = {
            "predict MODEL one.png": ["predict", str(model), str(image)],
            "--version": ["--version"],
            "space show fast": ["space", "show", "fast"],
        }
        table = Table(title=f"fresh-process wall time, median of {args.repeats} (min), and what each command loaded")
        for column in ("source", "command", "median s", "min s", "loaded"):
            table.add_column(column)
        # the sources take turns, run by run, so that the machine's drift falls on each alike
        runs: dict[tuple[Path, str], list[tuple[float, dict]]] = {}
        for _ in range(args.repeats):
            for source in sources:
                for name, command in commands.items():
                    runs.setdefault((source, name), []).append(run_once(command, source.resolve(), scratch))
        for (source, name), timed in runs.items():
            seconds = [s for s, _ in timed]
            table.add_row(
                str(source),
                name,
                f"{statistics.median(seconds):.2f}",
                f"{min(seconds):.2f}",
                loaded(timed[-1][1]["modules"]),
            )
        Console().print(table)


if __name__ == "__main__":
    main()
