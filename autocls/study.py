"""The study driver: an Optuna study whose trials are stratified k-fold runs of the one trainer.

Intermediate values, and what the pruner compares
-------------------------------------------------
Optuna's pruners compare a trial's value at step ``s`` with other trials' values at the same ``s``,
one value per step, so each step number means the same thing in every trial:

* steps ``0 .. epochs-1``: the validation score after that epoch of the **first fold** (fold 0);
* step ``FOLD_STEP + f``: the mean kept-epoch validation score of folds ``0..f``.

:class:`autocls.pruning.FoldAwarePruner` applies Optuna's median rule to the epoch steps, so a
losing trial stops after a few epochs of its first fold, and a stricter rule to the fold steps, so
a trial whose first folds fall clearly below the best trials' same folds stops before training the
rest. A pruned trial ends PRUNED.

Time budget
-----------
``--timeout`` bounds the whole command: a trial or a fold does not start when the time left cannot
hold it (estimated from finished trials and from the trial's own first fold), and a running trial
is stopped after the epoch that crosses the deadline, so the command ends within one epoch of it.
A trial stopped so is recorded FAIL with the reason; the next run retries it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import timm
import torch
from optuna.artifacts import FileSystemArtifactStore

from autocls import __version__
from autocls.atomic import write_atomically
from autocls.backbones import check_weights
from autocls.config import TrainConfig
from autocls.cost import ESTIMATE_ATTR, CostModel
from autocls.data import DataSpec, LabelledImages, check_folds, describe_changes, file_index, typical_side
from autocls.errors import AutoclsError
from autocls.images import ImageStore, build_store
from autocls.metrics import default_metric, get_metric
from autocls.portfolio import DataStats, portfolio
from autocls.progress import Reporter
from autocls.pruning import FOLD_STEP, FoldAwarePruner
from autocls.reports import artifact_store, publish_trial
from autocls.space import SearchSpace, load_space, space_from_dict
from autocls.storage import default_url, open_storage, redact
from autocls.trainer import (
    CVResult,
    EpochRecord,
    FoldResult,
    TrainingObserver,
    cross_validate,
    derive_seed,
    folds_hash,
    stratified_folds,
)
from autocls.trialstore import TrialStore
from autocls.workers import WORKER_ATTR, queue_again, recover_dead_local_trials, this_worker

logger = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path("autocls-runs")
DEFAULT_FOLDS = 5
DEFAULT_SPACE = "default"
CPU_SPACE = "fast"
STUDY_ATTR = "autocls"  # the study user attribute that holds how the study was set up
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 10
MAX_CONSECUTIVE_SKIPS = 10  # configurations in a row too long for the time left: stop (a skip costs ~1 s)
CACHE_DIR = "cache"  # decoded-image arrays, in the workdir


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
    metric: str = "accuracy"
    weights: str | None = None

    def to_attr(self) -> dict[str, Any]:
        return {**asdict(self), "versions": library_versions()}

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudySetup:
        stored = dict(study.user_attrs.get(STUDY_ATTR) or {})
        if not stored:
            raise AutoclsError(f"study {study.study_name!r} was not created by autocls search.")
        stored.pop("versions", None)
        return cls(**{**stored, "data": DataSpec(**stored["data"])})

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
    def load(
        cls, setup: StudySetup, size: int, cache_dir: Path | None = None, discovered: LabelledImages | None = None
    ) -> PreparedData:
        data = discovered or setup.data.discover()
        check_folds(data, setup.folds)
        logger.info("found %d images in %d classes under %s", len(data), len(data.class_names), setup.data.source)
        data, store = build_store(data, size, cache_dir)
        check_folds(data, setup.folds)  # again: skipped unreadable files may leave a class short
        return cls(data, store, stratified_folds(data.labels, setup.folds, setup.seed))


Storage = optuna.storages.BaseStorage


def study_names(storage: Storage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage)]


def open_study(url: str, study_name: str | None) -> optuna.Study:
    """Load ``study_name`` from the storage at ``url``, or the only study there when no name is given."""
    storage = open_storage(url)
    names = study_names(storage)
    if study_name is None:
        if len(names) != 1:
            raise AutoclsError(f"{redact(url)} holds {len(names)} studies {names}; choose one with --study.")
        study_name = names[0]
    if study_name not in names:
        raise AutoclsError(f"no study {study_name!r} in {redact(url)}; studies there: {names}.")
    return optuna.load_study(study_name=study_name, storage=storage, sampler=make_sampler(0), pruner=make_pruner())


def make_sampler(seed: int, kind: str = "tpe") -> optuna.samplers.BaseSampler:
    # Multivariate TPE models the dimensions jointly; group=True splits the conditional space
    # (momentum only under SGD, warmup only under cosine) into the sub-spaces that co-occur, so a
    # conditional dimension is modelled only with the trials that had it. constant_liar keeps
    # parallel workers from all proposing the same point while their trials run.
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner(enabled: bool = True) -> optuna.pruners.BasePruner:
    return FoldAwarePruner() if enabled else optuna.pruners.NopPruner()


class BudgetExhausted(AutoclsError):
    """The --timeout budget cannot hold more training."""


class TrialSkipped(AutoclsError):
    """A configuration that cannot finish in the time left, not trained. Recorded FAIL (with a
    ``skipped`` reason) rather than PRUNED: it must not count toward ``--trials``, and TPE, which
    ignores failed trials, must not learn that its region is bad: it was only too long for the time left."""


SKIPPED_ATTR = "skipped"


class Budget:
    """A wall-clock deadline for the whole command; ``None`` seconds means no deadline."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = time.monotonic() + seconds if seconds else None

    def left(self) -> float:
        return self.deadline - time.monotonic() if self.deadline else float("inf")

    def check(self, needed: float, what: str) -> None:
        if needed > self.left():
            raise BudgetExhausted(f"--timeout: {self.left():.0f}s left, {what} needs about {needed:.0f}s")


