"""The careless-user sweep: every mistake is one line, the right exit code, and touches nothing.

Each case builds its files in a fresh folder, runs the CLI's entry function in-process (a process
per case would cost ~13 s of imports each), and checks that

* the exit status is 2 (bad input: the user can fix it), 1 (a failure at run time) or 0 (done);
* stderr holds exactly one ``autocls: error: ...`` line (or argparse's usage + one error line),
  never a traceback nor an exception's class name, and the line says what the case is about (the
  file, and what to do, where the case names them);
* no file that existed before the command was changed or removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from autocls.cli.main import main
from autocls.data.discover import DataSpec
from autocls.model.ensemble import Ensemble
from autocls.runtime.errors import AutoclsError, run_guarded
from autocls.storage.rdb import open_storage
from autocls.study.setup import SearchRequest
from tests.helpers import TINY_SPACE, write_class_folders


@dataclass(frozen=True)
class Case:
    """``argv`` may name ``{data}``, ``{space}``, ``{model}``, ``{work}`` and ``{tmp}``; ``prepare``
    edits the case's folder first. ``says`` must appear in the error line, and so must each of
    ``also`` (the file, the remedy; with the same placeholders)."""

    name: str
    argv: str
    code: int
    says: str
    prepare: Callable[[Path], None] | None = None
    also: tuple[str, ...] = ()


def _write(relative: str, content: bytes | str) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return prepare


def _all(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        for step in steps:
            step(root)

    return prepare


def _edit_manifest(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """The model's manifest.json with ``edit`` applied to its JSON object."""

    def prepare(root: Path) -> None:
        path = root / "model" / "manifest.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))

    return prepare


def _remove(relative: str) -> Callable[[Path], None]:
    return lambda root: shutil.rmtree(root / relative) if (root / relative).is_dir() else (root / relative).unlink()


def _space(replacements: dict[str, str] | None = None, extra: str = "") -> Callable[[Path], None]:
    text = TINY_SPACE
    for old, new in (replacements or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return _write("bad.toml", text + extra)


def _one_class_only(root: Path) -> None:
    shutil.rmtree(root / "data" / "class_1")
    shutil.rmtree(root / "data" / "class_2")


def _tiny_class(root: Path) -> None:
    for image in sorted((root / "data" / "class_2").iterdir())[1:]:
        image.unlink()


def _junk_images(root: Path) -> None:
    for image in (root / "data").rglob("*.*"):
        image.write_bytes(b"not an image")


def _nan_weights(root: Path) -> None:
    path = root / "model" / "fold0.safetensors"
    state = load_file(path)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(float("nan"))
    save_file(state, path)


def _other_classes(root: Path) -> None:
    write_class_folders(root / "other", classes=2, per_class=2)
    for i, name in enumerate(("cats", "dogs")):
        (root / "other" / f"class_{i}").rename(root / "other" / name)


def _empty_storage(root: Path) -> None:
    (root / "empty").mkdir()
    open_storage(f"sqlite:///{root / 'empty' / 'autocls.db'}")  # an Optuna storage, its tables and no study


def _photo(relative: str) -> Callable[[Path], None]:
    return lambda root: shutil.copy2(next((root / "data" / "class_0").iterdir()), root / relative)


def _read_only(relative: str) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        folder = root / relative
        folder.mkdir()
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):  # root writes anyway: test_a_file_that_cannot_be_written_is_one_line
            pytest.skip("running as root: chmod cannot make a folder read-only")

    return prepare


def _symlink_loop(root: Path) -> None:
    (root / "data" / "class_0" / "loop").symlink_to(root / "data" / "class_0", target_is_directory=True)


# an exception's class name (FileExistsError, UnidentifiedImageError, DatabaseError, ...)
CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception|Warning)\b")

CSV = "labels.csv"
FILES = "class_0/img 0.png,a\nclass_1/img 0.png,b\nclass_0/img 1.JPEG,a\nclass_1/img 1.PNG,b\n"
# a fresh work folder: the copied one holds a study of {data}, which a search would continue
SEARCH = "search {data} --space {space} --folds 2 --trials 1 --workdir {tmp}/fresh --quiet"
SEARCH_CSV = "search {data}/labels.csv --space {space} --folds 2 --trials 1 --workdir {tmp}/fresh --quiet"

