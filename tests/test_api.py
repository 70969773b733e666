"""The Python API, the scikit-learn estimator and export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from sklearn.base import clone

import autocls
from autocls.cli.main import main
from autocls.data.images import decode_images, resize_batch

pytestmark = pytest.mark.slow  # end-to-end: the CLI, subprocesses, a browser (-m 'not slow' skips them)


@pytest.fixture
def model_dir(image_folder: Path, tiny_space: Path, tmp_path: Path) -> Path:
    study = autocls.search(image_folder, trials=1, folds=2, space=str(tiny_space), workdir=tmp_path / "runs")
    autocls.refit(study, workdir=tmp_path / "runs")
    return tmp_path / "runs" / "data" / "model"


def test_search_refit_and_predict_from_python(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    files = sorted(image_folder.rglob("*.*"))
    frame = pd.DataFrame({"path": files, "label": [f.parent.name for f in files]})
    study = autocls.search(frame, trials=1, folds=2, space=str(tiny_space), workdir=tmp_path / "w", study_name="df")
    assert study.best_trial.value > 0
    ensemble = autocls.refit(study, workdir=tmp_path / "w")
    assert isinstance(ensemble, autocls.Ensemble)
    loaded = autocls.Ensemble.load(tmp_path / "w" / "df" / "model")
    table = loaded.predict(files[:3])
    assert list(table.columns[:3]) == ["path", "label", "confidence"] and len(table) == 3
    tensor = torch.from_numpy(np.asarray(__import__("PIL").Image.open(files[0]).convert("RGB"))).permute(2, 0, 1)
    np.testing.assert_allclose(loaded.predict_proba([tensor]), loaded.predict_proba([files[0]]), atol=1e-6)
    np.testing.assert_allclose(
        loaded.predict_proba([tensor.float() / 255]), loaded.predict_proba([files[0]]), atol=1e-5
    )


def test_sklearn_estimator(image_folder: Path, tiny_space: Path) -> None:
    files = sorted(str(p) for p in image_folder.rglob("*.*"))
    labels = [Path(f).parent.name for f in files]
    estimator = autocls.ImageClassifier(space=str(tiny_space), trials=1, folds=2)
    assert clone(estimator).get_params() == estimator.get_params()
    estimator.set_params(trials=1)
    estimator.fit(files, labels)
    assert list(estimator.classes_) == ["class_0", "class_1", "class_2"]
    assert estimator.predict_proba(files[:4]).shape == (4, 3)
    assert set(estimator.predict(files[:4])) <= set(estimator.classes_)
    predicted = estimator.predict(files)
    assert estimator.score(files, labels) == pytest.approx(np.mean(np.asarray(predicted) == np.asarray(labels)))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_agrees_with_the_ensemble(model_dir: Path, image_folder: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"model.{'pt' if fmt == 'torchscript' else 'onnx'}"
    assert main(["export", str(model_dir), "--format", fmt, "--out", str(out)]) == 0
    ensemble = autocls.Ensemble.load(model_dir, "cpu")
    images, _, _ = decode_images(sorted(image_folder.rglob("*.*")), ensemble.decode_size)
    expected = ensemble.predict_images(images)
    inputs = resize_batch(images, ensemble.config.resolution)
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(inputs).detach().numpy()
    else:
        got = onnxruntime.InferenceSession(str(out)).run(None, {"images": inputs.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


def test_the_api_leaves_the_callers_process_as_it_found_it(image_folder: Path, tiny_space: Path, tmp_path: Path):
    """Thread count, SIGINT handler and a stop request left by an interrupted search are restored or
    cleared: a later search in the same process runs (it used to stop at once)."""
    import signal

    # a process started in the background by a shell (`cmd &`) begins with SIGINT ignored, and
    # autocls leaves an ignored SIGINT alone: the test is about the default, interactive case
    caller = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_process_state_is_restored(image_folder, tiny_space, tmp_path)
    finally:
        signal.signal(signal.SIGINT, caller)


def _check_process_state_is_restored(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    import signal

    from autocls.runtime.control import STOP_REQUESTED, stop_on_ctrl_c

    with stop_on_ctrl_c():
        signal.raise_signal(signal.SIGINT)  # Ctrl-C during a search: a stop request, not an exception
        assert STOP_REQUESTED.is_set()
    assert not STOP_REQUESTED.is_set()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    verbosity = __import__("optuna").logging.get_verbosity()
    try:
        STOP_REQUESTED.set()  # as a search interrupted through an older entry point left it
        study = autocls.search(image_folder, trials=1, folds=2, space=str(tiny_space), workdir=tmp_path / "runs")
        assert len(study.trials) == 1 and study.trials[0].state.name == "COMPLETE"
        assert torch.get_num_threads() == 1
        autocls.refit(study, workdir=tmp_path / "runs")
        assert torch.get_num_threads() == 1
        assert __import__("optuna").logging.get_verbosity() == verbosity
    finally:
        torch.set_num_threads(before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_importing_autocls_installs_no_warning_filter() -> None:
    import subprocess
    import sys

    code = (
        # optuna.artifacts imports boto3 where it is installed (autocls[s3]), and urllib3 installs its own filters
        "import warnings, torch, timm, optuna, optuna.artifacts, sklearn, pandas, rich\n"
        "before = list(warnings.filters)\n"
        "import autocls, autocls.api, autocls.cli.main, autocls.study.driver, autocls.storage.rdb\n"
        "import autocls.report.tables\n"
        "added = [f for f in warnings.filters if f not in before]\n"
        "print(added)\n"
        "raise SystemExit(1 if added else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


SEARCH_MODULES = (
    "optuna",
    "autocls.study.driver",
    "autocls.study.setup",
    "autocls.study.objective",
    "autocls.final.refit",
    "autocls.train.cv",
)


@pytest.mark.parametrize(
    "module", ["autocls.model.ensemble", "autocls.model.predict", "autocls.model.export", "autocls.report.evaluate"]
)
def test_loading_and_predicting_import_nothing_of_the_search(module: str) -> None:
    import subprocess
    import sys

    found = f"sorted(m for m in sys.modules if m.split('.')[0] == 'optuna' or m in {SEARCH_MODULES})"
    code = f"import sys, {module}\nprint({found})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{module} pulls in {done.stdout.strip()}"


def test_evaluate_warns_when_evaluation_images_are_training_images(
    model_dir: Path, image_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy of a training image under another name, among new images: named in one warning, counted."""
    import shutil

    from autocls.data.leakage import duplicates_of_training
    from autocls.report.evaluate import evaluate
    from tests.helpers import write_class_folders

    evaluated = write_class_folders(tmp_path / "eval", per_class=2, seed=7)
    original = sorted((image_folder / "class_1").iterdir())[0]
    copy = evaluated / "class_1" / f"renamed{original.suffix}"
    shutil.copy(original, copy)
    spec = autocls.Ensemble.load(model_dir, "cpu").manifest.data.spec
    assert duplicates_of_training(spec, sorted(evaluated.rglob("*.*"))) == [(copy, original)]
    result = evaluate(model_dir, evaluated)
    assert result.training_duplicates == 1
    assert "1 of the 7 evaluation images are training images" in caplog.text and str(copy) in caplog.text
    moved = dataclasses.replace(spec, source=str(tmp_path / "gone"))
    assert duplicates_of_training(moved, [copy]) == []  # training data not here: nothing to compare


