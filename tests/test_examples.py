"""Every example runs, in its fast mode."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from autocls.data.images import decode_images
from autocls.model.ensemble import Ensemble

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import fashion_mnist  # noqa: E402
import prepare_fashion_mnist  # noqa: E402
import quickstart_digits  # noqa: E402
import train_classify  # noqa: E402
from prepare_digits import write_digits  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end: the CLI, subprocesses, a browser (-m 'not slow' skips them)


def held_out_accuracy(model: Path, test: Path) -> float:
    """The saved model's accuracy on a class-folder tree, counted here from its probabilities."""
    ensemble = Ensemble.load(model, "cpu")
    paths = sorted(test.rglob("*.png"))
    images, kept, _ = decode_images(paths, ensemble.decode_size)
    predicted = ensemble.predict_images(images).argmax(axis=1)
    truth = [paths[i].parent.name for i in kept]
    return sum(ensemble.class_names[p] == t for p, t in zip(predicted, truth, strict=True)) / len(paths)


def test_quickstart_digits(tmp_path: Path) -> None:
    accuracy = quickstart_digits.run(tmp_path, fast=True)
    # the accuracy the example reports is its saved model's on the held-out images
    assert accuracy == pytest.approx(
        held_out_accuracy(tmp_path / "runs" / "digits" / "model", tmp_path / "digits" / "test")
    )


@pytest.mark.skipif(
    not (prepare_fashion_mnist.SOURCE / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)",
)
def test_fashion_mnist(tmp_path: Path) -> None:
    accuracy = fashion_mnist.run(tmp_path, train=200, test=100, minutes=1, fast=True)
    model, test = tmp_path / "runs" / "fashion" / "model", tmp_path / "fashion" / "test"
    assert accuracy == pytest.approx(held_out_accuracy(model, test))
    assert sum(1 for _ in (tmp_path / "fashion" / "train").rglob("*.png")) == 200


def test_train_classifier_and_classify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_digits(tmp_path / "digits", holdout=0.25, limit=200)
    train_dir, test_dir = tmp_path / "digits" / "train", tmp_path / "digits" / "test"
    gt = {str(p.relative_to(train_dir)): int(p.parent.name) for p in train_dir.rglob("*.png")}
    model = train_classify.train_classifier(gt, train_dir, fast_train=True, workdir=tmp_path / "work")
    monkeypatch.chdir(tmp_path)
    before = sorted(os.walk(tmp_path))
    predicted = train_classify.classify(model, test_dir)
    assert sorted(os.walk(tmp_path)) == before  # classify wrote nothing
    assert set(predicted) == {p.name for p in test_dir.rglob("*.png")}
    assert all(isinstance(v, int) and 0 <= v <= 9 for v in predicted.values())