CASES = [
    # -- the data -----------------------------------------------------------------------------
    Case("no such data folder", "search {tmp}/nothing --workdir {tmp}/fresh", 2, "no such file or folder"),
    Case(
        "data is a text file",
        "search {tmp}/notes.txt --workdir {tmp}/fresh",
        2,
        "expected a folder",
        _write("notes.txt", "hi"),
    ),
    Case(
        "no class folders", "search {tmp}/empty --workdir {work}", 2, "no class sub-folders", _write("empty/a.png", b"")
    ),
    Case("one class", SEARCH, 2, "at least 2 classes", _one_class_only),
    Case("a class of one image", SEARCH, 2, "at least 2 images of each class", _tiny_class),
    Case(
        "every image unreadable",
        SEARCH,
        2,
        "none of the 24 images could be read",
        _junk_images,
        also=("{data}/class_0/img 0.png", "Pillow opens"),
    ),
    Case("a symlink loop in a class folder", SEARCH, 0, "", _symlink_loop),
    # -- a labels CSV -------------------------------------------------------------------------
    Case(
        "CSV empty label",
        SEARCH_CSV,
        2,
        "empty label",
        _write(f"data/{CSV}", "file,label\n" + FILES + "class_2/img 0.png, \n"),
    ),
    Case("CSV missing files", SEARCH_CSV, 2, "do not exist", _write(f"data/{CSV}", "file,label\nnope.png,a\n" + FILES)),
    Case(
        "CSV conflicting labels",
        SEARCH_CSV,
        2,
        "two different labels",
        _write(f"data/{CSV}", "file,label\n" + FILES + "./class_0/img 0.png,b\n"),
    ),
    Case("CSV without a header", SEARCH_CSV, 2, "no header row", _write(f"data/{CSV}", FILES)),
    Case("CSV of one column", SEARCH_CSV, 2, "found one column", _write(f"data/{CSV}", "file\nclass_0/img 0.png\n")),
    Case(
        "CSV path outside the data",
        SEARCH_CSV,
        2,
        "outside the data folder",
        _write(f"data/{CSV}", "file,label\n../x.png,a\n" + FILES),
    ),
    Case("CSV that is binary junk", SEARCH_CSV, 2, "labels.csv", _write(f"data/{CSV}", bytes(range(256)) * 4)),
    Case("CSV empty", SEARCH_CSV, 2, "the file is empty", _write(f"data/{CSV}", ""), also=(CSV, "header row")),
    Case(
        "CSV of a header only",
        SEARCH_CSV,
        2,
        "no images below it",
        _write(f"data/{CSV}", "file,label\n"),
        also=(CSV, "add one row per image"),
    ),
    Case(
        "CSV not UTF-8",
        SEARCH_CSV,
        2,
        "not UTF-8 text",
        _write(f"data/{CSV}", "file,label\nclass_0/img 0.png,été\n".encode("latin-1")),
        also=(CSV, "save it as UTF-8"),
    ),
    Case("--labels missing", SEARCH + " --labels {tmp}/none.csv", 2, "labels CSV not found"),
    Case(
        "--file-column unknown",
        SEARCH_CSV + " --file-column nope",
        2,
        "no column 'nope'",
        _write(f"data/{CSV}", "file,label\n" + FILES),
    ),
    # -- settings -----------------------------------------------------------------------------
    Case("--folds 1", SEARCH + " --folds 1", 2, "The 'folds' parameter must be an integer >= 2. Got 1 instead."),
    Case("--folds 20", SEARCH + " --folds 20", 2, "fewer images than the 20 folds"),
    Case("--seed -1", SEARCH + " --seed -1", 2, "The 'seed' parameter must be an integer >= 0. Got -1 instead."),
    Case("--timeout 0", SEARCH + " --timeout 0", 2, "must be a number of seconds > 0. Got 0.0 instead."),
    Case("--timeout -5", SEARCH + " --timeout -5", 2, "must be a number of seconds > 0. Got -5.0 instead."),
    Case("--timeout nan", SEARCH + " --timeout nan", 2, "must be a number of seconds > 0. Got nan instead."),
    Case(
        "--trials abc",
        SEARCH + " --trials abc",
        2,
        "The 'trials' parameter must be an integer >= 1. Got 'abc' instead.",
    ),
    Case("--trials 0", SEARCH + " --trials 0", 2, "The 'trials' parameter must be an integer >= 1. Got 0 instead."),
    Case("--label-weight 2", "distill {model} --out {tmp}/student --label-weight 2", 2, "must be a number in [0, 1]"),
    Case("--weights not a folder", SEARCH + " --weights {tmp}/weights", 2, "folder of checkpoints"),
    Case("--metric unknown", SEARCH + " --metric auc", 2, "invalid choice"),
    Case("--device tpu", SEARCH + " --device tpu", 2, "The 'device' parameter must be auto, cpu"),
    Case("--workers with SQLite", SEARCH + " --workers 2", 2, "journal:"),
    Case("an unknown flag", SEARCH + " --epochs 3", 2, "unrecognized arguments"),
    # -- search spaces ------------------------------------------------------------------------
    Case("--space unknown name", "search {data} --space nope --workdir {tmp}/fresh", 2, "no search space 'nope'"),
    Case(
        "space not TOML",
        "search {data} --space {tmp}/bad.toml --workdir {tmp}/fresh",
        2,
        "not valid TOML",
        _write("bad.toml", "[[["),
    ),
    Case(
        "space unknown optimizer",
        "search {data} --space {tmp}/bad.toml --workdir {tmp}/fresh",
        2,
        "params.optimizer",
        _space({'choices = ["adamw", "sgd"]': 'choices = ["adamw", "lion"]'}),
    ),
    Case(
        "space log range from 0",
        "search {data} --space {tmp}/bad.toml --workdir {tmp}/fresh",
        2,
        "log range needs low > 0",
        _space({"low = 0.003": "low = 0.0"}),
    ),
    Case(
        "space unknown backbone",
        "search {data} --space {tmp}/bad.toml --workdir {tmp}/fresh",
        2,
        "unknown backbone 'resnet19'",
        _space({'backbone = "test_efficientnet"': 'backbone = "resnet19"'}),
        also=("bad.toml", "did you mean resnet18"),
    ),
    Case(
        "space value of the wrong type",
        "search {data} --space {tmp}/bad.toml --workdir {tmp}/fresh",
        2,
        "The 'epochs' parameter of",
        _space({"epochs = 2": 'epochs = "two"'}),
    ),
    Case(
        "space unknown setting",
        "search {data} --space {tmp}/bad.toml --workdir {tmp}/fresh",
        2,
        "unknown setting 'colour'",
        _space(extra="\n[params.colour]\nchoices = [1, 2]\n"),
    ),
    Case("space show unknown", "space show nope", 2, "no search space 'nope'"),
    # -- storages -----------------------------------------------------------------------------
    Case("unknown storage scheme", SEARCH + " --storage foo://x", 2, "unknown storage"),
    Case(
        "corrupt SQLite file",
        "search {data} --workdir {work}",
        2,
        "cannot open storage",
        _write("work/autocls.db", b"junk" * 500),
        also=("work/autocls.db is not a SQLite database", "move the file away"),
    ),
    Case(
        "storage in a folder that does not exist",
        SEARCH + " --storage sqlite:///{tmp}/nowhere/autocls.db",
        2,
        "does not exist",
        also=("{tmp}/nowhere", "create it"),
    ),
    # -- work folders -------------------------------------------------------------------------
    Case(
        "--workdir a file",
        "search {data} --space {space} --workdir {tmp}/notes.txt",
        2,
        "a file of that name is in the way",
        _write("notes.txt", "x"),
        also=("{tmp}/notes.txt", "choose another folder"),
    ),
    Case(
        "--workdir inside a file",
        "search {data} --space {space} --workdir {tmp}/notes.txt/runs",
        2,
        "a part of that path is a file",
        _write("notes.txt", "x"),
        also=("{tmp}/notes.txt/runs", "choose another path"),
    ),
    Case(
        "--workdir read-only",
        "search {data} --space {space} --workdir {tmp}/locked/runs",
        2,
        "permission denied",
        _read_only("locked"),
        also=("{tmp}/locked", "choose a folder you can write"),
    ),
    # -- refit --------------------------------------------------------------------------------
    Case(
        "refit after a training image was deleted",
        "refit --workdir {work} --quiet",
        0,
        "",
        _remove("data/class_0/img 0.png"),
    ),
    Case("refit where nothing was searched", "refit --workdir {tmp}/nothing", 2, "nothing was searched"),
    Case(
        "refit a storage without a study",
        "refit --workdir {tmp}/empty",
        2,
        "run autocls search first",
        _empty_storage,
    ),
    Case("refit an unknown study", "refit --workdir {work} --study nope", 2, "no study 'nope'"),
    Case("refit an unknown trial", "refit --workdir {work} --trial 99", 2, "99"),
    Case(
        "refit --out onto a file",
        "refit --workdir {work} --out {tmp}/notes.txt",
        2,
        "is a file",
        _write("notes.txt", "x"),
    ),
    Case(
        "refit --out a folder of mine",
        "refit --workdir {work} --out {tmp}/mine",
        2,
        "not an autocls model",
        _write("mine/a.txt", "x"),
    ),
    Case("refit --out onto a model", "refit --workdir {work} --out {model}", 2, "add --overwrite to replace it"),
    Case("refit --best and --trial", "refit --workdir {work} --best --trial 0", 2, "not allowed with argument"),
    # -- predict ------------------------------------------------------------------------------
    Case("predict no such model", "predict {tmp}/nope {data}", 2, "not an autocls model folder"),
    Case("predict a folder that is no model", "predict {data} {data}", 2, "not an autocls model folder"),
    Case("predict no such input", "predict {model} {tmp}/nope.png", 2, "no such file or folder"),
    Case(
        "predict an empty folder", "predict {model} {tmp}/empty", 2, "no images found", _write("empty/readme.txt", "x")
    ),
    Case(
        "predict only unreadable files",
        "predict {model} {tmp}/junk",
        2,
        "none of the 1 images",
        _write("junk/a.png", b"x"),
        also=("junk/a.png", "Pillow opens"),
    ),
    Case(
        "predict --out an input",
        "predict {model} {tmp}/in.png --out {tmp}/in.png",
        2,
        "over the input",
        _photo("in.png"),
    ),
    Case("predict --out inside the data", "predict {model} {data} --out {data}/p.csv", 2, "over the input"),
    Case("predict --out inside the model", "predict {model} {data} --out {model}/p.csv", 2, "inside the model folder"),
    Case("predict --out a folder", "predict {model} {data} --out {tmp}", 2, "is a folder"),
    Case(
        "predict --out an existing file",
        "predict {model} {data} --out {tmp}/p.csv",
        2,
        "--overwrite",
        _write("p.csv", "x"),
    ),
    Case(
        "evaluate --out-dir holding results",
        "evaluate {model} {data} --out-dir {tmp}/eval",
        2,
        "--overwrite",
        _write("eval/metrics.json", "{}"),
    ),
    Case(
        "evaluate --out-dir a file",
        "evaluate {model} {data} --out-dir {tmp}/notes.txt",
        2,
        "is a file",
        _write("notes.txt", "x"),
    ),
    Case("export --out an existing file", "export {model} --out {tmp}/m.pt", 2, "--overwrite", _write("m.pt", "x")),
    Case(
        "report --out an existing file",
        "report {model} --out {tmp}/r.html --workdir {work}",
        2,
        "--overwrite",
        _write("r.html", "x"),
    ),
    Case("predict NaN weights", "predict {model} {data}", 2, "NaN", _nan_weights),
    Case(
        "predict truncated weights",
        "predict {model} {data}",
        2,
        "cannot read the weights",
        _write("model/fold1.safetensors", b"\0" * 9),
    ),
    Case(
        "predict missing weights",
        "predict {model} {data}",
        2,
        "cannot read the weights",
        _remove("model/fold0.safetensors"),
    ),
    Case(
        "predict edited manifest",
        "predict {model} {data}",
        2,
        "not a readable autocls manifest",
        _write("model/manifest.json", "{"),
    ),
    Case(
        "predict manifest of another shape",
        "predict {model} {data}",
        2,
        "manifest",
        _write("model/manifest.json", '{"config": 1}'),
    ),
    Case(
        "predict a manifest of a newer autocls",
        "predict {model} {data}",
        2,
        "manifest.json: written by a newer autocls",
        _edit_manifest(lambda m: m.update(format_version=99)),
    ),
    Case(
        "predict an incomplete manifest",
        "predict {model} {data}",
        2,
        "manifest.json: incomplete autocls manifest (members is missing)",
        _edit_manifest(lambda m: m.pop("members")),
    ),
    Case(
        "predict another program's manifest.json",
        "predict {model} {data}",
        2,
        "manifest.json: not an autocls manifest",
        _write("model/manifest.json", '{"architectures": ["ResNet"], "model_type": "resnet"}'),
    ),
    Case(
        "evaluate a manifest with a member of no weight",
        "evaluate {model} {data}",
        2,
        "manifest.json: not a readable autocls manifest (members[0].weight must be a number",
        _edit_manifest(lambda m: m["members"][0].update(weight="heavy")),
    ),
    Case(
        "export a damaged manifest",
        "export {model} --out {tmp}/m.pt",
        2,
        "manifest.json: not a readable autocls manifest (damaged: not JSON",
        _write("model/manifest.json", "{"),
    ),
    Case(
        "report an incomplete manifest",
        "report {model} --out {tmp}/r.html --workdir {work}",
        2,
        "manifest.json: incomplete autocls manifest (preprocessing.decode_size is missing)",
        _edit_manifest(lambda m: m["preprocessing"].pop("decode_size")),
    ),
    # -- evaluate, export, report, dashboard --------------------------------------------------
    Case("evaluate an unknown class", "evaluate {model} {tmp}/other", 2, "not among the model's", _other_classes),
    Case("evaluate images of one class", "evaluate {model} {data} --quiet", 0, "", _one_class_only),
    Case(
        "evaluate only unreadable files",
        "evaluate {model} {data}",
        2,
        "none of the",
        _junk_images,
        also=("class_0/img 0.png", "Pillow opens"),
    ),
    Case(
        "export --out inside the model", "export {model} --out {model}/fold0.safetensors", 2, "inside the model folder"
    ),
    Case("export --format unknown", "export {model} --format tflite --out {tmp}/m", 2, "invalid choice"),
    Case(
        "report --out onto the manifest",
        "report {model} --out {model}/manifest.json --workdir {work}",
        2,
        "inside the model folder",
    ),
    Case("dashboard on a port in use", "dashboard --workdir {work} --port {port}", 2, "choose another --port"),
    Case("no command", "", 2, "required"),
]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One search and refit, copied into every case that needs a model or a study."""
    root = tmp_path_factory.mktemp("searched")
    data = write_class_folders(root / "data")
    (root / "tiny.toml").write_text(TINY_SPACE)
    args = ["search", str(data), "--space", str(root / "tiny.toml"), "--folds", "2", "--trials", "1"]
    assert main([*args, "--workdir", str(root / "work"), "--quiet"]) == 0
    assert main(["refit", "--workdir", str(root / "work"), "--out", str(root / "model"), "--quiet"]) == 0
    return root


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and "loop" not in p.parts
    }


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's refusals
        return int(exit.code)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_mistake_is_one_clear_line(case: Case, searched: Path, tmp_path: Path, capsys) -> None:
    for part in ("data", "work", "model", "tiny.toml"):
        source = searched / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, tmp_path / part)
    if case.prepare is not None:
        case.prepare(tmp_path)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    names = {
        "tmp": tmp_path,
        "data": tmp_path / "data",
        "work": tmp_path / "work",
        "model": tmp_path / "model",
        "space": tmp_path / "tiny.toml",
        "port": busy.getsockname()[1],
    }
    # placeholders are replaced after splitting, so that a path with a space stays one argument
    argv = [part.format(**names) for part in case.argv.split(" ") if part]
    before = _digest(tmp_path)
    capsys.readouterr()
    try:
        code = _run(argv)
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    if case.code == 0:
        assert errors == [], err
    else:
        # one line: autocls's own, or argparse's after its usage lines
        assert len(errors) == 1 and case.says in errors[0], err
        assert errors[0].startswith(("autocls: error:", "autocls ", "usage")), err
        assert all(part.format(**names) in errors[0] for part in case.also), err
        assert not CLASS_NAME.search(errors[0]), err  # "what happened" in words, never an exception's class
    after = _digest(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing there before changed or vanished
    if case.code != 0 and "{tmp}/fresh" in case.argv:  # a refused search: the refit a user tries next says why not
        assert _run(["refit", "--workdir", str(tmp_path / "fresh")]) == 2
        refit_errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(refit_errors) == 1 and "--study" not in refit_errors[0], refit_errors  # not "choose a study"


def test_the_sweep_names_each_case_once() -> None:
    assert len({c.name for c in CASES}) == len(CASES)  # a copied case with an unchanged name hides one


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--folds", 1, "The 'folds' parameter must be an integer >= 2. Got 1 instead."),
        ("--trials", 0, "The 'trials' parameter must be an integer >= 1. Got 0 instead."),
        ("--timeout", -5.0, "The 'timeout' parameter must be a number of seconds > 0. Got -5.0 instead."),
        ("--seed", -1, "The 'seed' parameter must be an integer >= 0. Got -1 instead."),
        ("--keep-trials", 0, "The 'keep_trials' parameter must be an integer >= 1. Got 0 instead."),
        ("--max-latency-ms", 0.0, "The 'max_latency_ms' parameter must be a number of milliseconds > 0. Got 0.0 "),
    ],
)
def test_a_flag_and_the_api_refuse_a_value_in_the_same_words(flag: str, value: object, says: str, capsys) -> None:
    """One vocabulary (autocls.train.config's constraint tables): the CLI's flag and the API's argument."""
    with pytest.raises(SystemExit):
        main(["search", "data", flag, str(value)])
    assert f"error: argument {flag}: {says}" in capsys.readouterr().err
    with pytest.raises(AutoclsError, match=re.escape(says.rstrip("."))):
        SearchRequest(DataSpec("data"), **{flag.removeprefix("--").replace("-", "_"): value})


@pytest.mark.parametrize(
    ("number", "code", "says"),
    [
        (errno.EROFS, 2, "cannot write /runs/autocls.db: the file system is read-only; choose a folder you can write"),
        (errno.EACCES, 2, "cannot write /runs/autocls.db: permission denied; choose a folder you can write"),
        (errno.ENOSPC, 1, "cannot write /runs/autocls.db: no space left on the device; free some space"),
    ],
    ids=["read-only", "permission", "disk full"],
)
def test_a_file_that_cannot_be_written_is_one_line(number: int, code: int, says: str, capsys) -> None:
    """What chmod cannot show when the tests run as root (a read-only mount, a full disk): the line the
    CLI prints for the error the operating system raises."""

    def command() -> int:
        raise OSError(number, os.strerror(number), "/runs/autocls.db")

    assert run_guarded(command) == code
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and says in err[0] and not CLASS_NAME.search(err[0]), err


def test_a_bug_still_reaches_the_last_resort(capsys) -> None:
    """No user error above reaches it; an error in autocls itself keeps its class name for the report."""

    def command() -> int:
        raise KeyError("members")

    assert run_guarded(command) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["autocls: unexpected error: KeyError: 'members' (rerun with --debug, and report it)"]
    with pytest.raises(KeyError):
        run_guarded(command, debug=True)


def test_the_apis_input_mistakes_name_the_fix(tmp_path: Path) -> None:
    from autocls.api import ImageClassifier, search

    with pytest.raises(AutoclsError, match=r"X has 2 images but y has 1 labels; give one label \(or label list\) per"):
        ImageClassifier(workdir=str(tmp_path)).fit(["a.png", "b.png"], ["cat"])
    with pytest.raises(AutoclsError, match=r"needs two columns, got \['path'\]; give the image paths first"):
        search(pd.DataFrame({"path": ["a.png"]}), workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize(
    ("image", "says"),
    [
        (torch.zeros(24, 24, 3), "shape (24, 24, 3) is not (3, H, W) or (1, H, W); pass channels first"),
        (torch.zeros(24, 24, 3, dtype=torch.uint8), "tensor.permute(2, 0, 1)"),
        (torch.zeros(2, 3, 24, 24), "shape (2, 3, 24, 24) is not (3, H, W) or (1, H, W); pass a list"),
        (torch.zeros(24, 24), "shape (24, 24) is not (3, H, W)"),
        (np.zeros((24, 24, 3), np.uint8), "an input of type ndarray is not an image; pass image paths"),
    ],
    ids=["HWC float", "HWC uint8", "a batch", "no channels", "a NumPy array"],
)
def test_an_image_of_another_layout_is_refused_with_the_fix(image: object, says: str, searched: Path) -> None:
    ensemble = Ensemble.load(searched / "model", device="cpu")
    with pytest.raises(AutoclsError) as caught:
        ensemble.predict_proba([image])
    message = str(caught.value)
    assert "\n" not in message and says in message and not CLASS_NAME.search(message), message
    assert ensemble.predict_proba([torch.zeros(3, 24, 24)]).shape == (1, 3)  # channels first is the layout


def test_a_study_seen_by_the_sweep_still_works(searched: Path) -> None:
    """The shared study and model were copied, never changed: predict on it still succeeds."""
    model, data = searched / "model", searched / "data"
    assert main(["predict", str(model), str(data), "--out", str(searched / "predictions.csv"), "--quiet"]) == 0
    rows = (searched / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 24 and np.all([row.count(",") >= 3 for row in rows])
