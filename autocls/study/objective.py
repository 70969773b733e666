"""One trial: sample a configuration, cross-validate it, report to the pruner, record and save it."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import optuna
import torch

from autocls.runtime.control import derive_seed
from autocls.runtime.errors import AutoclsError, WeightsNotFoundError
from autocls.storage.records import (
    LIMIT_SKIP,
    MEMBER_OF,
    WEIGHTS_SKIP,
    TrialRecorder,
    epoch_summary,
    shrunk_attrs,
)
from autocls.storage.trials import TrialStore
from autocls.study.budget import Budget, BudgetExhausted, TimePlan, TrialSkipped
from autocls.study.limits import fold_models_cost
from autocls.study.progress import Reporter
from autocls.study.pruning import FOLD_STEP
from autocls.study.publish import publish_trial
from autocls.study.recovery import queue_again, this_worker
from autocls.study.setup import StudySetup, library_versions
from autocls.study.studydata import PreparedData
from autocls.train.callbacks import TrainingObserver
from autocls.train.config import TrainConfig
from autocls.train.cv import CVResult, cross_validate, folds_hash
from autocls.train.history import EpochRecord, FoldResult

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

logger = logging.getLogger(__name__)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class TrialObserver(TrainingObserver):
    """Reports a trial's epochs and folds to Optuna (and prunes), records them, enforces the budget."""

    def __init__(self, trial: optuna.Trial, reporter: Reporter, budget: Budget) -> None:
        self.trial = trial
        self.recorder = TrialRecorder(trial)
        self.reporter = reporter
        self.budget = budget
        self.folds: list[FoldResult] = []
        self.history: list[list[dict[str, float]]] = []
        self.shortened: dict[int, str] = {}  # fold -> why it trains fewer epochs than configured
        self._setup_seconds: list[float] = []  # per finished fold: its time outside its epochs (model, weights)
        self._folds = self._epochs = 0  # of the running fold
        self._started = 0.0
        self._grace = 0.0  # how far past the deadline the running fold may end (one epoch, if shortened)

    def fold_epochs(self, fold: int, folds: int, epochs: int) -> int:
        """``epochs`` when the folds left (``fold`` and the ones after it, of ``folds``) fit the time
        left at the pace of the folds done so far; else fewer, to end by the deadline
        (:meth:`autocls.study.budget.Budget.shortened_epochs`), recorded and told."""
        self._grace = 0.0
        if not self.folds:  # the first fold: the trial was admitted on the training-time model's estimate
            return epochs
        per_epoch = sum(f.seconds for f in self.folds) / max(1, sum(len(f.history) for f in self.folds))
        setup = float(np.mean(self._setup_seconds)) if self._setup_seconds else 0.0
        remaining = folds - fold
        what = f"fold {fold + 1}" + (f" with the {remaining - 1} after it" if remaining > 1 else "")
        shortened = self.budget.shortened_epochs(
            epochs=epochs, folds_left=remaining, epoch_seconds=per_epoch, setup_seconds=setup, what=what
        )
        if shortened is None:
            return epochs
        fits, left = shortened
        note = f"{fits} of {epochs} epochs to end by the deadline ({left:.0f}s left, {per_epoch:.0f}s an epoch)"
        self.shortened[fold] = note
        self.recorder.shortened({str(f + 1): why for f, why in self.shortened.items()})
        self.reporter.print(f"trial {self.trial.number}: fold {fold + 1} trains {note}")
        self._grace = per_epoch  # sized to end at the deadline: an epoch slower than the last folds' still ends it
        return fits

    def on_fold_start(self, fold: int, folds: int, epochs: int) -> None:
        self._folds, self._epochs, self._started = folds, epochs, time.monotonic()
        self.history.append([])
        self.reporter.on_fold_start(fold, folds, epochs)

    def on_epoch_end(self, fold: int, record: EpochRecord) -> None:
        self.history[fold].append(epoch_summary(record))
        self.recorder.progress(self.history)
        self.reporter.on_epoch_end(fold, record)
        last_epoch = record.epoch + 1 >= self._epochs
        if fold == 0:  # the last epoch of a hold-out split (one fold) is a finished trial: not pruned
            self._report(record.val_score, record.epoch, prune=not (last_epoch and self._folds == 1))
        if not last_epoch and self.budget.left() < -self._grace:  # a fold's last epoch is kept
            raise BudgetExhausted(f"time budget: {self.budget.left():.0f}s left, the next epoch of fold {fold + 1}")

    def on_fold_restart(self, fold: int, reason: str) -> None:
        self.history.pop()  # the fold's epochs so far: on_fold_start begins its history again
        self.reporter.on_fold_restart(fold, reason)

    def on_fold_end(self, result: FoldResult) -> None:
        self._setup_seconds.append(max(0.0, time.monotonic() - self._started - result.seconds))
        self.folds.append(result)
        self.recorder.folds_done(self.folds)
        self.reporter.on_fold_end(result)
        # a trial that trained all its folds has nothing left to save by pruning: it completes, and
        # ensemble selection may still use it as a member
        last = result.fold + 1 >= self._folds
        self._report(float(np.mean([f.best.val_score for f in self.folds])), FOLD_STEP + result.fold, prune=not last)

    def _report(self, value: float, step: int, prune: bool = True) -> None:
        self.trial.report(value, step)
        # a member queued for the last minutes is smaller than the trials it is compared with at the
        # same step by design: its worth is what it adds to the ensemble, which no pruner sees
        if prune and MEMBER_OF not in self.trial.user_attrs and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with {value:.4f}")


