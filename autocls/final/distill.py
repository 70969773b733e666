"""Distillation: one student model trained on a saved ensemble's soft targets, saved as a model.

A k-fold ensemble (or a blend of trials, with test-time flips) costs k or more forward passes per
image. Its averaged, calibrated probabilities are also better training targets than the labels
alone (Hinton et al., 2015, "Distilling the knowledge in a neural network"): they say which wrong
classes an image resembles. The student is trained on all the training images by the same
:class:`~autocls.train.trainer.Trainer` as every search trial, with the teacher's probabilities (mixed
with the one-hot labels by ``label_weight``) in place of the labels, and saved in the same format,
so predict, evaluate, export and report take it like any model. A multi-label teacher's label
probabilities are binary cross-entropy targets for its student, which keeps the teacher's thresholds.

The teacher's targets are computed once, on the un-augmented images; the student's augmentation
then sees a flipped or jittered image with the target of the original, as for a label. MixUp and
CutMix are turned off for the student: timm's implementation mixes hard labels only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import timm
import torch

from autocls.data.discover import DataSpec, LabelledImages, labels_in_order
from autocls.data.images import ImageStore, build_store
from autocls.model.ensemble import OOF_FILE, Ensemble, Member, check_model_destination, predict_members
from autocls.model.manifest import (
    DISTILLED,
    Distillation,
    FoldSummary,
    Manifest,
    MemberSpec,
    Provenance,
    Scores,
    TeacherMember,
    Thresholds,
    TrainingData,
)
from autocls.runtime.control import resolve_device
from autocls.runtime.devicememory import release_device_memory
from autocls.runtime.errors import AutoclsError
from autocls.storage.records import fold_summaries
from autocls.study.progress import Reporter
from autocls.study.setup import library_versions
from autocls.train.backbones import check_weights, create_classifier
from autocls.train.config import TrainConfig, check_setting
from autocls.train.cv import fit_fold
from autocls.train.feeding import model_to_device, pretrained_mean_std
from autocls.train.history import FoldResult
from autocls.train.trainer import Trainer

logger = logging.getLogger(__name__)

MONITOR_IMAGES = 512  # training images the student is scored on after each epoch (progress only)


@dataclass
class DistillResult:
    student: Ensemble
    directory: Path
    agreement: float  # share of the training images where the student's class is the teacher's (multi-label:
    # share of the images' label decisions)
    teacher_accuracy: float  # on the training images (which the teacher was trained on)
    student_accuracy: float  # likewise: both are in-sample; evaluate on held-out images to compare
    teacher_ms_per_image: float  # batched prediction of the training images on this device
    student_ms_per_image: float
    seconds: float


@dataclass
class Student:
    """A trained student before it is saved: its one model (on the device, in eval mode), its
    configuration (with a smaller batch where the device ran out of memory), its fold's history,
    and its probabilities of the training images with the milliseconds per image they took."""

    member: Member
    fold: FoldResult
    probs: np.ndarray
    ms_per_image: float


def distill(
    teacher_dir: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    labels_csv: str | Path | None = None,
    backbone: str | None = None,
    epochs: int | None = None,
    label_weight: float = 0.0,
    weights_dir: Path | None = None,
    device: torch.device | str = "auto",
    seed: int = 0,
    reporter: Reporter | None = None,
    overwrite: bool = False,
) -> DistillResult:
    """Train one student on the soft targets of the model in ``teacher_dir`` and save it to ``out``.

    ``data`` defaults to the training data the teacher's manifest names. The student's configuration
    is the teacher's (its member of most weight) with ``backbone`` and ``epochs`` replaced when given,
    and MixUp, CutMix and label smoothing off (the targets are already soft). Each image's target is
    ``(1 - label_weight) * teacher + label_weight * one_hot(label)``.
    """
    started = time.perf_counter()
    reporter = reporter or Reporter(quiet=True)
    check_setting("label_weight", label_weight)
    teacher_dir, out = Path(teacher_dir), Path(out)
    if out.expanduser().resolve() == teacher_dir.expanduser().resolve():
        raise AutoclsError(f"--out {out} is the teacher's folder; give another folder for the student.")
    check_model_destination(out, overwrite, "--overwrite")  # before any training, not after it
    device = resolve_device(device) if isinstance(device, str) else device
    teacher = Ensemble.load(teacher_dir, device)
    config = _checked_student_config(teacher.config, backbone, epochs, weights_dir)
    images = _training_images(teacher, data, labels_csv)
    images, store = build_store(images, teacher.decode_size)
    labels = labels_in_order(images, teacher.class_names, teacher.multilabel)
    reporter.print(f"teacher {teacher_dir}: predicting {len(labels)} training images")
    teacher_probs, teacher_ms = _timed(lambda: teacher.predict_images(store.images), len(labels))
    _off_device(teacher)  # from here on only its predictions are needed: the student gets its memory
    targets = soft_targets(teacher_probs, labels, label_weight)
    student = _train_student(
        teacher,
        config,
        store,
        labels=labels,
        targets=targets,
        weights_dir=weights_dir,
        device=device,
        seed=seed,
        reporter=reporter,
    )
    comparison = _compare(teacher, labels, teacher_probs, student.probs)
    manifest = _student_manifest(
        teacher,
        student,
        _distillation(
            teacher_dir, teacher, comparison, label_weight=label_weight, teacher_ms=teacher_ms, student=student
        ),
        data=TrainingData(
            spec=_student_data(teacher.manifest.data.spec, data, labels_csv),
            images=len(labels),
            fingerprint=images.fingerprint(),
        ),
        seed=seed,
    )
    # the teacher's out-of-fold table goes with the student: the report's data diagnostics
    oof = teacher_dir / OOF_FILE
    extra = {OOF_FILE: oof.read_text(encoding="utf-8", errors="surrogateescape")} if oof.is_file() else None
    saved = Ensemble([student.member], manifest, device)
    directory = saved.save(out, extra=extra, overwrite=overwrite)
    return DistillResult(
        saved,
        directory,
        comparison.agreement,
        comparison.teacher_accuracy,
        comparison.student_accuracy,
        teacher_ms,
        student.ms_per_image,
        time.perf_counter() - started,
    )


def _train_student(
    teacher: Ensemble,
    config: TrainConfig,
    store: ImageStore,
    *,
    labels: np.ndarray,
    targets: np.ndarray,
    weights_dir: Path | None,
    device: torch.device,
    seed: int,
    reporter: Reporter,
) -> Student:
    """The student trained by the search's :class:`~autocls.train.trainer.Trainer` on all the
    training images with the teacher's ``targets``, and its probabilities of those images."""
    metric = teacher.manifest.scores.metric
    trainer = Trainer(
        config,
        len(teacher.class_names),
        device,
        weights_dir=weights_dir,
        seed=seed,
        metric=metric,
        multilabel=teacher.multilabel,
    )
    rng = np.random.default_rng(seed)
    monitor = np.sort(rng.choice(len(labels), min(MONITOR_IMAGES, len(labels)), replace=False))
    with reporter.live(f"distilling into {config.backbone}"):
        reporter.on_fold_start(0, 1, config.epochs)
        everything, label_t, target_t = np.arange(len(labels)), torch.as_tensor(labels), torch.from_numpy(targets)
        fold, trainer = fit_fold(
            trainer,
            store,
            label_t,
            train_idx=everything,
            val_idx=monitor,
            fold=0,
            observer=reporter,
            folds=1,
            soft_targets=target_t,
        )
    config = trainer.config  # with a smaller batch if the device ran out of memory
    model = create_classifier(config, len(teacher.class_names), load_weights=False)
    model.load_state_dict(fold.state_dict)
    mean, std = pretrained_mean_std(model)
    member = Member(MemberSpec(config, 1.0, mean, std, folds=1), [model_to_device(model, device).eval()])
    probs, ms = _timed(
        lambda: predict_members(
            [member], store.images, device, classes=len(teacher.class_names), tta=(), multilabel=teacher.multilabel
        ),
        len(labels),
    )
    return Student(member, fold, probs, ms)


