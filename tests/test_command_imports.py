"""Each command in a fresh interpreter imports only what it uses: inference never the search, the
dashboard never torch, ``--version`` and ``space show`` neither torch nor Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autocls.cli.main import main
from tests.helpers import TINY_SPACE, write_class_folders

pytestmark = pytest.mark.slow  # one search and refit, then a fresh interpreter per command

ROOT = Path(__file__).resolve().parent.parent
# runs the command as `python -m autocls.cli` does (the dashboard's server replaced by a no-op, so
# it returns once it would serve), then writes the modules the process had imported
PROBE = """
import json, os, runpy, sys
if os.environ.get("PROBE_DASHBOARD"):
    import optuna_dashboard  # brings Optuna, pandas and scikit-learn, not torch
    optuna_dashboard.run_server = lambda *args, **kwargs: None
sys.argv = ["autocls", *json.loads(os.environ["PROBE_ARGS"])]
code = 0
try:
    runpy.run_module("autocls.cli", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code or 0
with open(os.environ["PROBE_OUT"], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""
SEARCH = ("optuna", "autocls.study", "autocls.final", "autocls.storage")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imports")
    data = write_class_folders(root / "data")
    (root / "tiny.toml").write_text(TINY_SPACE)
    workdir = root / "runs"
    search = ["search", str(data), "--trials", "1", "--folds", "2", "--space", str(root / "tiny.toml")]
    assert main([*search, "--workdir", str(workdir), "--quiet"]) == 0
    assert main(["refit", "--best", "--workdir", str(workdir), "--quiet"]) == 0
    return root


def imported(args: list[str], cwd: Path) -> list[str]:
    out = cwd / "imported.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROBE_ARGS": json.dumps(args), "PROBE_OUT": str(out)}
    env["PROBE_DASHBOARD"] = "1" if args[0] == "dashboard" else ""
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["code"] == 0, done.stderr
    return result["modules"]


def loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return sorted({name for name in names for module in modules if module == name or module.startswith(name + ".")})


def test_the_probe_sees_what_a_command_imports(finished: Path) -> None:
    modules = imported(["predict", str(finished / "runs" / "data" / "model"), str(finished / "data")], finished)
    assert loaded(modules, ("torch", "autocls.model")) == ["autocls.model", "torch"]


@pytest.mark.parametrize(
    ("command", "forbidden"),
    [
        (["predict", "{model}", "{image}"], (*SEARCH, "sklearn")),
        (["export", "{model}", "--out", "{tmp}/model.pt", "--overwrite"], (*SEARCH, "sklearn")),
        (["evaluate", "{model}", "{data}", "--out-dir", "{tmp}/evaluation", "--overwrite"], SEARCH),
        # the parser checks settings against the constraint table (autocls.train.config, torch-free)
        (["dashboard", "--workdir", "{workdir}", "--port", "0"], ("torch", "timm", "autocls.model", "autocls.study")),
        (["space", "show", "fast"], ("torch", "timm", "optuna")),
        (["--version"], ("torch", "timm", "optuna", "autocls.data", "autocls.study")),
    ],
    ids=["predict", "export", "evaluate", "dashboard", "space-show", "version"],
)
def test_a_command_imports_only_what_it_uses(finished: Path, command: list[str], forbidden: tuple[str, ...]) -> None:
    paths = {
        "model": finished / "runs" / "data" / "model",
        "image": next((finished / "data").rglob("*.png")),
        "data": finished / "data",
        "workdir": finished / "runs",
        "tmp": finished,
    }
    args = [arg.format(**paths) for arg in command]
    assert loaded(imported(args, finished), forbidden) == []
