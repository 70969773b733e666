"""Distillation: soft targets through the one trainer, and a student saved like any model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autocls.cli.main import main
from autocls.data.images import ImageStore
from autocls.final.distill import soft_targets, student_config
from autocls.model.ensemble import Ensemble
from autocls.runtime.errors import AutoclsError
from autocls.train.config import TrainConfig
from autocls.train.trainer import Trainer
from tests.helpers import class_image, write_class_folders


def test_soft_targets_mix_the_teacher_with_the_labels_and_sum_to_one() -> None:
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    labels = np.array([1, 2])
    np.testing.assert_allclose(soft_targets(teacher, labels, 0.0), teacher, atol=1e-7)
    np.testing.assert_array_equal(soft_targets(teacher, labels, 1.0), np.eye(3, dtype=np.float32)[labels])
    mixed = soft_targets(teacher, labels, 0.5)
    np.testing.assert_allclose(mixed[0], [0.35, 0.6, 0.05], atol=1e-6)
    np.testing.assert_allclose(mixed.sum(1), 1.0, atol=1e-6)


def test_the_student_takes_the_teachers_settings_without_mixing() -> None:
    teacher = TrainConfig("test_efficientnet", mixup=0.2, cutmix=1.0, label_smoothing=0.1, epochs=7, lr=0.004)
    student = student_config(teacher, backbone="test_mobilenetv3", epochs=3)
    assert (student.backbone, student.epochs, student.lr) == ("test_mobilenetv3", 3, 0.004)
    assert (student.mixup, student.cutmix, student.label_smoothing) == (0.0, 0.0, 0.0)
    assert student_config(teacher, None, None).backbone == "test_efficientnet"
    with pytest.raises(AutoclsError, match=r"'epochs' parameter must be an integer >= 1\. Got 0 instead"):
        student_config(teacher, None, 0)


def _toy(images: int = 48, classes: int = 3) -> tuple[ImageStore, torch.Tensor]:
    rng = np.random.default_rng(0)
    labels = np.arange(images) % classes
    pixels = np.stack([np.asarray(class_image(int(y), rng)) for y in labels])
    return ImageStore(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()), torch.as_tensor(labels)


def _fit(config: TrainConfig, targets: torch.Tensor | None):
    store, labels = _toy()
    everything = np.arange(len(labels))
    trainer = Trainer(config, 3, torch.device("cpu"), seed=1, feature_cache=False)
    return trainer.fit(store, labels, everything, everything, soft_targets=targets)


TEACHER_SPACE = """
[fixed]
backbone = "test_efficientnet"
pretrained = false
resolution = 16
epochs = 10
batch_size = 8
optimizer = "adamw"
lr = 0.01
augmentation = "none"