class TrialObserver(TrainingObserver):
    """Reports a trial's epochs and folds to Optuna (and prunes), records them, enforces the budget."""

    def __init__(self, trial: optuna.Trial, reporter: Reporter, budget: Budget) -> None:
        self.trial = trial
        self.reporter = reporter
        self.budget = budget
        self.folds: list[FoldResult] = []
        self.history: list[list[dict[str, float]]] = []

    def on_fold_start(self, fold: int, folds: int, epochs: int) -> None:
        if self.folds:
            self.budget.check(float(np.mean([f.seconds for f in self.folds])), f"fold {fold + 1}")
        self.history.append([])
        self.reporter.on_fold_start(fold, folds, epochs)

    def on_epoch_end(self, fold: int, record: EpochRecord) -> None:
        self.history[fold].append({k: round(float(v), 6) for k, v in asdict(record).items() if v is not None})
        self.trial.set_user_attr("history", self.history)
        self.reporter.on_epoch_end(fold, record)
        if fold == 0:
            self._report(record.val_score, record.epoch)
        self.budget.check(0.0, "the next epoch")

    def on_fold_end(self, result: FoldResult) -> None:
        self.folds.append(result)
        self.trial.set_user_attr("folds", fold_summaries(self.folds))
        self.reporter.on_fold_end(result)
        self._report(float(np.mean([f.best.val_score for f in self.folds])), FOLD_STEP + result.fold)

    def _report(self, value: float, step: int) -> None:
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with {value:.4f}")


def fold_summaries(folds: list[FoldResult]) -> list[dict[str, float | int]]:
    """JSON-ready per-fold scores (plain floats: Optuna's user attributes must be JSON)."""
    return [
        {
            "fold": f.fold,
            "score": round(float(f.best.val_score), 6),
            "val_loss": round(float(f.best.val_loss), 6),
            "best_epoch": f.best_epoch,
            "epochs_run": len(f.history),
            "seconds": round(f.seconds, 2),
        }
        for f in folds
    ]


