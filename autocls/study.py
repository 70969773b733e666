"""The study driver: an Optuna study whose trials are stratified k-fold runs of the one trainer.

Intermediate values, and what the pruner compares
-------------------------------------------------
Optuna's pruners compare a trial's value at step ``s`` with other trials' values at the same ``s``,
one value per step, so each step number means the same thing in every trial:

* steps ``0 .. epochs-1``: validation accuracy after that epoch of the **first fold** (fold 0);
* step ``FOLD_STEP + f``: the mean best-epoch validation accuracy of folds ``0..f``.

A losing trial is thus stopped after a few epochs of its first fold, and a trial whose first folds
fall below the others' same folds stops before training the rest. A pruned trial ends PRUNED.
"""

from __future__ import annotations

import logging
import platform
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import timm
import torch

from autocls import __version__
from autocls.backbones import check_weights
from autocls.config import TrainConfig
from autocls.data import DataSpec, LabelledImages, check_folds
from autocls.errors import AutoclsError
from autocls.images import ImageStore, build_store
from autocls.progress import Reporter
from autocls.space import SearchSpace, load_space, space_from_dict
from autocls.trainer import EpochRecord, FoldResult, TrainingObserver, cross_validate, stratified_folds

logger = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path("autocls-runs")
DEFAULT_FOLDS = 5
DEFAULT_SPACE = "default"
FOLD_STEP = 1000  # intermediate steps from here on are running fold means (see the module docstring)
STUDY_ATTR = "autocls"  # the study user attribute that holds how the study was set up
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def default_storage(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(workdir / 'autocls.db').resolve()}"


def library_versions() -> dict[str, str]:
    return {
        "autocls": __version__,
        "timm": timm.__version__,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class StudySetup:
    """How a study was set up; stored on the study so later runs and refit use the same data and folds."""

    data: DataSpec
    space: dict[str, Any]
    folds: int
    seed: int
    weights: str | None = None

    def to_attr(self) -> dict[str, Any]:
        return {**asdict(self), "versions": library_versions()}

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudySetup:
        stored = study.user_attrs.get(STUDY_ATTR)
        if stored is None:
            raise AutoclsError(f"study {study.study_name!r} was not created by autocls search.")
        return cls(DataSpec(**stored["data"]), stored["space"], stored["folds"], stored["seed"], stored.get("weights"))

    @property
    def search_space(self) -> SearchSpace:
        return space_from_dict(self.space, name=self.space.get("name", "stored"))

    @property
    def weights_dir(self) -> Path | None:
        return Path(self.weights) if self.weights else None


@dataclass(frozen=True)
class PreparedData:
    """Discovered, decoded and split data, ready for the trainer."""

    images: LabelledImages
    store: ImageStore
    splits: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def load(cls, setup: StudySetup, size: int) -> PreparedData:
        data = setup.data.discover()
        check_folds(data, setup.folds)
        logger.info("found %d images in %d classes under %s", len(data), len(data.class_names), setup.data.source)
        data, store = build_store(data, size)
        check_folds(data, setup.folds)  # again: skipped unreadable files may leave a class short
        return cls(data, store, stratified_folds(data.labels, setup.folds, setup.seed))


def open_study(storage: str, study_name: str | None, create: bool = False, seed: int = 0) -> optuna.Study:
    """Load ``study_name`` from ``storage`` (the only study there when no name is given), or create it."""
    if create:
        return optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="maximize",
            sampler=make_sampler(seed),
            pruner=make_pruner(),
            load_if_exists=True,
        )
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if study_name is None:
        if len(names) != 1:
            raise AutoclsError(f"{storage} holds {len(names)} studies {names}; choose one with --study.")
        study_name = names[0]
    if study_name not in names:
        raise AutoclsError(f"no study {study_name!r} in {storage}; studies there: {names}.")
    return optuna.load_study(study_name=study_name, storage=storage, sampler=make_sampler(seed), pruner=make_pruner())


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Multivariate TPE models the dimensions jointly; group=True splits the conditional space
    # (momentum only under SGD, warmup only under cosine) into the sub-spaces that co-occur, so a
    # conditional dimension is modelled only with the trials that had it. constant_liar keeps
    # parallel workers from all proposing the same point while their trials run.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner() -> optuna.pruners.BasePruner:
    # Median rule at the same step (see the module docstring): no pruning before 3 trials have
    # finished, nor on the first epoch, whose accuracy says little.
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


