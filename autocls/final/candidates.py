"""Refit's first stage: the candidates, the chosen trial's fold models (kept by the search, or
trained again) and the study's other kept trials."""

from __future__ import annotations

import optuna

from autocls.final.context import Candidate, RefitContext
from autocls.runtime.errors import AutoclsError
from autocls.storage.records import TrialRecord
from autocls.train.config import TrainConfig
from autocls.train.cv import CVResult, cross_validate, folds_hash


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    """Trial ``number``, or the best completed trial."""
    if number is None:
        try:
            return study.best_trial
        except ValueError:
            raise AutoclsError(f"study {study.study_name!r} has no completed trial yet; run autocls search.") from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise AutoclsError(f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1}).")
    trial = trials[number]
    if TrialRecord.read(trial).config is None:
        raise AutoclsError(f"trial {number} has no recorded configuration (state {trial.state.name}).")
    return trial


def gather_candidates(context: RefitContext, *, trial_number: int | None, best: bool, retrain: bool) -> list[Candidate]:
    """The chosen trial's fold models (the best trial's by default) first, then, unless one trial
    was asked for, the study's other kept trials."""
    chosen = pick_trial(context.study, trial_number)
    # the other kept trials read first: training the chosen one again can outlast the grace period
    # after which a search still running deletes a trial that fell out of the best
    others = []
    if trial_number is None and not best and not retrain and context.store is not None:
        others = _kept_candidates(context, exclude=chosen.number)
    return [_candidate(context, chosen, retrain=retrain), *others]


def _candidate(context: RefitContext, trial: optuna.trial.FrozenTrial, *, retrain: bool) -> Candidate:
    """``trial``'s fold models: those the search kept when they fit the data as it is, else retrained."""
    setup, data, store, reporter = context.setup, context.data, context.store, context.reporter
    record = TrialRecord.read(trial)
    config = record.train_config
    seed = record.seed if record.seed is not None else setup.seed
    same_data = data.is_recorded_as(record.data_fingerprint) and record.folds_hash == folds_hash(data.splits)
    num_classes = len(data.images.class_names)
    cv = None
    if not retrain and store is not None and same_data:
        cv = store.load(trial, data.images.labels, num_classes, setup.metric)
    if cv is not None:
        reused = f"reusing the {len(cv.folds)} fold models kept by the search"
        if len(cv.folds) < setup.folds:
            reused += f" (it trained {len(cv.folds)} of {setup.folds} folds; --retrain trains all {setup.folds})"
        reporter.print(f"refit trial {trial.number}: {reused}")
        return Candidate(trial, config, cv, True)
    if not retrain and store is not None and not same_data and store.has(trial.number):
        reporter.print(
            f"refit trial {trial.number}: the data changed since the search ({len(data.images)} images now); "
            "its kept fold models and scores belong to the old data, so they are retrained on the current data"
        )
    elif not retrain and store is not None and record.fold_models:
        reporter.print(
            f"refit trial {trial.number}: its fold models are not in {store.shown} (the search kept them in "
            f"{record.fold_models}; deleted once it fell out of the study's best trials, or another store)"
        )
    reporter.print(f"refit trial {trial.number}: training {setup.folds} fold models")
    return Candidate(trial, config, _retrain(context, config, seed=seed, number=trial.number), False)


def _kept_candidates(context: RefitContext, *, exclude: int) -> list[Candidate]:
    """The study's other kept trials (its best ``keep_trials``, whichever machine ran them) whose fold
    models are in the store, on the same data and folds. All are read now, before any training or
    prediction: a worker still searching deletes a trial only a grace period after it fell out of
    the best (:mod:`autocls.storage.trials`)."""
    study, data, setup, reporter = context.study, context.data, context.setup, context.reporter
    store = context.store
    assert store is not None  # the caller's condition
    hashed = folds_hash(data.splits)
    trials = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    found = []
    for number in store.kept(study):
        trial = trials.get(number)
        if number == exclude or trial is None:
            continue
        record = TrialRecord.read(trial)
        if record.config is None or not data.is_recorded_as(record.data_fingerprint) or record.folds_hash != hashed:
            continue
        cv = store.load(trial, data.images.labels, len(data.images.class_names), setup.metric)
        if cv is None:
            if record.fold_models:
                reporter.print(
                    f"trial {number}: its fold models are not in {store.shown} (kept in {record.fold_models}); "
                    "left out of ensemble selection"
                )
            continue
        found.append(Candidate(trial, record.train_config, cv, True))
    return found


def _retrain(context: RefitContext, config: TrainConfig, *, seed: int, number: int) -> CVResult:
    """Every fold model of trial ``number`` trained again with its configuration and seed."""
    data, setup = context.data, context.setup
    with context.reporter.live(f"refit trial {number}"):
        return cross_validate(
            config,
            data.fold_data(),
            context.device,
            weights_dir=setup.weights_dir,
            seed=seed,
            observer=context.reporter,
            keep_models=True,
            metric=setup.metric,
        )