[params.dropout]
choices = [0.0]
"""
CONFIG = TrainConfig("test_efficientnet", pretrained=False, resolution=16, epochs=10, batch_size=8, lr=0.01)


def test_one_hot_soft_targets_train_exactly_as_the_labels_do() -> None:
    _, labels = _toy()
    hard = _fit(CONFIG, None)
    soft = _fit(CONFIG, torch.eye(3)[labels])
    assert [r.train_loss for r in soft.history] == pytest.approx([r.train_loss for r in hard.history], rel=1e-5)
    np.testing.assert_allclose(soft.val_probs, hard.val_probs, atol=1e-5)


def test_the_student_learns_the_targets_it_is_given_not_the_labels() -> None:
    _, labels = _toy()
    shifted = (labels + 1) % 3  # a "teacher" that names every class by the next one
    result = _fit(CONFIG, torch.eye(3)[shifted] * 0.9 + 0.1 / 3)
    predicted = result.val_probs.argmax(1)
    # most images as the teacher names them (chance: a third); 10 epochs of a tiny model fit all of
    # them from some starts and about three quarters from others (seeds, memory formats, CPUs)
    assert (predicted == shifted.numpy()).mean() >= 0.7
    assert (predicted == labels.numpy()).mean() <= 0.1


def test_soft_targets_refuse_mixup() -> None:
    _, labels = _toy()
    with pytest.raises(ValueError, match="MixUp/CutMix"):
        _fit(TrainConfig("test_efficientnet", pretrained=False, resolution=16, mixup=0.2), torch.eye(3)[labels])


@pytest.mark.slow
def test_distill_saves_a_student_that_predicts_exports_evaluates_and_reports_like_any_model(
    tiny_space: Path, tmp_path: Path, capsys
) -> None:
    workdir = tmp_path / "runs"
    image_folder = write_class_folders(tmp_path / "data", per_class=16)
    # a teacher sure enough to be imitated: one recipe that learns these images in 10 epochs
    tiny_space.write_text(TEACHER_SPACE)
    search = ["search", str(image_folder), "--space", str(tiny_space), "--folds", "2", "--workdir", str(workdir)]
    assert main([*search, "--trials", "1", "--quiet"]) == 0
    teacher_dir = tmp_path / "teacher"
    assert main(["refit", "--best", "--workdir", str(workdir), "--out", str(teacher_dir), "--quiet"]) == 0
    capsys.readouterr()

    student_dir = tmp_path / "student"
    args = ["distill", str(teacher_dir), "--out", str(student_dir), "--epochs", "10", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "agrees with the teacher on" in printed and "ms per image" in printed
    manifest = json.loads((student_dir / "manifest.json").read_text())
    source = manifest["distilled_from"]
    assert source["model"] == str(teacher_dir.resolve()) and source["label_weight"] == 0.0
    assert [m["folds"] for m in manifest["members"]] == [1]  # one model: one forward pass per image
    assert sorted(p.name for p in student_dir.iterdir()) == [
        "fold0.safetensors",
        "manifest.json",
        "oof_predictions.csv",
    ]

    # the student predicts the teacher's classes on most training images
    teacher, student = Ensemble.load(teacher_dir, "cpu"), Ensemble.load(student_dir, "cpu")
    paths = sorted(p for p in image_folder.rglob("*") if p.is_file())
    agreement = (teacher.predict_proba(paths).argmax(1) == student.predict_proba(paths).argmax(1)).mean()
    assert agreement >= 0.8
    assert agreement == pytest.approx(source["agreement_on_training_images"], abs=1e-6)

    # like any model: evaluate, export (the graph gives the student's probabilities), report
    held_out = write_class_folders(tmp_path / "held_out", per_class=2, seed=5)
    assert main(["evaluate", str(student_dir), str(held_out), "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    graph = tmp_path / "student.pt"
    assert main(["export", str(student_dir), "--out", str(graph)]) == 0
    exported = torch.jit.load(str(graph))
    batch = student._decode(paths[:4])
    with torch.inference_mode():
        from_graph = exported(batch).numpy()
    np.testing.assert_allclose(from_graph, student.predict_images(batch), atol=1e-4)
    report = tmp_path / "student.html"
    assert main(["report", str(student_dir), "--out", str(report), "--workdir", str(workdir)]) == 0
    html = report.read_text()
    assert "student distilled from an ensemble" in html and "below are the teacher's out-of-fold predictions" in html


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, expected",
    [
        ("into_teacher", "is the teacher's folder"),
        ("unknown_class", "are not among the teacher's"),
        ("no_model", "not an autocls model folder"),
        ("bad_backbone", "is not a timm model name"),
    ],
)
def test_distill_mistakes_are_one_line_errors(
    case: str, expected: str, image_folder: Path, tiny_space: Path, tmp_path: Path, capsys
) -> None:
    workdir = tmp_path / "runs"
    search = ["search", str(image_folder), "--space", str(tiny_space), "--folds", "2", "--workdir", str(workdir)]
    assert main([*search, "--trials", "1", "--quiet"]) == 0
    teacher_dir = workdir / "data" / "model"
    assert main(["refit", "--best", "--workdir", str(workdir), "--quiet"]) == 0
    before = sorted(p.name for p in teacher_dir.iterdir())
    out = tmp_path / "student"
    args = {
        "into_teacher": ["distill", str(teacher_dir), "--out", str(teacher_dir), "--overwrite"],
        "unknown_class": [
            "distill",
            str(teacher_dir),
            str(write_class_folders(tmp_path / "other", classes=4)),
            "--out",
            str(out),
        ],
        "no_model": ["distill", str(image_folder), "--out", str(out)],
        "bad_backbone": ["distill", str(teacher_dir), "--out", str(out), "--backbone", "no_such_net"],
    }[case]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autocls: error:") and expected in err and "\n" not in err
    assert not out.exists() and sorted(p.name for p in teacher_dir.iterdir()) == before


def test_ctrl_c_in_distill_says_what_it_left(monkeypatch, capsys, tmp_path: Path) -> None:
    """Only search keeps finished work on Ctrl-C; other commands say they did not finish."""
    from autocls.cli import commands

    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(commands.HANDLERS, "distill", interrupted)
    assert main(["distill", str(tmp_path), "--out", str(tmp_path / "s")]) == 130
    err = capsys.readouterr().err
    assert "interrupted before the command finished" in err and "finished trials" not in err