@dataclass(frozen=True)
class Comparison:
    agreement: float
    teacher_accuracy: float
    student_accuracy: float


def _compare(teacher: Ensemble, labels: np.ndarray, teacher_probs: np.ndarray, student_probs: np.ndarray) -> Comparison:
    """How often the student decides as the teacher does, and each one's accuracy (the exact label
    set, for a multi-label model), on the training images: single-label, images where the student's
    class is the teacher's; multi-label, (image, label) decisions the student shares with the
    teacher (a whole set of labels rarely matches early on)."""
    teacher_decisions, student_decisions = teacher.decisions(teacher_probs), teacher.decisions(student_probs)
    agreement = float((teacher_decisions == student_decisions).mean()) if len(teacher_decisions) else 0.0
    return Comparison(
        agreement,
        _same_share(teacher_decisions, labels),
        _same_share(student_decisions, labels),
    )


def _distillation(
    teacher_dir: Path,
    teacher: Ensemble,
    comparison: Comparison,
    *,
    label_weight: float,
    teacher_ms: float,
    student: Student,
) -> Distillation:
    """What the student's manifest records of its teacher and of how the two compare."""
    return Distillation(
        model=str(teacher_dir.expanduser().resolve()),
        members=tuple(TeacherMember(m.trial, m.weight, len(m.models)) for m in teacher.members),
        tta=teacher.tta,
        label_weight=label_weight,
        agreement_on_training_images=comparison.agreement,
        teacher_accuracy_on_training_images=comparison.teacher_accuracy,
        student_accuracy_on_training_images=comparison.student_accuracy,
        teacher_oof_score=teacher.manifest.scores.oof_score,
        teacher_ms_per_image=teacher_ms,
        student_ms_per_image=student.ms_per_image,
    )