class Objective:
    """One trial: sample a configuration from the space, cross-validate it, return the mean fold score."""

    def __init__(
        self,
        setup: StudySetup,
        data: PreparedData,
        *,
        device: torch.device,
        reporter: Reporter,
        plan: TimePlan,
        store: TrialStore | None = None,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        """``plan`` is the run's time plan (its training-time model also measures the deployment
        limits); ``store`` keeps the best trials' fold models, ``artifacts`` takes their figures."""
        self.plan = plan
        self.store = store
        self.artifacts = artifacts
        self.setup = setup
        self.space = setup.search_space
        self.data = data
        self.device = device
        self.reporter = reporter
        self.folds_hash = folds_hash(data.splits)
        self.data_fingerprint = data.fingerprint  # by content: the same on every machine
        self._member_queued = False

    def __call__(self, trial: optuna.Trial) -> float:
        recorder = TrialRecorder(trial)
        recorder.started(this_worker())  # a later run on this host recovers it if we die
        try:
            config, result, history = self._run(trial)
        except TrialSkipped:
            raise
        except WeightsNotFoundError as err:
            # where the space searches ``pretrained``, backbones without weights stay in it (they can
            # train from scratch): a pretrained draw of one is skipped, not a failure, which would
            # count toward the stop after 10 failures in a row (offline, the default space has
            # weights for 1 of its 15 backbones: half its draws, 10 in a row in a few hundred)
            recorder.skipped(WEIGHTS_SKIP + str(err))
            raise TrialSkipped(f"skipped: {err}") from None
        except BudgetExhausted as err:  # not a fault of the configuration: the next run trains it again
            recorder.failed(f"{err}; queued again for the next run", timeout=True)
            queue_again(trial.study, trial)
            raise
        except AutoclsError as err:  # a fault of this configuration (no weights, diverged): FAIL, go on
            recorder.failed(str(err))
            raise
        except torch.OutOfMemoryError as err:
            recorder.failed(f"out of memory: {str(err).splitlines()[0]}")
            raise
        except KeyboardInterrupt:
            recorder.failed("interrupted (Ctrl-C); queued again for the next run")
            queue_again(trial.study, trial)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as err:  # any other fault of one trial must not end a search of hours
            recorder.failed(f"{err.__class__.__name__}: {err}")
            logger.warning("trial %d failed: %s: %s", trial.number, err.__class__.__name__, err)
            raise
        if self.store is not None and self.store.is_candidate(trial.study, result.mean_score):
            self.store.save(trial, result)  # refit can then reuse these fold models, on any machine
        if self.artifacts is not None:
            try:
                names = list(self.data.images.class_names)
                publish_trial(trial, self.artifacts, config=config, cv=result, history=history, class_names=names)
            except Exception as err:  # figures are a convenience: never fail a finished trial for them
                logger.warning("trial %d: could not upload its figures (%s)", trial.number, err)
        return result.mean_score

    def _run(self, trial: optuna.Trial) -> tuple[TrainConfig, CVResult, list[list[dict[str, float]]]]:
        config = self.space.sample(trial)
        seed = derive_seed(self.setup.seed, trial.number)  # folds derive theirs from it: no two collide
        recorder = TrialRecorder(trial)
        recorder.configured(
            config,
            seed=seed,
            data_fingerprint=self.data_fingerprint,
            folds_hash=self.folds_hash,
            versions=library_versions(),
        )
        self._skip_if_over_limits(recorder, config)
        self._skip_if_too_long(trial, recorder, config)
        observer = TrialObserver(trial, self.reporter, self.plan.budget)
        self.reporter.set_title(f"trial {trial.number}")
        try:
            result = cross_validate(
                config,
                self.data.fold_data(self.setup.trained_folds),
                self.device,
                weights_dir=self.setup.weights_dir,
                seed=seed,
                observer=observer,
                keep_models=self.store is not None,
                metric=self.setup.metric,
            )
        except BudgetExhausted as err:
            result = self._cut_short(trial, observer, err)
        recorder.finished(result.folds[0].frozen_stages, result.oof_score())
        return config, result, observer.history

    def _cut_short(self, trial: optuna.Trial, observer: TrialObserver, err: BudgetExhausted) -> CVResult:
        """The folds a trial finished before the budget ended, as its result, when no trial of the
        study has completed: the search then delivers a model trained on fewer folds rather than
        none (a plan sized on estimates can miss by a fold when the machine runs slower than it
        measured). Once any trial has completed, ``err`` stands: the trial is queued again."""
        if not observer.folds or trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            raise err
        done, planned = len(observer.folds), self.setup.trained_folds
        note = f"{done} of {planned} folds: {err}; no trial had completed, so it is kept on the folds it trained"
        TrialRecorder(trial).cut_short(note)
        self.reporter.print(f"trial {trial.number}: {note}")
        num_classes = len(self.data.images.class_names)
        return CVResult(observer.folds, self.data.images.labels, num_classes, self.setup.metric)

    def _skip_if_over_limits(self, recorder: TrialRecorder, config: TrainConfig) -> None:
        """Skip (before any training) a configuration whose fold models break the deployment limits."""
        limits = self.setup.limits
        if not limits or self.plan.timing is None:
            return
        cost = fold_models_cost(self.plan.timing, config, self.setup.trained_folds)
        recorder.model_cost(cost.latency_ms, cost.parameters)
        reason = limits.exceeded(cost)
        if reason:
            recorder.skipped(f"{LIMIT_SKIP}its {self.setup.trained_folds} fold models take {reason}")
            raise TrialSkipped(f"skipped: {self.setup.trained_folds} fold models take {reason}")

    def _skip_if_too_long(self, trial: optuna.Trial, recorder: TrialRecorder, config: TrainConfig) -> None:
        """Skip (before any training) a configuration that cannot finish in the time left, and queue
        the largest smaller version of it (lower resolution, fewer epochs) that can: the last minutes
        of a budget still train a member for the ensemble rather than a row of skips."""
        if not self.plan.estimates:
            return
        assert self.plan.timing is not None
        self.plan.timing.learn_from(trial.study.get_trials(deepcopy=False, states=FINISHED))
        recorder.estimated(self.plan.epoch_seconds(config))
        too_long = self.plan.too_long(self.space, trial.params, config)
        if too_long is None:
            return
        reason = f"needs about {too_long.needed:.0f}s, {too_long.left:.0f}s left"
        smaller = too_long.smaller
        if smaller:
            trial.study.enqueue_trial({**trial.params, **smaller}, user_attrs=shrunk_attrs(trial))
            reason += "; queued smaller: " + ", ".join(f"{name}={value}" for name, value in smaller.items())
        recorder.skipped(reason)
        raise TrialSkipped(f"skipped: {reason}")

    def queue_last_member(self, study: optuna.Study) -> None:
        """Study callback: once per run, when the time left no longer holds the best trial at its
        own size and no queued trial waits, queue the best trial's configuration again at the
        largest resolution and epochs that fit (see :func:`autocls.study.budget.last_member`)."""
        if not self.plan.estimates or self._member_queued:
            return
        queued = self.plan.last_member(study, self.space)
        if queued is not None:
            self._member_queued = True
            best, size = queued
            described = ", ".join(f"{name}={value}" for name, value in size.items())
            self.reporter.print(
                f"queued trial {best.number}'s configuration again at {described} for the "
                f"{self.plan.budget.left():.0f}s left: a member for the ensemble"
            )
