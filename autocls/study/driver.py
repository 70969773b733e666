"""The study driver: an Optuna study whose trials are stratified k-fold runs of the one trainer.

Intermediate values, and what the pruner compares
-------------------------------------------------
Optuna's pruners compare a trial's value at step ``s`` with other trials' values at the same ``s``,
one value per step, so each step number means the same thing in every trial:

* steps ``0 .. epochs-1``: the validation score after that epoch of the **first fold** (fold 0);
* step ``FOLD_STEP + f``: the mean kept-epoch validation score of folds ``0..f``.

:class:`autocls.study.pruning.FoldAwarePruner` applies Optuna's median rule to the epoch steps, so a
losing trial stops after a few epochs of its first fold, and a stricter rule to the fold steps, so
a trial whose first folds fall clearly below the best trials' same folds stops before training the
rest. A pruned trial ends PRUNED.

Time budget
-----------
``--timeout`` bounds the whole command: a trial or a fold does not start when the time left cannot
hold it (estimated from finished trials and from the trial's own first fold), and a running trial
is stopped after the epoch that crosses the deadline, so the command ends within one epoch of it.
A trial stopped so is recorded FAIL with the reason; the next run retries it. A configuration
that cannot finish in the time left is skipped and its largest smaller version that can is queued
(:meth:`autocls.study.budget.TimePlan.too_long`). A budget too short for the first recipe's
k-fold CV makes every trial train only the first folds that fit
(:func:`autocls.study.budget.folds_to_train`, recorded as ``search_folds`` on the study). Every such
decision is the time plan's (:mod:`autocls.study.budget`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import optuna
import torch

from autocls.data.discover import LabelledImages, check_folds
from autocls.data.imagecache import DecodeClock
from autocls.storage.artifacts import Location, open_store, study_artifacts
from autocls.storage.rdb import open_storage
from autocls.storage.records import TIME_SKIP_KIND, TrialRecord
from autocls.storage.trials import TrialStore, study_trial_store
from autocls.storage.workdir import Workdir
from autocls.study.budget import Budget, TimePlan
from autocls.study.halving import halve_portfolio
from autocls.study.objective import FINISHED, Objective
from autocls.study.progress import Reporter
from autocls.study.pruning import make_pruner
from autocls.study.recovery import recover_dead_local_trials
from autocls.study.samplers import make_sampler
from autocls.study.setup import DEFAULT_FOLDS, SearchRequest, StudySetup, create_or_continue
from autocls.study.studydata import PreparedData, check_same_data, record_data
from autocls.study.trainingtime import TrainingTimeModel

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 10
MAX_CONSECUTIVE_SKIPS = 10  # configurations in a row too long for the time left: stop (a skip costs ~1 s)


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
        record = TrialRecord.read(trial)
        skipped = record.skipped is not None
        self.failures = self.failures + 1 if trial.state == optuna.trial.TrialState.FAIL and not skipped else 0
        # over a limit or without weights says nothing of the time left
        if record.skip_kind in (None, TIME_SKIP_KIND):
            self.skips = self.skips + 1 if skipped else 0
        if record.stopped_by_timeout or self.budget.left() <= 0:
            study.stop()
        elif self.skips >= MAX_CONSECUTIVE_SKIPS:
            self.reporter.print(f"stopping: the last {self.skips} configurations would not finish in the time left")
            study.stop()
        elif self.failures >= MAX_CONSECUTIVE_FAILURES:
            logger.warning("stopping: the last %d trials failed (see their fail_reason)", self.failures)
            study.stop()


DECODE_NOTICE_SECONDS = 10.0  # a decode shorter than this is not worth a line


def _decode_estimate(budget: Budget, reporter: Reporter, images: int) -> Callable[[float, int], None]:
    """What the decode's first chunks say about its length, told at once: a decode that alone would
    use up the time budget is a warning (it goes on until the deadline and keeps what it decoded)."""

    def told(seconds: float, left: int) -> None:
        if seconds > budget.left():
            logger.warning(
                "decoding the %s images left of %s takes about %.0f s, more than the %.0f s left of --timeout: "
                "no trial will train in this run; the decode goes on until the deadline and keeps what it "
                "finished for the next run (or give a longer --timeout)",
                f"{left:,}",
                f"{images:,}",
                seconds,
                budget.left(),
            )
        elif seconds > DECODE_NOTICE_SECONDS:
            reporter.print(f"decoding {images:,} images into the cache: about {seconds:.0f} s more")

    return told


def _validation(setup: StudySetup) -> str:
    if setup.trained_folds == setup.folds:
        return f"{setup.folds}-fold CV"
    what = "a hold-out split" if setup.trained_folds == 1 else f"{setup.trained_folds} of {setup.folds} folds"
    return (
        f"{what} (of a {setup.folds}-fold split: the study's first time budget held no more; "
        f"refit --retrain trains all {setup.folds} fold models)"
    )


def run_search(
    request: SearchRequest, device: torch.device, reporter: Reporter | None = None, *, worker: int | None = None
) -> optuna.Study:
    """Run (or continue) a study until it has ``request.trials`` finished trials or time runs out.

    ``worker`` is a ``--workers`` child's index (its sampler seed; worker 0 probes the portfolio);
    ``None`` for a search that is the only process, which first recovers this host's dead trials
    (``--workers`` recovers once, in its set-up, before the workers race for the same trials).
    """
    reporter = reporter or Reporter(quiet=True)
    budget = Budget(request.timeout)
    workdir = Workdir(request.workdir)
    timing = TrainingTimeModel(device, workdir.speeds)
    study, setup, discovered = _open_study(request, workdir, timing)
    # the study's store, before the data is decoded: a store that is not the study's is one line at once
    artifacts = study_artifacts(study, request.artifacts, workdir, record=True)
    store = study_trial_store(study, artifacts, workdir, keep=request.keep_trials, record=True)
    # Seeded by the study's seed and its trial count: reproducible, and a continued study does not
    # replay the random start-up proposals of its first run.
    study.sampler = make_sampler(setup.seed + len(study.trials) + 7919 * (worker or 0), request.sampler)
    study.pruner = make_pruner(request.pruning)
    # the data as this machine has it: the study knows it by content, so another root (another
    # machine's mount, a renamed folder) or other modification times continue the study
    if discovered is None:
        discovered = request.data.discover()
    if worker is None:
        recover_dead_local_trials(study)
    clock = DecodeClock(budget.deadline, _decode_estimate(budget, reporter, len(discovered)))
    data = PreparedData.load(
        setup, setup.search_space.max_resolution, workdir.cache, discovered, source=request.data, clock=clock
    )
    index_file = workdir.data_index(study.study_name)
    check_same_data(study, discovered, data, index_file)
    record_data(study, data, index_file)

    remaining = request.trials - count_finished(study)
    if remaining <= 0:
        reporter.print(f"study {study.study_name!r} already has {count_finished(study)} finished trials.")
        return study
    reporter.print(
        f"study {study.study_name!r}: {remaining} more trials of space {setup.space.get('name')!r}, "
        f"{_validation(setup)} of {setup.metric} on {len(data.images)} images, "
        f"{len(data.images.class_names)} classes, device {device.type}"
    )
    plan = TimePlan(
        budget,
        timing,
        images=len(data.images),
        folds=setup.folds,
        trained_folds=setup.trained_folds,
        fixed=setup.search_space.fixed,
    )
    objective = Objective(
        setup, data, device=device, reporter=reporter, plan=plan, store=store, artifacts=artifacts.store
    )
    with reporter.live(f"study {study.study_name}"):
        if not worker:  # one process probes the portfolio; other --workers start on the sampler's trials
            halve_portfolio(study, setup, data, device=device, plan=plan, reporter=reporter)
        _optimize(study, objective, store, trials=request.trials, reporter=reporter)
    _summary(study, setup, store, reporter)
    return study


def _open_study(
    request: SearchRequest, workdir: Workdir, timing: TrainingTimeModel
) -> tuple[optuna.Study, StudySetup, LabelledImages | None]:
    """The study, created or continued, with its setup; and the data, when a new storage file made
    it worth discovering first (``None`` otherwise)."""
    discovered = None
    if request.storage is None and not workdir.database.exists():
        # A new study in a new SQLite file: the data first, so that a source the search cannot use is
        # one line and leaves no file behind (opening the storage creates it, and one left without a
        # study would make the next refit ask which study to take).
        discovered = request.data.discover()
        check_folds(discovered, request.folds or DEFAULT_FOLDS)
    if request.artifacts and (location := Location.parse(request.artifacts)).is_s3:
        open_store(location)  # an unreachable bucket is one line before anything is written
    storage = open_storage(request.storage or workdir.storage_url())
    name = request.study_name or request.data.name
    study, setup = create_or_continue(storage, name, request, timing=timing, discovered=discovered)
    return study, setup, discovered


def _optimize(study: optuna.Study, objective: Objective, store: TrialStore, *, trials: int, reporter: Reporter) -> None:
    """Run trials until ``trials`` have finished or a stop rule ends the run."""
    study.optimize(
        objective,
        n_trials=None,  # the stop rules below end it: trials, the one deadline, skips, failures
        catch=(Exception,),  # recorded FAIL with fail_reason; KeyboardInterrupt still stops
        callbacks=[
            optuna.study.MaxTrialsCallback(trials, states=FINISHED),
            _StopConditions(objective.plan.budget, reporter),
            lambda study, _trial: store.retain_best(study),
            lambda study, _trial: objective.queue_last_member(study),
        ],
    )


def _summary(study: optuna.Study, setup: StudySetup, store: TrialStore, reporter: Reporter) -> None:
    reporter.best_trials_table(study, setup.metric)
    kept = len(store.retain_best(study))
    size = store.disk_bytes()
    reporter.print(
        f"fold models of the study's best {kept} trials kept for refit's ensemble selection"
        f"{f': {size / 2**20:.0f} MiB' if size is not None else ''} in {store.shown} (--keep-trials to change)"
    )