class Objective:
    """One trial: sample a configuration from the space, cross-validate it, return the mean fold score."""

    def __init__(
        self,
        setup: StudySetup,
        data: PreparedData,
        device: torch.device,
        reporter: Reporter,
        budget: Budget,
        store: TrialStore | None = None,
        artifacts: FileSystemArtifactStore | None = None,
        cost: CostModel | None = None,
    ) -> None:
        self.cost = cost
        self.store = store
        self.artifacts = artifacts
        self.setup = setup
        self.space = setup.search_space
        self.data = data
        self.device = device
        self.reporter = reporter
        self.budget = budget
        self.records = {
            "folds_hash": folds_hash(data.splits),
            "data_fingerprint": data.images.fingerprint(),
            "versions": library_versions(),
        }

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, this_worker())  # a later run on this host recovers it if we die
        try:
            config, result, history = self._run(trial)
        except TrialSkipped:
            raise
        except BudgetExhausted as err:  # not a fault of the configuration: the next run trains it again
            trial.set_user_attr("fail_reason", f"{err}; queued again for the next run")
            trial.set_user_attr("stopped_by", "timeout")
            queue_again(trial.study, trial)
            raise
        except AutoclsError as err:  # a fault of this configuration (no weights, diverged): FAIL, go on
            trial.set_user_attr("fail_reason", str(err))
            raise
        except torch.OutOfMemoryError as err:
            trial.set_user_attr("fail_reason", f"out of memory: {str(err).splitlines()[0]}")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C); queued again for the next run")
            queue_again(trial.study, trial)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as err:  # any other fault of one trial must not end a search of hours
            trial.set_user_attr("fail_reason", f"{err.__class__.__name__}: {err}")
            logger.warning("trial %d failed: %s: %s", trial.number, err.__class__.__name__, err)
            raise
        if self.store is not None and self.store.is_candidate(trial.study, result.mean_score):
            self.store.save(trial.number, result)  # refit --best can then reuse these fold models
        if self.artifacts is not None:
            try:
                names = list(self.data.images.class_names)
                publish_trial(trial, self.artifacts, config, result, history, names)
            except Exception as err:  # figures are a convenience: never fail a finished trial for them
                logger.warning("trial %d: could not upload its figures (%s)", trial.number, err)
        return result.mean_score

    def _run(self, trial: optuna.Trial) -> tuple[TrainConfig, CVResult, list[list[dict[str, float]]]]:
        config = self.space.sample(trial)
        seed = derive_seed(self.setup.seed, trial.number)  # folds derive theirs from it: no two collide
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("seed", seed)
        for key, value in self.records.items():
            trial.set_user_attr(key, value)
        self._skip_if_too_long(trial, config)
        observer = TrialObserver(trial, self.reporter, self.budget)
        self.reporter.set_title(f"trial {trial.number}")
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
            keep_models=self.store is not None,
            metric=self.setup.metric,
        )
        trial.set_user_attr("frozen_stages", result.folds[0].frozen_stages)
        trial.set_user_attr("oof_score", round(result.oof_score(), 6))
        return config, result, observer.history

    def _skip_if_too_long(self, trial: optuna.Trial, config: TrainConfig) -> None:
        """Skip (before any training) a configuration that cannot finish in the time left."""
        if self.cost is None or self.budget.deadline is None:
            return
        images, folds = len(self.data.images), self.setup.folds
        self.cost.learn_from(trial.study.get_trials(deepcopy=False, states=FINISHED))
        per_epoch = self.cost.epoch_seconds(config, images - images // folds, images // folds)
        trial.set_user_attr(ESTIMATE_ATTR, round(per_epoch, 4))
        needed = self.cost.trial_seconds(config, images, folds)
        if needed > self.budget.left():
            reason = f"needs about {needed:.0f}s, {self.budget.left():.0f}s left"
            trial.set_user_attr(SKIPPED_ATTR, reason)
            raise TrialSkipped(f"skipped: {reason}")


def narrow_to_available_weights(space: SearchSpace, weights_dir: Path | None, quiet: bool = False) -> SearchSpace:
    """Drop backbones whose pretrained weights cannot be found, saying so once, before any trial.

    Only when the space fixes ``pretrained = true``; where ``pretrained`` is searched, every backbone
    stays (it can train from scratch) and a trial that needs missing weights fails with the reason.
    """
    can_pretrain = True in space.values_of("pretrained")
    backbones = [str(b) for b in space.values_of("backbone")]
    missing = {name: reason for name in backbones if can_pretrain and (reason := check_weights(name, weights_dir))}
    if not missing:
        return space
    example = next(iter(missing.values()))
    if space.values_of("pretrained") != [True]:
        if not quiet:
            logger.warning("no pretrained weights for %s; those trials train from scratch or fail", ", ".join(missing))
        return space
    available = [b for b in backbones if b not in missing]
    if not available:
        raise AutoclsError(example)
    if not quiet:
        logger.warning("no pretrained weights for %s, left out of this study; e.g. %s", ", ".join(missing), example)
    data = space.to_dict()
    data["params"]["backbone"]["choices"] = available
    return space_from_dict(data, name=space.name)


@dataclass
class SearchRequest:
    """What ``autocls search`` was asked; ``None`` means: as stored in the study, else the default."""

    data: DataSpec
    workdir: Path = DEFAULT_WORKDIR
    storage: str | None = None
    study_name: str | None = None
    space: str | SearchSpace | None = None  # a name, a .toml path or a loaded space
    trials: int = 20
    timeout: float | None = None
    folds: int | None = None
    seed: int | None = None
    metric: str | None = None
    device: str = "auto"
    weights: str | None = None
    sampler: str = "tpe"
    pruning: bool = True
    warm_start: bool = True  # enqueue the portfolio's recipes first

    def __post_init__(self) -> None:
        """Every setting checked before anything is written: a refused value must not be stored."""
        problems = []
        if not (isinstance(self.trials, int) and self.trials >= 1):
            problems.append(f"trials must be a positive number of finished trials; got {self.trials!r}")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            problems.append(f"timeout must be a positive number of seconds; got {self.timeout!r}")
        if self.folds is not None and not (isinstance(self.folds, int) and self.folds >= 2):
            problems.append(f"folds must be an integer of at least 2; got {self.folds!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and self.seed >= 0):
            problems.append(f"seed must be a non-negative integer; got {self.seed!r}")
        if self.weights is not None and not Path(self.weights).expanduser().is_dir():
            problems.append(f"weights must be a folder of checkpoints; {self.weights} is not one")
        if problems:
            raise AutoclsError("; ".join(problems) + ".")


def _check_continuation(study: optuna.Study, setup: StudySetup, request: SearchRequest) -> None:
    clashes = [
        f"{what} {asked} (the study has {stored})"
        for what, asked, stored in (
            ("--folds", request.folds, setup.folds),
            ("--seed", request.seed, setup.seed),
            ("--metric", request.metric, setup.metric),
            ("--space", _space_name(request.space), setup.space.get("name")),
            ("data", request.data.source, setup.data.source),
        )
        if asked is not None and asked != stored and not (what == "--space" and Path(asked).stem == stored)
    ]
    if clashes:
        raise AutoclsError(
            f"study {study.study_name!r} continues with its own settings, not {'; '.join(clashes)}; "
            "drop those options or start a new study with --study NAME."
        )


def _warn_if_space_changed(setup: StudySetup, asked: str | SearchSpace | None) -> None:
    if asked is None:
        return
    try:
        current = asked if isinstance(asked, SearchSpace) else load_space(asked)
        # the stored space left out backbones without weights: compare like with like, or the
        # warning came on every run although nothing changed
        current = narrow_to_available_weights(current, setup.weights_dir, quiet=True)
    except AutoclsError:
        return
    if current.to_dict() != setup.search_space.to_dict():
        logger.warning(
            "space %r has changed since this study started; the study keeps its own space "
            "(start a new study with --study NAME to search the new one)",
            current.name,
        )


def _default_space(request: SearchRequest) -> str:
    """``default`` where a GPU will train; on a CPU, ``fast``, whose trials finish in minutes there
    (a ViT at 224 px trains at a few images a second on two cores)."""
    on_gpu = request.device.startswith("cuda") or (request.device == "auto" and torch.cuda.is_available())
    if on_gpu:
        return DEFAULT_SPACE
    logger.info("no GPU: searching the CPU-sized 'fast' space (--space default to override)")
    return CPU_SPACE


def _space_name(space: str | SearchSpace | None) -> str | None:
    return space.name if isinstance(space, SearchSpace) else space


def create_or_continue(
    storage: Storage, study_name: str, request: SearchRequest, cost: CostModel | None = None
) -> tuple[optuna.Study, StudySetup]:
    """Continue ``study_name`` with its stored setup, or create it: metric, space and warm start.

    With a ``cost`` model and a ``request.timeout``, the warm-start recipes are sized to the budget.
    """
    if study_name in study_names(storage):
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner())
        if STUDY_ATTR in study.user_attrs:
            setup = StudySetup.from_study(study)
            _check_continuation(study, setup, request)
            _warn_if_space_changed(setup, request.space)
            return study, setup
    data = request.data.discover()
    check_folds(data, request.folds or DEFAULT_FOLDS)  # before the study and its settings are stored
    metric = request.metric or default_metric(data.class_counts())
    if request.metric is None and metric != "accuracy":
        logger.warning("classes are imbalanced 5:1 or more: optimising balanced_accuracy (--metric to change)")
    get_metric(metric)
    weights = request.weights
    space = (
        request.space
        if isinstance(request.space, SearchSpace)
        else load_space(request.space or _default_space(request))
    )
    space = narrow_to_available_weights(space, Path(weights) if weights else None)
    setup = StudySetup(
        data=request.data,
        space=space.to_dict(),
        folds=request.folds or DEFAULT_FOLDS,
        seed=request.seed if request.seed is not None else 0,
        metric=metric,
        weights=weights,
    )
    # read before the study exists: a failure here must not leave a study without its warm start
    stats = DataStats(len(data), len(data.class_names), typical_side(data.paths))
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction=get_metric(metric).direction,
        pruner=make_pruner(),
        load_if_exists=True,  # a study created beforehand (e.g. with enqueued trials) is adopted
    )
    study.set_user_attr(STUDY_ATTR, setup.to_attr())
    study.set_metric_names([metric])
    if not study.trials and request.warm_start:
        seconds = None
        if cost is not None and request.timeout:

            def seconds(params: dict[str, Any]) -> float:
                return cost.trial_seconds(TrainConfig.from_dict({**space.fixed, **params}), len(data), setup.folds)

        for params in portfolio(space, stats, seconds, request.timeout):
            study.enqueue_trial(params, user_attrs={"portfolio": True}, skip_if_exists=True)
    return study, setup


