"""Fold models of the best finished trials, kept in the study's artifact store so refit need not train them again.

Layout, as keys of an Optuna artifact store (:mod:`autocls.storage.artifacts`: a folder or S3)::

    autocls/<study>.<id>/trials/<number>/fold<i>.safetensors   the fold model as kept by the trainer
    autocls/<study>.<id>/trials/<number>/folds.safetensors     each fold's validation indices and probabilities

The keys follow from the study and the trial number alone, so every machine finds every trial. A
trial's fold models are written first and ``folds.safetensors`` last, each object whole (an S3 put
is atomic; the folder store writes aside and renames), so a trial whose ``folds.safetensors`` is
there is complete; deleting removes ``folds.safetensors`` first. A trial records where its models
went (user attribute ``fold_models``). Older places are read too: ``WORKDIR/STUDY/trials/<number>/``
(the layout before artifact stores, same file names) and the workdir's ``artifacts/`` folder where
the study's store is elsewhere now.

How many are kept is the study's (study attribute ``keep_trials``: the latest ``--keep-trials``
given to a search, default 5), ranked among all the study's completed trials, wherever they ran.

Deletion never takes what another worker or a refit is reading:

* only finished trials are deleted: a trial's models are written while it still runs;
* a trial that fell out of the best ``keep`` is deleted only after the deleting process has seen
  it out for ``grace_seconds`` (10 minutes; ``$AUTOCLS_KEEP_GRACE``). Readers read the best
  ``keep``, and a completed trial never re-enters them (values do not change: once ``keep``
  better trials completed, it stays out), so whoever read it as kept began before it fell out and
  has at least the grace period from then. Each process counts on its own monotonic clock from
  its own first sighting, which is after the fall-out: no two machines' clocks are compared;
* refit loads every candidate's objects before it trains or predicts anything, and a trial gone
  all the same (a read slower than the grace period) is trained again, or left out of ensemble
  selection, with a message.

The price: trials that fell out in a search's last ``grace_seconds`` stay until a later search
outlives the grace period, a few trials at most.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from autocls.runtime.errors import AutoclsError
from autocls.storage.artifacts import AtomicFileSystemArtifactStore, StudyArtifacts, read_bytes, write_bytes
from autocls.storage.records import FOLD_MODELS, TrialRecord, TrialRecorder
from autocls.storage.workdir import Workdir
from autocls.train.cv import CVResult
from autocls.train.history import EpochRecord, FoldResult

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

DEFAULT_KEEP = 5  # enough candidates for ensemble selection; about 70 MB per trial for Lite0 x 5 folds
KEEP_ATTR = "keep_trials"  # the study user attribute: how many best trials keep their fold models
GRACE_ENV = "AUTOCLS_KEEP_GRACE"
DEFAULT_GRACE_SECONDS = 600.0  # far longer than a refit takes to read 5 trials' fold models
INDEX = "folds.safetensors"


@dataclass(frozen=True)
class Place:
    """Where fold models are read (and, for the first place of a store, written): keys ``prefix + "<n>/<file>"``."""

    store: ArtifactStore
    prefix: str
    shown: str  # for messages and the trial's record
    legacy: bool = False  # the folder of the layout before artifact stores: listed, not known from trials

    def key(self, number: int, name: str) -> str:
        return f"{self.prefix}{number}/{name}"

    def listed(self) -> set[int]:
        """The trial numbers with a folder here (folder stores only: S3 is never listed)."""
        if not isinstance(self.store, FileSystemArtifactStore):
            return set()
        root = self.store._base_path / self.prefix
        return {int(p.name) for p in root.iterdir() if p.name.isdigit()} if root.is_dir() else set()


class TrialStore:
    """Saved fold models of the best ``keep`` trials of one study; the first place is written, all are read."""

    def __init__(
        self,
        places: Sequence[Place],
        keep: int = DEFAULT_KEEP,
        *,
        grace_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.places = list(places)
        self.keep = keep
        self.grace_seconds = grace_seconds if grace_seconds is not None else _grace_from_env()
        self.clock = clock
        self._out_since: dict[int, float] = {}  # trial -> when this process first saw it out of the best
        self._deleted: set[int] = set()  # by this process: not tried again

    @classmethod
    def in_folder(cls, root: str | Path, keep: int = DEFAULT_KEEP, *, grace_seconds: float | None = None) -> TrialStore:
        """A store of trial folders directly under ``root`` (``root/<number>/``): the older layout."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        return cls([Place(AtomicFileSystemArtifactStore(root), "", str(root))], keep, grace_seconds=grace_seconds)

    @property
    def shown(self) -> str:
        return self.places[0].shown

    def save(self, trial: optuna.Trial, cv: CVResult) -> None:
        """Write a running trial's fold models, ``folds.safetensors`` last: a reader sees all or nothing."""
        place = self.places[0]
        TrialRecorder(trial).kept(f"{place.shown.rstrip('/')}/{place.key(trial.number, '')}")
        folds = {}
        for fold in cv.folds:
            state = {k: v.contiguous() for k, v in fold.state_dict.items()}
            write_bytes(place.store, place.key(trial.number, f"fold{fold.fold}.safetensors"), save_tensors(state))
            folds[f"val_indices_{fold.fold}"] = torch.as_tensor(fold.val_indices, dtype=torch.int64)
            folds[f"val_probs_{fold.fold}"] = torch.as_tensor(fold.val_probs, dtype=torch.float32)
        write_bytes(place.store, place.key(trial.number, INDEX), save_tensors(folds))

    def has(self, number: int) -> bool:
        return self._place_of(number) is not None

    def _place_of(self, number: int) -> tuple[Place, bytes] | None:
        for place in self.places:
            try:
                return place, read_bytes(place.store, place.key(number, INDEX))
            except ArtifactNotFound:
                continue
        return None

    def load(
        self, trial: optuna.trial.FrozenTrial, labels: np.ndarray, num_classes: int, metric: str
    ) -> CVResult | None:
        """The trial's cross-validation, rebuilt from its saved folds and its recorded history; ``None``
        where its fold models are not here, or were deleted while they were read."""
        found = self._place_of(trial.number)
        if found is None:
            return None
        place, index = found
        folds_file = load_tensors(index)
        results = []
        record = TrialRecord.read(trial)
        for summary, history in zip(record.folds, record.history, strict=True):
            fold = summary["fold"]
            try:
                state_dict = load_tensors(read_bytes(place.store, place.key(trial.number, f"fold{fold}.safetensors")))
            except ArtifactNotFound:  # deleted as we read: the trial fell out of the best long ago
                return None
            results.append(
                FoldResult(
                    fold=fold,
                    history=[EpochRecord(**record) for record in history],
                    best_epoch=summary["best_epoch"],
                    val_indices=folds_file[f"val_indices_{fold}"].numpy(),
                    val_probs=folds_file[f"val_probs_{fold}"].numpy(),
                    frozen_stages=record.frozen_stages,
                    state_dict=state_dict,
                )
            )
        return CVResult(results, labels, num_classes, metric)

    def best(self, study: optuna.Study) -> list[int]:
        """The study's best ``keep`` completed trials (the study's recorded number, else this store's),
        best first: the trials whose fold models are kept."""
        keep = study_keep(study, self.keep)
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        return [t.number for t in sorted(done, key=lambda t: t.value, reverse=maximize)[:keep]]

    def kept(self, study: optuna.Study) -> list[int]:
        """The trials refit may take as candidates: the best ``keep``, and whatever the older layout's
        folder holds (a study searched before artifact stores kept its own ``--keep-trials``)."""
        best = self.best(study)
        legacy = set().union(*(place.listed() for place in self.places if place.legacy))
        return best + sorted(legacy - set(best))

    def retain_best(self, study: optuna.Study) -> set[int]:
        """Delete the fold models of finished trials out of the study's best ``keep`` for the grace
        period (see the module's docstring); return the best ``keep``."""
        best = set(self.best(study))
        now = self.clock()
        listed = set().union(*(place.listed() for place in self.places))
        for trial in study.get_trials(deepcopy=False):
            number = trial.number
            if number in best or number in self._deleted or not trial.state.is_finished():
                continue
            if FOLD_MODELS not in trial.user_attrs and number not in listed:
                continue  # never saved: nothing to delete
            since = self._out_since.setdefault(number, now)
            if now - since >= self.grace_seconds:
                self.delete(trial)
                self._deleted.add(number)
        return best

    def delete(self, trial: optuna.trial.FrozenTrial) -> None:
        """Remove a trial's objects from every place, ``folds.safetensors`` first (readers see it gone)."""
        recorded = {int(summary["fold"]) for summary in TrialRecord.read(trial).folds}
        for place in self.places:
            if isinstance(place.store, FileSystemArtifactStore):  # the whole folder, whatever it holds
                folder = place.store._base_path / place.prefix / str(trial.number)
                with contextlib.suppress(ArtifactNotFound):
                    place.store.remove(place.key(trial.number, INDEX))
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:  # the index names the folds it was written with
                index = load_tensors(read_bytes(place.store, place.key(trial.number, INDEX)))
                folds = recorded | {int(k.rsplit("_", 1)[1]) for k in index if k.startswith("val_indices_")}
                place.store.remove(place.key(trial.number, INDEX))
            except ArtifactNotFound:
                folds = recorded
            for fold in sorted(folds):
                with contextlib.suppress(ArtifactNotFound):
                    place.store.remove(place.key(trial.number, f"fold{fold}.safetensors"))

    def is_candidate(self, study: optuna.Study, value: float) -> bool:
        """Whether a trial scoring ``value`` would enter the study's best ``keep`` completed trials."""
        keep = study_keep(study, self.keep)
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        values = sorted((t.value for t in done), reverse=maximize)
        if len(values) < keep:
            return True
        return value > values[keep - 1] if maximize else value < values[keep - 1]

    def disk_bytes(self) -> int | None:
        """Bytes the kept fold models take in a folder store; ``None`` for S3 (not listed)."""
        place = self.places[0]
        if not isinstance(place.store, FileSystemArtifactStore):
            return None
        root = place.store._base_path / place.prefix
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0