class TrialObserver(TrainingObserver):
    """Reports a trial's epochs and folds to Optuna (and prunes), and forwards them to the console."""

    def __init__(self, trial: optuna.Trial, reporter: Reporter) -> None:
        self.trial = trial
        self.reporter = reporter
        self.folds: list[FoldResult] = []
        self.history: list[list[dict[str, float]]] = []

    def on_fold_start(self, fold: int, folds: int, epochs: int) -> None:
        self.history.append([])
        self.reporter.on_fold_start(fold, folds, epochs)

    def on_epoch_end(self, fold: int, record: EpochRecord) -> None:
        self.history[fold].append({k: round(float(v), 6) for k, v in asdict(record).items()})
        self.trial.set_user_attr("history", self.history)
        self.reporter.on_epoch_end(fold, record)
        if fold == 0:
            self._report(record.val_accuracy, record.epoch)

    def on_fold_end(self, result: FoldResult) -> None:
        self.folds.append(result)
        self.trial.set_user_attr("folds", fold_summaries(self.folds))
        self.reporter.on_fold_end(result)
        self._report(float(np.mean([f.best.val_accuracy for f in self.folds])), FOLD_STEP + result.fold)

    def _report(self, value: float, step: int) -> None:
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with {value:.4f}")


def fold_summaries(folds: list[FoldResult]) -> list[dict[str, float | int]]:
    """JSON-ready per-fold scores (plain floats: Optuna's user attributes must be JSON)."""
    return [
        {
            "fold": f.fold,
            "val_accuracy": round(float(f.best.val_accuracy), 6),
            "val_loss": round(float(f.best.val_loss), 6),
            "best_epoch": f.best_epoch,
            "epochs_run": len(f.history),
            "seconds": round(f.seconds, 2),
        }
        for f in folds
    ]


class Objective:
    """One trial: sample a configuration from the space, cross-validate it, return mean fold accuracy."""

    def __init__(self, setup: StudySetup, data: PreparedData, device: torch.device, reporter: Reporter) -> None:
        self.setup = setup
        self.space = setup.search_space
        self.data = data
        self.device = device
        self.reporter = reporter

    def __call__(self, trial: optuna.Trial) -> float:
        config = self.space.sample(trial)
        seed = self.setup.seed + trial.number
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("seed", seed)
        observer = TrialObserver(trial, self.reporter)
        self.reporter.set_title(f"trial {trial.number}")
        try:
            result = cross_validate(
                config,
                self.data.store,
                self.data.images.labels,
                self.data.splits,
                len(self.data.images.class_names),
                self.device,
                self.setup.weights_dir,
                seed,
                observer,
            )
        except AutoclsError as err:  # a fault of this configuration (no weights, diverged): FAIL, go on
            trial.set_user_attr("fail_reason", str(err))
            raise
        except torch.OutOfMemoryError as err:
            trial.set_user_attr("fail_reason", f"out of memory: {str(err).splitlines()[0]}")
            raise
        trial.set_user_attr("frozen_stages", result.folds[0].frozen_stages)
        trial.set_user_attr("oof_accuracy", round(result.oof_accuracy, 6))
        return result.mean_accuracy