DATA_ATTR = "dataset"  # study user attribute: images, classes and the fingerprint of the files searched
DATA_INDEX_FILE = "files.json"  # beside the study's fold models: each file's size, time and class


class DataChangedError(AutoclsError):
    """The files under a study's data source are not those its trials were computed on."""


def check_same_data(study: optuna.Study, discovered: LabelledImages, index_file: Path) -> None:
    """Refuse to continue ``study`` on files other than those its finished trials saw.

    Trials of one study are compared with each other, ranked, pruned against each other and
    ensembled: mixing trials of other data makes all of that silently wrong.
    """
    recorded = study.user_attrs.get(DATA_ATTR, {}).get("files_fingerprint")
    if recorded is None or recorded == discovered.fingerprint():
        return
    try:
        before = json.loads(index_file.read_text(encoding="utf-8"))["files"]
        changes = describe_changes(before, file_index(discovered))
    except (OSError, ValueError, KeyError):
        changes = "the files' names, sizes, times or classes differ"
    names = set(study_names(study._storage))
    fresh = next(f"{study.study_name}-{n}" for n in range(2, 10_000) if f"{study.study_name}-{n}" not in names)
    raise DataChangedError(
        f"the data of study {study.study_name!r} changed since it was searched ({changes}), and its "
        f"trials were computed on the old files; search the new data in a new study: --study {fresh}."
    )