def _grace_from_env() -> float:
    text = os.environ.get(GRACE_ENV)
    try:
        seconds = float(text) if text else DEFAULT_GRACE_SECONDS
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise AutoclsError(f"${GRACE_ENV} must be a number of seconds (0 or more); got {text!r}.")
    return seconds


def study_keep(study: optuna.Study, default: int = DEFAULT_KEEP) -> int:
    """How many best trials keep their fold models: the study's number, else ``default``."""
    return int(study.user_attrs.get(KEEP_ATTR) or default)


def study_trial_store(
    study: optuna.Study,
    artifacts: StudyArtifacts,
    workdir: Workdir,
    *,
    keep: int | None = None,
    record: bool = False,
    grace_seconds: float | None = None,
) -> TrialStore:
    """The trial store of ``study`` in ``artifacts``, reading the workdir's older places too. With
    ``record`` (a search), ``keep`` (when given) becomes the study's number for every machine."""
    if record and (keep is not None or KEEP_ATTR not in study.user_attrs):
        wanted = keep or study_keep(study)
        if study.user_attrs.get(KEEP_ATTR) != wanted:
            study.set_user_attr(KEEP_ATTR, wanted)
    places = [Place(artifacts.store, f"{artifacts.key}/trials/", artifacts.url)]
    local = workdir.artifacts
    if not artifacts.default and (local / artifacts.key).is_dir():
        places.append(Place(AtomicFileSystemArtifactStore(local), f"{artifacts.key}/trials/", str(local)))
    legacy = workdir.legacy_trials(study.study_name)
    if legacy.is_dir():
        places.append(Place(AtomicFileSystemArtifactStore(legacy), "", str(legacy), legacy=True))
    return TrialStore(places, study_keep(study, keep or DEFAULT_KEEP), grace_seconds=grace_seconds)
