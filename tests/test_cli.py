"""End-to-end: search -> refit -> predict through the CLI, on tiny generated images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image

from autocls.cli.main import build_parser, main
from autocls.final.testtime import MAX_VIEWS
from autocls.model.calibration import expected_calibration_error
from autocls.model.ensemble import Ensemble
from autocls.model.predict import predict
from autocls.study.pruning import FOLD_STEP
from tests.helpers import class_image, edit_space, write_class_folders

pytestmark = pytest.mark.slow  # end-to-end: the CLI, subprocesses, a browser (-m 'not slow' skips them)

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def storage_of(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'autocls.db'}"


def search(data: Path, workdir: Path, space: Path, *extra: str) -> int:
    args = ["search", str(data), "--space", str(space), "--folds", "2", "--workdir", str(workdir), "--quiet"]
    return main([*args, *extra])


def test_search_refit_predict(image_folder: Path, tiny_space: Path, tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "2") == 0
    study = optuna.load_study(study_name="data", storage=storage_of(workdir))
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE]
    trial = study.best_trial
    assert len(trial.user_attrs["folds"]) == 2 and len(trial.user_attrs["history"]) == 2
    assert trial.user_attrs["config"]["backbone"] == "test_efficientnet"
    assert trial.value == pytest.approx(sum(f["score"] for f in trial.user_attrs["folds"]) / 2)
    assert set(trial.intermediate_values) >= {0, 1, FOLD_STEP, FOLD_STEP + 1}
    assert study.user_attrs["autocls"]["folds"] == 2
    # figures for optuna-dashboard: learning curves and confusion matrix as SVG artifacts, and a note
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
    assert sorted(m.filename for m in metas) == ["confusion_matrix.svg", "loss_curves.svg", "score_curves.svg"]
    assert all(m.mimetype == "image/svg+xml" for m in metas)
    svg = (workdir / "artifacts" / metas[0].artifact_id).read_text()
    assert svg.startswith("<svg") and svg.endswith("</svg>")

    assert main(["refit", "--best", "--workdir", str(workdir), "--quiet"]) == 0
    refit_out = capsys.readouterr().out
    assert "out-of-fold accuracy" in refit_out
    model_dir = workdir / "data" / "model"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["class_names"] == ["class_0", "class_1", "class_2"]
    assert manifest["trial"] == trial.number and len(manifest["folds"]) == 2
    assert {"autocls", "timm"} <= set(manifest["versions"])
    calibration = manifest["calibration"]  # fitted on the out-of-fold predictions: never a worse NLL
    assert calibration["temperature"] > 0 and calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "fold0.safetensors",
        "fold1.safetensors",
        "manifest.json",
        "oof_predictions.csv",
    ]
    # the search kept both trials' fold models, so refit --best reuses them without training
    assert manifest["fold_models"] == "reused from the search"
    assert manifest["cv_score"] == pytest.approx(trial.value, abs=1e-6)
    kept = workdir / "artifacts" / "autocls" / f"data.{study._study_id}" / "trials"  # the workdir's artifact store
    assert sorted(p.name for p in kept.iterdir()) == ["0", "1"]
    # --retrain trains them again with the trial's folds and seed, and reproduces its CV score
    retrained_dir = tmp_path / "retrained"
    assert main(["refit", "--workdir", str(workdir), "--retrain", "--out", str(retrained_dir), "--quiet"]) == 0
    retrained = json.loads((retrained_dir / "manifest.json").read_text())
    assert retrained["fold_models"] == "retrained"
    assert retrained["cv_score"] == pytest.approx(trial.value, abs=1e-6)

    new_images = write_class_folders(tmp_path / "new", per_class=2, seed=1)
    out_csv = tmp_path / "pred" / "predictions.csv"
    assert main(["predict", str(model_dir), str(new_images), "--out", str(out_csv), "--quiet"]) == 0
    table = pd.read_csv(out_csv)
    assert list(table.columns) == ["path", "label", "confidence", "prob_class_0", "prob_class_1", "prob_class_2"]
    assert len(table) == 6
    assert table.filter(like="prob_").sum(axis=1).round(4).eq(1.0).all()
    assert (table["confidence"] == table.filter(like="prob_").max(axis=1)).all()

    # evaluate: metrics, per-class report and confusion matrix, as tables and files
    assert main(["evaluate", str(model_dir), str(new_images), "--out-dir", str(tmp_path / "eval"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "balanced accuracy" in printed and "per-class report" in printed and "confusion matrix" in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert metrics["images"] == 6 == len(predictions)
    assert "expected calibration error" in printed
    truth = predictions["true_label"].map({name: i for i, name in enumerate(manifest["class_names"])}).to_numpy()
    ece = expected_calibration_error(predictions.filter(like="prob_").to_numpy(), truth)  # of what it predicted
    assert metrics["expected_calibration_error"] == pytest.approx(ece, abs=1e-6)
    assert metrics["temperature"] == pytest.approx(calibration["temperature"])
    assert metrics["training_duplicates"] == 0  # new images: none is a training image
    assert metrics["accuracy"] == pytest.approx((predictions["label"] == predictions["true_label"]).mean())
    per_class = pd.read_csv(tmp_path / "eval" / "per_class.csv")
    assert list(per_class.columns) == ["class", "precision", "recall", "f1", "support"]
    assert per_class["support"].sum() == 6

    # the Python function gives the same table; PIL images give the same probabilities as files
    frame = predict(model_dir, [new_images])
    pd.testing.assert_frame_equal(frame, table, check_dtype=False, atol=1e-5)
    ensemble = Ensemble.load(model_dir, "cpu")
    paths = sorted(new_images.rglob("*.png"))
    with Image.open(paths[0]) as image:
        from_pil = ensemble.predict_proba([image.copy()])
    assert from_pil == pytest.approx(ensemble.predict_proba([paths[0]]), abs=1e-6)


def test_trials_is_a_target_and_a_rerun_continues(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "1") == 0
    assert search(image_folder, workdir, tiny_space, "--trials", "1") == 0  # already done: no new trial
    study = optuna.load_study(study_name="data", storage=storage_of(workdir))
    assert len(study.trials) == 1
    assert search(image_folder, workdir, tiny_space, "--trials", "2") == 0
    assert len(optuna.load_study(study_name="data", storage=storage_of(workdir)).trials) == 2
    # a continued study keeps its folds; asking for others is an error, not a silent mix
    assert search(image_folder, workdir, tiny_space, "--trials", "3", "--folds", "3") == 2


def test_losing_trial_is_pruned(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    study = optuna.create_study(study_name="data", storage=storage_of(workdir), direction="maximize")
    for lr in (0.02, 0.02, 0.02, 1e-9):  # three that learn, then one that cannot
        study.enqueue_trial({"optimizer": "adamw", "lr": lr, "augmentation": "none"})
    edit_space(tiny_space, {"epochs = 2": "epochs = 4", "low = 0.003": "low = 1e-9"})
    assert search(image_folder, workdir, tiny_space, "--trials", "4") == 0
    study = optuna.load_study(study_name="data", storage=storage_of(workdir))
    states = [t.state for t in study.trials]
    assert states == [COMPLETE, COMPLETE, COMPLETE, PRUNED]
    assert max(study.trials[3].intermediate_values) < FOLD_STEP  # stopped inside its first fold


def test_bad_input_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    class_image(0, np.random.default_rng(0)).save(tmp_path / "only" / "a.png")
    result = subprocess.run(
        [sys.executable, "-m", "autocls.cli.main", "search", str(tmp_path), "--workdir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("autocls: error:")
    assert "at least 2 classes" in result.stderr


def test_diverging_trial_fails_with_its_reason_and_the_study_goes_on(
    image_folder: Path, tiny_space: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    study = optuna.create_study(study_name="data", storage=storage_of(workdir), direction="maximize")
    study.enqueue_trial({"optimizer": "sgd", "lr": 1e30, "momentum": 0.9})  # diverges at once
    study.enqueue_trial({"optimizer": "adamw", "lr": 0.01})
    edit_space(tiny_space, {"high = 0.03": "high = 1e31"})
    assert search(image_folder, workdir, tiny_space, "--trials", "1") == 0
    trials = optuna.load_study(study_name="data", storage=storage_of(workdir)).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, COMPLETE]
    assert "loss became" in trials[0].user_attrs["fail_reason"]


def test_a_failed_save_keeps_the_previous_model(image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch):
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "1") == 0
    assert main(["refit", "--workdir", str(workdir), "--quiet"]) == 0
    model_dir = workdir / "data" / "model"
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}

    import autocls.model.ensemble

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(autocls.model.ensemble, "save_file", broken_save)
    assert main(["refit", "--workdir", str(workdir), "--quiet"]) == 1
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["files.json", "model"]  # no half-written


def test_report_is_one_self_contained_html_file(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "2") == 0
    assert main(["refit", "--workdir", str(workdir), "--quiet"]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(workdir / "data" / "model"), "--out", str(out), "--workdir", str(workdir)]) == 0
    html = out.read_text()
    for section in (
        "Class distribution",
        "Augmented training samples",
        "Learning curves",
        "Out-of-fold confusion matrix",
        "Per-class precision",
        "Calibration",
        "out-of-fold reliability",
        "Most confused class pairs",
        "most likely mislabelled",
        "Optimisation history",
        "Parameter importances",
        "Member trials' figures from the search",  # read from the study's artifact store
    ):
        assert section in html, section
    assert html.count("<svg") >= 6 and html.count("data:image/png;base64,") >= 12
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched from outside


def test_changed_data_is_never_mixed_into_a_study(image_folder: Path, tiny_space: Path, tmp_path: Path, capsys):
    """Files added after a search: continuing is refused (one line, counts, the fix), refit retrains
    instead of reusing fold models of the old files, and a new study searches the new data."""
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "1", "--study", "e2e") == 0
    rng = np.random.default_rng(5)
    for i in range(3):
        class_image(0, rng).save(image_folder / "class_0" / f"added {i}.png")
    capsys.readouterr()
    assert search(image_folder, workdir, tiny_space, "--trials", "2", "--study", "e2e") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "3 files added, 0 removed, 0 modified" in err and "--study e2e-2" in err
    study = optuna.load_study(study_name="e2e", storage=storage_of(workdir))
    assert len(study.trials) == 1  # nothing ran on the new files

    assert main(["refit", "--best", "--study", "e2e", "--workdir", str(workdir)]) == 0
    out = "".join(capsys.readouterr())  # the progress console writes to stderr
    assert "the data changed since the search" in out and "reusing" not in out
    manifest = json.loads((workdir / "e2e" / "model" / "manifest.json").read_text())
    assert manifest["fold_models"] == "retrained" and manifest["data"]["images"] == 27

    assert search(image_folder, workdir, tiny_space, "--trials", "1", "--study", "e2e-2") == 0
    for i in range(3):
        (image_folder / "class_0" / f"added {i}.png").unlink()
    assert search(image_folder, workdir, tiny_space, "--trials", "2", "--study", "e2e") == 0  # the old files again


def test_the_same_images_anywhere_continue_a_study_and_a_changed_image_starts_a_new_one(
    image_folder: Path, tiny_space: Path, tmp_path: Path, capsys
) -> None:
    """Images are known by content: under another root, copied without their times and without the
    unreadable file the search skipped, they continue the study and refit reuses its fold models;
    one changed image is refused with the counts, and the new study named starts from the old one."""
    (image_folder / "class_1" / "broken.jpg").write_bytes(b"not an image")
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "1", "--study", "e2e") == 0
    copy = tmp_path / "elsewhere" / "train"
    for path in image_folder.glob("*/img *"):  # new modification times, another root, no broken.jpg
        (copy / path.parent.name).mkdir(parents=True, exist_ok=True)
        (copy / path.parent.name / path.name).write_bytes(path.read_bytes())
    capsys.readouterr()
    assert search(copy, workdir, tiny_space, "--trials", "2", "--study", "e2e") == 0
    study = optuna.load_study(study_name="e2e", storage=storage_of(workdir))
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE]
    assert main(["refit", "--best", "--study", "e2e", "--workdir", str(workdir), "--data", str(copy)]) == 0
    out = "".join(capsys.readouterr())
    assert "reusing the 2 fold models" in out and "training" not in out

    class_image(0, np.random.default_rng(9)).save(copy / "class_2" / "img 0.png")
    assert search(copy, workdir, tiny_space, "--trials", "3", "--study", "e2e") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0 files added, 0 removed, 1 modified or relabelled" in err
    assert "--study e2e-2" in err and len(study.trials) == 2
    assert search(copy, workdir, tiny_space, "--trials", "1", "--study", "e2e-2") == 0
    assert "study 'e2e-2' starts from study 'e2e'" in "".join(capsys.readouterr())
    successor = optuna.load_study(study_name="e2e-2", storage=storage_of(workdir))
    assert successor.trials[0].user_attrs["inherited_from"] == f"e2e#{study.best_trial.number}"


def test_a_study_recorded_by_path_and_time_continues_on_its_unchanged_folder(
    image_folder: Path, tiny_space: Path, tmp_path: Path
) -> None:
    """Studies searched before images were known by content recorded the files' paths, sizes and
    times: unchanged, they continue (and gain a content record); changed, they are refused."""
    from autocls.data.discover import discover
    from autocls.study.studydata import CONTENT_KEY, DATA_ATTR, OLD_KEY

    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "1", "--study", "old") == 0
    study = optuna.load_study(study_name="old", storage=storage_of(workdir))
    recorded = study.user_attrs[DATA_ATTR]
    old_style = {"images": recorded["images"], "classes": recorded["classes"]}
    study.set_user_attr(DATA_ATTR, {**old_style, OLD_KEY: discover(image_folder).fingerprint()})
    (workdir / "old" / "files.json").unlink()
    assert search(image_folder, workdir, tiny_space, "--trials", "2", "--study", "old") == 0
    assert study.user_attrs[DATA_ATTR][CONTENT_KEY] == recorded[CONTENT_KEY]
    study.set_user_attr(DATA_ATTR, {**old_style, OLD_KEY: "0" * 16})  # as if the files had changed since
    assert search(image_folder, workdir, tiny_space, "--trials", "3", "--study", "old") == 2


def run_cli(*args: str) -> int:
    """``main``'s exit status, argparse's refusals (SystemExit) included."""
    try:
        return main(list(args))
    except SystemExit as exit:
        return int(exit.code)


@pytest.mark.parametrize(
    "flags",
    [
        ["--folds", "20"],  # more folds than the smallest class has images
        ["--folds", "1"],
        ["--seed", "-1"],
        ["--weights", "no/such/folder"],
        ["--timeout", "0"],
        ["--timeout", "-5"],
        ["--timeout", "nan"],
        ["--trials", "abc"],
        ["--trials", "0"],
    ],
    ids=" ".join,
)
def test_a_refused_setting_is_not_stored(flags: list[str], image_folder: Path, tiny_space: Path, tmp_path, capsys):
    workdir = tmp_path / "runs"
    base = ["search", str(image_folder), "--space", str(tiny_space), "--workdir", str(workdir), "--quiet"]
    assert run_cli(*base, "--trials", "1", *flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "_positive_int" not in err and err.strip().splitlines()[-1].count("error") == 1
    assert run_cli(*base, "--trials", "1", "--folds", "2") == 0  # the refused value left nothing behind


def test_a_file_name_that_is_not_utf8_is_searched_predicted_and_written(
    image_folder: Path, tiny_space: Path, tmp_path: Path
) -> None:
    """File names are bytes to the OS: a Latin-1 name from an old camera must not abort anything."""
    import os

    latin1 = image_folder / "class_0" / os.fsdecode(b"caf\xe9 photo.png")
    class_image(0, np.random.default_rng(9)).save(latin1)
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "1") == 0
    assert main(["refit", "--workdir", str(workdir), "--quiet"]) == 0
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(workdir / "data" / "model"), str(latin1), "--out", str(out), "--quiet"]) == 0
    assert b"caf\xe9 photo.png" in out.read_bytes()  # the name as the OS has it
    assert main(["predict", str(workdir / "data" / "model"), str(latin1)]) == 0  # printed escaped


def test_refit_never_writes_over_what_it_did_not_write(image_folder: Path, tiny_space: Path, tmp_path: Path, capsys):
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "1") == 0
    refit = ["refit", "--workdir", str(workdir), "--quiet", "--out"]
    mine = tmp_path / "my folder"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert main([*refit, str(mine)]) == 2
    assert main([*refit, str(a_file)]) == 2
    assert (mine / "thesis.txt").read_text() == "years of work" and sorted(p.name for p in mine.iterdir()) == [
        "thesis.txt"
    ]
    assert a_file.read_text() == "keep me"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not an autocls model" in err[0] and "is a file" in err[1]
    model = tmp_path / "model"
    assert main([*refit, str(model)]) == 0
    assert main([*refit, str(model)]) == 2  # an autocls model: replaced only when asked
    assert "--overwrite" in capsys.readouterr().err
    assert main([*refit, str(model), "--overwrite"]) == 0
    assert main(["refit", "--workdir", str(workdir), "--quiet"]) == 0  # the default folder is autocls's own
    assert main(["refit", "--workdir", str(workdir), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["refit", "--workdir", str(workdir), "--quiet", "--views", "9"]) == 2  # checked before any work
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "The 'views' parameter must be an integer from 0 to 1" in err[0] and "Got 9 instead" in err[0]
    )
    assert main(["refit", "--workdir", str(workdir), "--quiet", "--views", "0"]) == 0
    assert json.loads((workdir / "data" / "model" / "manifest.json").read_text())["tta"] == []
    assert build_parser().parse_args(["refit"]).views == MAX_VIEWS


def test_damaged_models_and_unreadable_inputs_are_one_line_errors(
    image_folder: Path, tiny_space: Path, tmp_path: Path, capsys
) -> None:
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "1") == 0
    assert main(["refit", "--workdir", str(workdir), "--quiet"]) == 0
    model = workdir / "data" / "model"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not an image")
    (junk / "b.jpg").write_bytes(b"")
    capsys.readouterr()
    assert main(["predict", str(model), str(junk)]) == 2  # nothing readable: nothing done, not exit 0
    assert "none of the 2 images could be read" in capsys.readouterr().err

    from safetensors.torch import load_file, save_file

    state = load_file(model / "fold0.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(float("nan"))
    save_file(state, model / "fold0.safetensors")
    assert main(["predict", str(model), str(image_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "fold0.safetensors" in err and "NaN" in err and len(err.splitlines()) == 1

    (model / "fold0.safetensors").write_bytes(b"\0" * 10)  # truncated
    assert main(["predict", str(model), str(image_folder)]) == 2
    assert "fold0.safetensors: cannot read the weights" in capsys.readouterr().err
    (model / "manifest.json").write_text("{ edited by hand")
    assert main(["predict", str(model), str(image_folder)]) == 2
    assert "manifest.json: not a readable autocls manifest" in capsys.readouterr().err


def test_no_command_writes_over_its_inputs_or_a_model(image_folder: Path, tiny_space: Path, tmp_path: Path, capsys):
    workdir = tmp_path / "runs"
    assert search(image_folder, workdir, tiny_space, "--trials", "1") == 0
    assert main(["refit", "--workdir", str(workdir), "--quiet"]) == 0
    model = workdir / "data" / "model"
    photo = next((image_folder / "class_1").iterdir())
    before = {p: p.read_bytes() for p in [photo, *model.iterdir()]}
    assert main(["predict", str(model), str(photo), "--out", str(photo)]) == 2
    assert main(["predict", str(model), str(image_folder), "--out", str(image_folder / "p.csv")]) == 2
    assert main(["export", str(model), "--out", str(model / "fold0.safetensors")]) == 2
    assert main(["report", str(model), "--out", str(model / "manifest.json"), "--workdir", str(workdir)]) == 2
    assert main(["predict", str(model), str(photo), "--out", str(tmp_path)]) == 2
    assert {p: p.read_bytes() for p in before} == before
    assert not (image_folder / "p.csv").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("autocls: error: --out") for line in err)


def _tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "case",
    ["unknown storage", "corrupt database", "refit where nothing was searched", "dashboard port in use"],
)
def test_mistakes_are_one_line_and_touch_nothing(case: str, image_folder: Path, tmp_path: Path, capsys) -> None:
    import socket

    workdir = tmp_path / "runs"
    workdir.mkdir()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    args = {
        "unknown storage": ["search", str(image_folder), "--storage", "foo://x", "--workdir", str(workdir)],
        "corrupt database": ["search", str(image_folder), "--workdir", str(workdir)],
        "refit where nothing was searched": ["refit", "--workdir", str(workdir / "nothing")],
        "dashboard port in use": ["dashboard", "--workdir", str(workdir), "--port", str(busy.getsockname()[1])],
    }[case]
    if case == "corrupt database":
        (workdir / "autocls.db").write_bytes(b"this is not a database" * 100)
    before = _tree_digest(tmp_path)
    try:
        assert main(args) == 2
    finally:
        busy.close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("autocls: error:") and "Traceback" not in err, err
    assert _tree_digest(tmp_path) == before
    assert not (workdir / "nothing").exists()


def test_the_cli_prints_no_experimental_warnings(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    """Optuna marks heartbeats, TPE's group option and metric names experimental: a user cannot act
    on those warnings, so the CLI (a process of its own) hides them; the library leaves them alone."""
    args = [sys.executable, "-m", "autocls.cli.main", "search", str(image_folder), "--space", str(tiny_space)]
    args += ["--folds", "2", "--trials", "1", "--workdir", str(tmp_path / "runs"), "--quiet"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "experimental" not in done.stderr.lower(), done.stderr