def record_data(study: optuna.Study, discovered: LabelledImages, data: PreparedData, index_file: Path) -> None:
    """Record what the study searches, once: the files' fingerprint on the study, their index on disk."""
    if "files_fingerprint" in study.user_attrs.get(DATA_ATTR, {}):
        return
    index = {"fingerprint": discovered.fingerprint(), "files": file_index(discovered)}
    write_atomically(index_file, json.dumps(index).encode())
    study.set_user_attr(
        DATA_ATTR,
        {
            "images": len(data.images),
            "classes": list(data.images.class_names),
            "files_fingerprint": index["fingerprint"],
        },
    )


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class _StopConditions:
    """Study callback: stop on the time budget, when nothing sampled fits in the time left any more,
    or after too many failures in a row."""

    def __init__(self, budget: Budget, reporter: Reporter) -> None:
        self.budget = budget
        self.reporter = reporter
        self.failures = 0
        self.skips = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.reporter.trial_finished(trial)
        skipped = SKIPPED_ATTR in trial.user_attrs
        self.failures = self.failures + 1 if trial.state == optuna.trial.TrialState.FAIL and not skipped else 0
        self.skips = self.skips + 1 if skipped else 0
        if trial.user_attrs.get("stopped_by") == "timeout":
            study.stop()
        elif self.skips >= MAX_CONSECUTIVE_SKIPS:
            self.reporter.print(f"stopping: the last {self.skips} configurations would not finish in the time left")
            study.stop()
        elif self.failures >= MAX_CONSECUTIVE_FAILURES:
            logger.warning("stopping: the last %d trials failed (see their fail_reason)", self.failures)
            study.stop()