def narrow_to_available_weights(space: SearchSpace, weights_dir: Path | None) -> SearchSpace:
    """Drop backbones whose pretrained weights cannot be found, saying so once, before any trial.

    Only when the space fixes ``pretrained = true``; a space that allows ``pretrained = false``
    keeps every backbone and a trial that needs missing weights fails with the reason.
    """
    if space.fixed.get("pretrained", TrainConfig.pretrained) is not True:
        return space
    data = space.to_dict()
    backbones = space.values_of("backbone")
    missing = {name: reason for name in backbones if (reason := check_weights(str(name), weights_dir))}
    if not missing:
        return space
    available = [b for b in backbones if b not in missing]
    if not available:
        raise AutoclsError(next(iter(missing.values())))
    logger.warning(
        "no pretrained weights for %s, left out of this study; e.g. %s",
        ", ".join(map(str, missing)),
        next(iter(missing.values())),
    )
    if "backbone" in data["fixed"]:
        return space
    data["params"]["backbone"]["choices"] = available
    return space_from_dict(data, name=space.name)


@dataclass
class SearchRequest:
    """What ``autocls search`` was asked; ``None`` means: as stored in the study, else the default."""

    data: DataSpec
    workdir: Path = DEFAULT_WORKDIR
    storage: str | None = None
    study_name: str | None = None
    space: str | None = None
    trials: int = 20
    timeout: float | None = None
    folds: int | None = None
    seed: int | None = None
    device: str = "auto"
    weights: str | None = None


def resolve_setup(study: optuna.Study, request: SearchRequest) -> StudySetup:
    """The study's stored setup, checked against the request; or a new one, stored on the study."""
    if STUDY_ATTR in study.user_attrs:
        setup = StudySetup.from_study(study)
        clashes = [
            f"{what} {asked} (the study has {stored})"
            for what, asked, stored in (
                ("--folds", request.folds, setup.folds),
                ("--seed", request.seed, setup.seed),
                ("--space", request.space, setup.space.get("name")),
                ("data", request.data.source, setup.data.source),
            )
            if asked is not None and asked != stored and not (what == "--space" and Path(asked).stem == stored)
        ]
        if clashes:
            raise AutoclsError(
                f"study {study.study_name!r} continues with its own settings, not {'; '.join(clashes)}; "
                "drop those options or start a new study with --study NAME."
            )
        return setup
    weights = request.weights
    space = narrow_to_available_weights(load_space(request.space or DEFAULT_SPACE), Path(weights) if weights else None)
    setup = StudySetup(
        data=request.data,
        space=space.to_dict(),
        folds=request.folds or DEFAULT_FOLDS,
        seed=request.seed if request.seed is not None else 0,
        weights=weights,
    )
    study.set_user_attr(STUDY_ATTR, setup.to_attr())
    return setup


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_search(request: SearchRequest, device: torch.device, reporter: Reporter | None = None) -> optuna.Study:
    """Run (or continue) a study until it has ``request.trials`` finished trials or time runs out."""
    reporter = reporter or Reporter(quiet=True)
    storage = request.storage or default_storage(request.workdir)
    study_name = request.study_name or request.data.name
    study = open_study(storage, study_name, create=True)
    setup = resolve_setup(study, request)
    # Seeded by the study's seed and its trial count: reproducible, and a continued study does not
    # replay the random start-up proposals of its first run.
    study.sampler = make_sampler(setup.seed + len(study.trials))
    data = PreparedData.load(setup, setup.search_space.max_resolution)
    study.set_user_attr("dataset", {"images": len(data.images), "classes": list(data.images.class_names)})
    study.set_metric_names(["cv_accuracy"])

    remaining = request.trials - count_finished(study)
    if remaining <= 0:
        reporter.print(f"study {study.study_name!r} already has {count_finished(study)} finished trials.")
        return study
    reporter.print(
        f"study {study.study_name!r}: {remaining} more trials of space {setup.space.get('name')!r}, "
        f"{setup.folds}-fold CV on {len(data.images)} images, {len(data.images.class_names)} classes, "
        f"device {device.type}"
    )
    objective = Objective(setup, data, device, reporter)
    with reporter.live(f"study {study.study_name}"):
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=request.timeout,
            catch=(AutoclsError, torch.OutOfMemoryError),
            callbacks=[
                optuna.study.MaxTrialsCallback(request.trials, states=FINISHED),
                lambda _study, trial: reporter.trial_finished(trial),
            ],
        )
    reporter.best_trials_table(study)
    return study