def test_evaluate_and_the_report_find_resized_copies(
    image_folder: Path, tiny_space: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A re-encoded, slightly enlarged copy has other bytes: found by its thumbnail, not its bytes.
    A training image filed under two classes is a cross-class pair in the report."""
    import shutil

    from PIL import Image

    from autocls.report.evaluate import evaluate
    from autocls.report.html import build_report

    original = sorted((image_folder / "class_2").iterdir())[0]
    shutil.copy(original, image_folder / "class_0" / "filed twice.png")
    study = autocls.search(image_folder, trials=1, folds=2, space=str(tiny_space), workdir=tmp_path / "runs")
    autocls.refit(study, workdir=tmp_path / "runs")
    model_dir = tmp_path / "runs" / "data" / "model"

    evaluated = tmp_path / "eval"
    rng = np.random.default_rng(7)
    for i in range(6):  # unlike any training image: blocks of random colours
        blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8).repeat(4, axis=0).repeat(4, axis=1)
        (evaluated / f"class_{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(blocks).save(evaluated / f"class_{i % 3}" / f"blocks{i}.png")
    with Image.open(original) as image:
        image.resize((18, 18)).save(evaluated / "class_2" / "enlarged.bmp")
    result = evaluate(model_dir, evaluated)
    assert result.training_duplicates == 0 and result.near_duplicates == 1
    assert "near-duplicates of training images" in caplog.text and "enlarged.bmp" in caplog.text
    refitted = autocls.refit(study, workdir=tmp_path / "runs")  # the object refit returns knows its folder too
    assert evaluate(refitted, evaluated).near_duplicates == 1
    caches = sorted(model_dir.glob("features-*.npz"))
    assert len(caches) == 1  # the training images' features, computed once for this model
    stamp = caches[0].stat().st_mtime_ns
    assert evaluate(model_dir, evaluated).near_duplicates == result.near_duplicates
    assert caches[0].stat().st_mtime_ns == stamp  # the second evaluation read them

    html = build_report(model_dir)
    section = html[html.index("Near-duplicate images in different classes") :]
    assert "filed twice.png" in section and "similarity 1.000" in section
