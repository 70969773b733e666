"""Fold models of the best finished trials, kept in the workdir so refit need not train them again.

``WORKDIR/STUDY/trials/<number>/`` holds ``fold<i>.safetensors`` (the fold model as kept by the trainer) and
``folds.safetensors`` (each fold's validation indices and probabilities). After every completed
trial only the best ``keep`` trials' folders stay; the others are deleted as they fall out.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import optuna
import torch
from safetensors.torch import load_file, save_file

from autocls.cv import CVResult
from autocls.records import TrialRecord
from autocls.trainer import EpochRecord, FoldResult

DEFAULT_KEEP = 5  # enough candidates for ensemble selection; about 70 MB per trial for Lite0 x 5 folds


class TrialStore:
    """Saved fold models of the best ``keep`` trials of one study."""

    def __init__(self, root: str | Path, keep: int = DEFAULT_KEEP) -> None:
        self.root = Path(root)
        self.keep = keep

    def path(self, number: int) -> Path:
        return self.root / str(number)

    def has(self, number: int) -> bool:
        return (self.path(number) / "folds.safetensors").is_file()

    def save(self, number: int, cv: CVResult) -> None:
        """Write a trial's fold models (whole folder written aside, then renamed into place)."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{number}.", dir=self.root))
        try:
            folds = {}
            for fold in cv.folds:
                state = {k: v.contiguous() for k, v in fold.state_dict.items()}
                save_file(state, staging / f"fold{fold.fold}.safetensors")
                folds[f"val_indices_{fold.fold}"] = torch.as_tensor(fold.val_indices, dtype=torch.int64)
                folds[f"val_probs_{fold.fold}"] = torch.as_tensor(fold.val_probs, dtype=torch.float32)
            save_file(folds, staging / "folds.safetensors")
            shutil.rmtree(self.path(number), ignore_errors=True)
            staging.rename(self.path(number))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def load(self, trial: optuna.trial.FrozenTrial, labels: np.ndarray, num_classes: int, metric: str) -> CVResult:
        """The trial's cross-validation, rebuilt from its saved folds and its recorded history."""
        folds_file = load_file(self.path(trial.number) / "folds.safetensors")
        results = []
        record = TrialRecord.read(trial)
        for summary, history in zip(record.folds, record.history, strict=True):
            fold = summary["fold"]
            results.append(
                FoldResult(
                    fold=fold,
                    history=[EpochRecord(**record) for record in history],
                    best_epoch=summary["best_epoch"],
                    val_indices=folds_file[f"val_indices_{fold}"].numpy(),
                    val_probs=folds_file[f"val_probs_{fold}"].numpy(),
                    frozen_stages=record.frozen_stages,
                    state_dict=load_file(self.path(trial.number) / f"fold{fold}.safetensors"),
                )
            )
        return CVResult(results, labels, num_classes, metric)

    def retain_best(self, study: optuna.Study) -> set[int]:
        """Delete saved trials outside the study's best ``keep`` completed trials; return those kept.

        Only finished trials' folders are deleted: a worker saves its trial's fold models while the
        trial still runs, and another worker's cleanup must not take them before it completes.
        """
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        finished = {t.number for t in trials if t.state.is_finished()}
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        ranked = sorted(done, key=lambda t: t.value, reverse=maximize)
        best = {t.number for t in ranked[: self.keep]}
        if self.root.is_dir():
            for folder in self.root.iterdir():
                number = int(folder.name) if folder.name.isdigit() else None
                if folder.is_dir() and number in finished and number not in best:
                    shutil.rmtree(folder, ignore_errors=True)
        return best

    def disk_bytes(self) -> int:
        """Bytes the kept fold models take on disk."""
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) if self.root.is_dir() else 0

    def is_candidate(self, study: optuna.Study, value: float) -> bool:
        """Whether a trial scoring ``value`` would enter the best ``keep`` completed trials."""
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        values = sorted((t.value for t in done), reverse=maximize)
        if len(values) < self.keep:
            return True
        return value > values[self.keep - 1] if maximize else value < values[self.keep - 1]