def _student_manifest(
    teacher: Ensemble, student: Student, source: Distillation, *, data: TrainingData, seed: int
) -> Manifest:
    """The student's manifest, built once: one member of one model, no views or temperature, the
    teacher's thresholds for a multi-label teacher (the student learnt its probabilities)."""
    fold = student.fold
    thresholds = teacher.manifest.thresholds
    return Manifest(
        class_names=tuple(teacher.class_names),
        decode_size=teacher.decode_size,
        members=(student.member.spec,),
        thresholds=Thresholds(thresholds.values, thresholds.label_delimiter) if thresholds else None,
        distilled_from=source,
        scores=Scores(
            metric=teacher.manifest.scores.metric,
            folds=tuple(FoldSummary(**summary) for summary in fold_summaries([fold])),
            history=(tuple(fold.history),),
        ),
        data=data,
        provenance=Provenance(
            study=teacher.manifest.provenance.study, seed=seed, fold_models=DISTILLED, versions=library_versions()
        ),
    )


def _checked_student_config(
    teacher: TrainConfig, backbone: str | None, epochs: int | None, weights_dir: Path | None
) -> TrainConfig:
    """:func:`student_config`, with a backbone timm knows and, where pretrained, its weights at hand."""
    config = student_config(teacher, backbone, epochs)
    if not timm.is_model(config.backbone.split(".")[0]):
        raise AutoclsError(f"{config.backbone!r} is not a timm model name; see timm.list_models().")
    reason = check_weights(config.backbone, weights_dir) if config.pretrained else None
    if reason:
        raise AutoclsError(f"no pretrained weights for the student {config.backbone}: {reason}")
    return config


def student_config(teacher: TrainConfig, backbone: str | None, epochs: int | None) -> TrainConfig:
    """The teacher's configuration for the student, validated like a search space's values."""
    values = teacher.to_dict() | {"mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0}
    if backbone is not None:
        values["backbone"] = backbone
    if epochs is not None:
        values["epochs"] = epochs
    return TrainConfig.from_dict(values)


def soft_targets(teacher_probs: np.ndarray, labels: np.ndarray, label_weight: float) -> np.ndarray:
    """Rows that sum to 1: the teacher's probabilities mixed with the one-hot labels. Multi-label
    ``labels`` (a 0/1 matrix): each label's probability mixed with its 0/1 label, no sum to 1."""
    if labels.ndim == 2:
        return ((1.0 - label_weight) * teacher_probs + label_weight * labels).astype(np.float32)
    one_hot = np.eye(teacher_probs.shape[1], dtype=np.float32)[labels]
    probs = teacher_probs / teacher_probs.sum(axis=1, keepdims=True)
    return ((1.0 - label_weight) * probs + label_weight * one_hot).astype(np.float32)


def _same_share(a: np.ndarray, b: np.ndarray) -> float:
    """The share of images with the same class (or the same whole label set: rows of a 0/1 matrix)."""
    same = a == b
    return float((same if same.ndim == 1 else same.all(axis=1)).mean()) if len(same) else 0.0


def _timed(predict: Callable[[], np.ndarray], images: int) -> tuple[np.ndarray, float]:
    """``predict``'s probabilities and the milliseconds per image it took (batched, as predict runs)."""
    start = time.perf_counter()
    probs = predict()
    return probs, 1000 * (time.perf_counter() - start) / max(images, 1)


def _off_device(model: Ensemble) -> None:
    """Move ``model``'s fold models to host memory and hand their device memory back. All k fold
    models (of every member) of the teacher stayed on the GPU while the student trained, beside it."""
    for member in model.members:
        member.models = [m.to("cpu") for m in member.models]
    device, model.device = model.device, torch.device("cpu")
    release_device_memory(device)


def _student_data(teacher: DataSpec | None, data: str | Path | None, labels_csv: str | Path | None) -> DataSpec | None:
    """Where the student's training data is: ``data`` when given (the teacher's label delimiter
    kept), else the teacher's."""
    if data is None:
        return teacher
    given = DataSpec.of(data, labels_csv)
    if teacher is None:
        return given
    return replace(teacher, source=given.source, labels_csv=given.labels_csv, file_column=None, label_column=None)


def _training_images(teacher: Ensemble, data: str | Path | None, labels_csv: str | Path | None) -> LabelledImages:
    """``data``, or the teacher's training data as its manifest names it; classes must be the teacher's."""
    if data is not None:
        spec = DataSpec.of(data, labels_csv)
    else:
        spec = teacher.manifest.data.spec
        if spec is None:
            raise AutoclsError("the teacher's manifest names no training data; give the DATA folder or CSV.")
        if not Path(spec.source).exists():
            raise AutoclsError(
                f"the teacher's training data {spec.source} is not there (moved, or another machine); "
                "give the DATA folder or CSV."
            )
    images = spec.discover()
    unknown = sorted(set(images.class_names) - set(teacher.class_names))
    if unknown:
        raise AutoclsError(f"{spec.source}: classes {unknown} are not among the teacher's {teacher.class_names}.")
    return images
