"""A trial's figures and notes, uploaded to the study's artifact store, where optuna-dashboard shows them.

Each completed trial uploads its learning curves (per fold: train and validation loss, validation
score by epoch) and its out-of-fold confusion matrix (each label's average precision, for a
multi-label study) as SVG artifacts to the study's artifact store (:mod:`autocls.storage.artifacts`: the
workdir's ``artifacts/`` folder, a shared folder or S3), and gets a Markdown note summarising its
configuration and fold scores. ``autocls dashboard`` serves the study with that store, so the
figures of every machine's trials show.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.artifacts import upload_artifact
from sklearn.metrics import average_precision_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from autocls.report import plots
from autocls.report.tables import learning_curves
from autocls.train.config import TrainConfig
from autocls.train.cv import CVResult

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore


def oof_confusion(cv: CVResult, class_names: list[str]) -> np.ndarray:
    covered = ~np.isnan(cv.oof_probs[:, 0])
    return sk_confusion_matrix(cv.labels[covered], cv.oof_probs[covered].argmax(1), labels=np.arange(len(class_names)))


def oof_label_ap(cv: CVResult, class_names: list[str]) -> dict[str, float]:
    """Each label's average precision over a multi-label trial's out-of-fold probabilities."""
    covered = ~np.isnan(cv.oof_probs[:, 0])
    labels, probs = cv.labels[covered], cv.oof_probs[covered]
    return {
        name: float(average_precision_score(labels[:, j], probs[:, j])) if labels[:, j].any() else 0.0
        for j, name in enumerate(class_names)
    }


def trial_note(trial_number: int, config: TrainConfig, cv: CVResult, frozen_stages: int) -> str:
    """A Markdown summary of a trial for optuna-dashboard's note panel."""
    folds = ", ".join(f"{f.best.val_score:.4f}" for f in cv.folds)
    return (
        f"### trial {trial_number}: {config.backbone} at {config.resolution} px\n\n"
        f"- cv {cv.metric}: **{cv.mean_score:.4f}** (folds {folds}); out-of-fold {cv.oof_score():.4f}\n"
        f"- {frozen_stages} frozen stages (freeze {config.freeze}), head hidden {config.head_hidden}, "
        f"dropout {config.dropout}\n"
        f"- {config.optimizer} lr {config.lr:.3g} wd {config.weight_decay:.3g}"
        f"{f' SAM rho {config.sam_rho}' if config.sam_rho else ''}, {config.scheduler} schedule, "
        f"batch {config.batch_size}, up to {config.epochs} epochs (patience {config.patience})\n"
        f"- augmentation {config.augmentation}, random erasing {config.random_erasing}, mixup {config.mixup}, "
        f"cutmix {config.cutmix}, label smoothing {config.label_smoothing}, imbalance {config.imbalance}\n"
    )


def publish_trial(
    trial: optuna.Trial,
    store: ArtifactStore,
    *,
    config: TrainConfig,
    cv: CVResult,
    history: list[list[dict[str, float]]],
    class_names: list[str],
) -> None:
    """Upload a completed trial's figures as artifacts and attach its note."""
    from optuna_dashboard import save_note

    figures = learning_curves(history, cv.metric)
    if cv.labels.ndim == 1:
        figures["confusion_matrix.svg"] = plots.confusion_matrix(
            oof_confusion(cv, class_names), class_names, "out-of-fold confusion matrix"
        )
    else:  # multi-label: no confusion matrix; each label's out-of-fold average precision instead
        figures["label_ap.svg"] = plots.bar_chart(oof_label_ap(cv, class_names), "out-of-fold average precision")
    with tempfile.TemporaryDirectory() as tmp:
        for name, svg in figures.items():
            path = Path(tmp) / name
            path.write_text(svg, encoding="utf-8")
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="image/svg+xml")
    save_note(trial, trial_note(trial.number, config, cv, cv.folds[0].frozen_stages))