def run_search(request: SearchRequest, device: torch.device, reporter: Reporter | None = None) -> optuna.Study:
    """Run (or continue) a study until it has ``request.trials`` finished trials or time runs out."""
    reporter = reporter or Reporter(quiet=True)
    budget = Budget(request.timeout)
    storage = open_storage(request.storage or default_url(request.workdir))
    cost = CostModel(device, request.workdir / CACHE_DIR / "speeds.json")
    study, setup = create_or_continue(storage, request.study_name or request.data.name, request, cost)
    # Seeded by the study's seed and its trial count: reproducible, and a continued study does not
    # replay the random start-up proposals of its first run.
    worker = int(os.environ.get("AUTOCLS_WORKER", "0"))  # set by --workers for each process
    study.sampler = make_sampler(setup.seed + len(study.trials) + 7919 * worker, request.sampler)
    study.pruner = make_pruner(request.pruning)
    discovered = setup.data.discover()
    index_file = request.workdir / study.study_name / DATA_INDEX_FILE
    check_same_data(study, discovered, index_file)
    if "AUTOCLS_WORKER" not in os.environ:  # --workers recovers once, before it starts its workers
        recover_dead_local_trials(study)
    data = PreparedData.load(setup, setup.search_space.max_resolution, request.workdir / CACHE_DIR, discovered)
    record_data(study, discovered, data, index_file)

    remaining = request.trials - count_finished(study)
    if remaining <= 0:
        reporter.print(f"study {study.study_name!r} already has {count_finished(study)} finished trials.")
        return study
    reporter.print(
        f"study {study.study_name!r}: {remaining} more trials of space {setup.space.get('name')!r}, "
        f"{setup.folds}-fold CV of {setup.metric} on {len(data.images)} images, "
        f"{len(data.images.class_names)} classes, device {device.type}"
    )
    store = TrialStore(request.workdir / study.study_name / "trials")
    objective = Objective(setup, data, device, reporter, budget, store, artifact_store(request.workdir), cost)
    with reporter.live(f"study {study.study_name}"):
        study.optimize(
            objective,
            n_trials=None,
            timeout=request.timeout,
            catch=(Exception,),  # recorded FAIL with fail_reason; KeyboardInterrupt still stops
            callbacks=[
                optuna.study.MaxTrialsCallback(request.trials, states=FINISHED),
                _StopConditions(budget, reporter),
                lambda study, _trial: store.retain_best(study),
            ],
        )
    reporter.best_trials_table(study, setup.metric)
    return study
