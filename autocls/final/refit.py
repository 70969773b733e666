"""Refit: the chosen trial's fold models (kept by the search, or trained again) saved as an :class:`Ensemble`.

The only part of the model stage that reads a study; loading and predicting need none of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch
from torch import nn

from autocls.data.discover import DataSpec
from autocls.data.multilabel import choose_thresholds, decide
from autocls.final.selection import Score, blend, select_ensemble
from autocls.model.calibration import Calibration, calibrate, fit_temperature, scale
from autocls.model.ensemble import OOF_FILE, Ensemble, Member, check_model_destination
from autocls.model.manifest import (
    DeploymentRecord,
    FoldSummary,
    Manifest,
    MemberSpec,
    Provenance,
    Scores,
    SelectionRecord,
    Thresholds,
    TrainingData,
)
from autocls.model.views import TTA_VIEWS, describe_steps
from autocls.runtime.control import resolve_device
from autocls.runtime.errors import AutoclsError, SettingError
from autocls.storage.records import TrialRecord, fold_summaries
from autocls.storage.trials import TrialStore
from autocls.storage.workdir import Workdir
from autocls.study.limits import DeploymentCost, fold_models_cost
from autocls.study.progress import Reporter
from autocls.study.setup import StudySetup, library_versions
from autocls.study.studydata import PreparedData, locate_data
from autocls.study.trainingtime import TrainingTimeModel
from autocls.train.backbones import create_classifier
from autocls.train.config import TrainConfig
from autocls.train.cv import CVResult, cross_validate, folds_hash
from autocls.train.feeding import Preprocess, model_norm, model_to_device, predict_in_batches, pretrained_mean_std
from autocls.train.metrics import Metric, get_metric, log_loss, log_losses

logger = logging.getLogger(__name__)
# Test-time views kept at most by default: all those of the catalogue (each is one more forward
# pass of every fold model at prediction time; `refit --views` lowers it).
MAX_VIEWS = len(TTA_VIEWS)
EVAL_BATCH = 256


@dataclass
class RefitResult:
    ensemble: Ensemble
    cv: CVResult  # the member of most weight (the only one for a single trial)
    directory: Path
    oof_score: float  # of the saved model: its members and test-time views, on out-of-fold predictions


@dataclass
class Candidate:
    """A trial's fold models and out-of-fold predictions, ready to be a member."""

    trial: optuna.trial.FrozenTrial
    config: TrainConfig
    cv: CVResult
    reused: bool
    _models: list[nn.Module] | None = None

    def models(self, num_classes: int) -> list[nn.Module]:
        """The fold models, built from their weights once (TTA scoring and the saved model share them)."""
        if self._models is None:
            self._models = []
            for fold in self.cv.folds:
                model = create_classifier(self.config, num_classes, load_weights=False)
                model.load_state_dict(fold.state_dict)
                self._models.append(model)
        return self._models


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


@dataclass
class RefitContext:
    """What every stage of a refit reads: the study, its setup and prepared data, where models run,
    where progress goes, the store of kept fold models, the run folder (its decode cache and
    measured speeds), and the most test-time views asked for."""

    study: optuna.Study
    setup: StudySetup
    data: PreparedData
    device: torch.device
    reporter: Reporter
    store: TrialStore | None
    workdir: Workdir | None
    max_views: int

    @property
    def metric(self) -> Metric:
        return get_metric(self.setup.metric)

    @property
    def sign(self) -> float:
        """Selection and the choice of views maximise ``sign * metric``."""
        return 1.0 if self.metric.greater_is_better else -1.0

    def score(self, labels: np.ndarray, probs: np.ndarray) -> float:
        """The study's metric, higher is better."""
        return self.sign * self.metric(labels, probs)

    @property
    def multilabel(self) -> bool:
        return self.data.images.multilabel

    def cost_model(self) -> TrainingTimeModel:
        return TrainingTimeModel(self.device, self.workdir.speeds if self.workdir else None)


@dataclass
class Selected:
    """The selection stage's outcome: the members with their weights, the images every candidate
    predicts out of fold (``covered``) and their labels, the blend's out-of-fold probabilities, what
    selection maximised (``criterion``) and the deployment-limits check for member sets."""

    candidates: list[Candidate]
    members: list[tuple[Candidate, float]]
    covered: np.ndarray
    labels: np.ndarray
    oof: np.ndarray
    criterion: str
    criterion_selected: float
    criterion_best_trial: float
    score_selected: float
    score_best_trial: float
    within: Callable[..., bool]
    chosen: frozenset[int]  # the members' indices among the candidates

    @property
    def lead(self) -> Candidate:
        """The member of most weight (the first of them on a tie), as the manifest's lead member."""
        return max(self.members, key=lambda m: m[1])[0]


@dataclass
class Views:
    """The test-time views kept, the out-of-fold probabilities with them, and the study's metric
    (higher is better) after each step of their choice."""

    tta: list[str]
    oof: np.ndarray
    scores: dict[str, float]


def refit(
    study: optuna.Study,
    out: str | Path,
    *,
    trial_number: int | None = None,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
    store: TrialStore | None = None,
    retrain: bool = False,
    workdir: Workdir | None = None,
    overwrite: bool = False,
    best: bool = False,
    max_views: int = MAX_VIEWS,
    data_source: DataSpec | None = None,
) -> RefitResult:
    """Save the model the search recommends to ``out`` (replacing a model there only with ``overwrite``).

    By default that is the ensemble selected across the kept trials (:mod:`autocls.final.selection`)
    when its out-of-fold score beats the best trial's own k-fold ensemble, else that ensemble.
    ``best`` asks for the best trial's k-fold ensemble, ``trial_number`` for another trial's.

    The fold models the search kept (in ``store``) are reused as they are, unless ``retrain`` is
    set, none were kept, or the data or folds are no longer those the trial was computed on (its
    recorded data fingerprint and folds hash): then every fold model is trained again with the
    trial's configuration, folds and seed, on the data as it is now. Test-time views (the
    horizontal flip: :mod:`autocls.model.views`) are kept only where they raise the out-of-fold score
    (:func:`_choose_tta`), at most ``max_views`` of them (0: none).

    ``data_source`` is where the study's images are on this machine, when not where the search
    recorded them (another machine's mount, a moved folder): they are known by content, so fold
    models trained elsewhere are reused all the same.

    The stages: candidates (:func:`_candidates`) -> selection (:func:`_select`) -> test-time views
    (:func:`_views`) -> calibration or label thresholds (:func:`_calibrate_or_threshold`) ->
    manifest (:func:`_manifest`) -> save (:func:`_save`), each given the one :class:`RefitContext`.
    """
    if isinstance(max_views, bool) or not isinstance(max_views, int) or not 0 <= max_views <= len(TTA_VIEWS):
        raise SettingError("views", f"an integer from 0 to {len(TTA_VIEWS)} (test-time views at most)", max_views)
    check_model_destination(Path(out), overwrite)  # before any training, not after it
    setup = StudySetup.from_study(study)
    data = PreparedData.load(
        setup,
        setup.search_space.max_resolution,
        workdir.cache if workdir else None,
        source=locate_data(study, setup, data_source),
    )
    context = RefitContext(
        study,
        setup,
        data,
        device or resolve_device("auto"),
        reporter or Reporter(quiet=True),
        store,
        workdir,
        max_views,
    )
    candidates = _candidates(context, trial_number=trial_number, best=best, retrain=retrain)
    selected = _select(context, candidates)
    views = _views(context, selected)
    calibration, thresholds, oof = _calibrate_or_threshold(context, selected.labels, views.oof)
    manifest = _manifest(context, selected, views, calibration=calibration, thresholds=thresholds, oof=oof)
    classes = len(data.images.class_names)
    members = [Member(spec, c.models(classes)) for spec, (c, _) in zip(manifest.members, selected.members, strict=True)]
    ensemble = Ensemble(members, manifest, context.device)
    directory = _save(context, ensemble, selected, oof, out=out, overwrite=overwrite)
    return RefitResult(ensemble, selected.lead.cv, directory, context.metric(selected.labels, oof))


def _candidates(context: RefitContext, *, trial_number: int | None, best: bool, retrain: bool) -> list[Candidate]:
    """The chosen trial's fold models (the best trial's by default) first, then, unless one trial
    was asked for, the study's other kept trials."""
    chosen = pick_trial(context.study, trial_number)
    # the other kept trials read first: training the chosen one again can outlast the grace period
    # after which a search still running deletes a trial that fell out of the best
    others = []
    if trial_number is None and not best and not retrain and context.store is not None:
        others = _kept_candidates(context, exclude=chosen.number)
    return [_candidate(context, chosen, retrain=retrain), *others]


def _select(context: RefitContext, candidates: list[Candidate]) -> Selected:
    """Members and weights chosen greedily on the candidates' out-of-fold predictions
    (:func:`autocls.final.selection.select_ensemble`), within the study's deployment limits."""
    setup, reporter = context.setup, context.reporter
    # the images every candidate predicts out of fold: all of them, unless the search trained fewer
    # than all folds (a short budget), where only its validation folds are predicted
    covered = np.logical_and.reduce([~np.isnan(c.cv.oof_probs[:, 0]) for c in candidates])
    labels = context.data.images.labels[covered]
    within = _within_limits(context, candidates)
    oofs = [c.cv.oof_probs[covered] for c in candidates]
    criterion, maximised = selection_criterion(setup.metric, context.multilabel, labels, context.score)
    selection = select_ensemble(oofs, labels, maximised, allowed=within)
    chosen = "ensemble" if len(selection.weights) > 1 else "best trial"
    if len(selection.weights) == 1:  # no blend beats one trial: the best trial, as --best gives
        selection = replace(selection, weights={0 if within(frozenset({0})) else selection.best_single: 1.0})
    natural = -1.0 if criterion == "log_loss" else context.sign  # the criterion in its own units (a loss is positive)
    delivered = blend(oofs, selection.weights)
    metric = context.metric
    result = Selected(  # beside the best trial alone (candidate 0): what --best would deliver
        candidates=candidates,
        members=[(candidates[i], weight) for i, weight in selection.weights.items()],
        covered=covered,
        labels=labels,
        oof=delivered,
        criterion=criterion,
        criterion_selected=natural * maximised(labels, delivered),
        criterion_best_trial=natural * maximised(labels, oofs[0]),
        score_selected=metric(labels, delivered),
        score_best_trial=metric(labels, oofs[0]),
        within=within,
        chosen=frozenset(selection.weights),
    )
    if len(candidates) > 1:
        reporter.print(
            f"ensemble selection over {len(candidates)} kept trials on out-of-fold {criterion}: {setup.metric} "
            f"{result.score_selected:.4f} with {len(selection.weights)} members, best trial alone "
            f"{result.score_best_trial:.4f}: the {chosen} is saved"
        )
    return result


def _views(context: RefitContext, selected: Selected) -> Views:
    """The test-time views that raise the blend's out-of-fold score (:func:`_choose_tta`), within
    the views asked for and the deployment limits."""
    score, setup, reporter = context.score, context.setup, context.reporter
    chosen_members = selected.chosen
    # Views are judged on the study's metric, not on selection's log loss: when rotations and zooms
    # were offered too, on log loss (even after temperature scaling) refit kept all four of them on
    # two 30-minute Fashion-MNIST studies while their out-of-fold accuracy fell after the flip
    # (0.8760 -> 0.8740, 0.8895 -> 0.8880), and held-out accuracy was 0.20 points below the flip
    # alone on both. Scored as the model will predict: after temperature scaling (single-label),
    # which moves a loss-like metric, not accuracy.
    judged = score if context.multilabel else lambda y, p: score(y, scale(p, fit_temperature(p, y)))
    tta, oof, tta_scores = _choose_tta(
        selected.members,
        context.data,
        context.device,
        criterion=judged,
        score=score,
        plain=selected.oof,
        covered=selected.covered,
        allowed=lambda views: views <= 1 + context.max_views and selected.within(chosen_members, views=views),
    )
    if context.max_views == 0:
        reporter.print("no test-time views: --views 0")
    elif not selected.within(chosen_members, views=2):
        reporter.print(
            f"no test-time views: one would double the time an image takes, over the limit ({setup.limits.describe()})"
        )
    else:
        steps = describe_steps({views: context.sign * value for views, value in tta_scores.items()})
        reporter.print(f"test-time views, out-of-fold {setup.metric} after each: {steps}")
    return Views(tta, oof, tta_scores)


def _calibrate_or_threshold(
    context: RefitContext, labels: np.ndarray, oof: np.ndarray
) -> tuple[Calibration | None, Thresholds | None, np.ndarray]:
    """A single-label model's temperature, fitted on the blend as it will predict (members, views),
    and the out-of-fold probabilities it scales; a multi-label model's label thresholds."""
    if context.multilabel:
        average = "micro" if context.setup.metric == "micro_f1" else "macro"
        return (
            None,
            _thresholds(labels, oof, names=context.data.images.class_names, average=average, reporter=context.reporter),
            oof,
        )
    calibration = calibrate(oof, labels)
    context.reporter.print(
        f"calibration: temperature {calibration.temperature:.3f}, out-of-fold expected calibration error "
        f"{calibration.ece_before:.4f} -> {calibration.ece_after:.4f}"
    )
    return calibration, None, scale(oof, calibration.temperature)


def _save(
    context: RefitContext, ensemble: Ensemble, selected: Selected, oof: np.ndarray, *, out: str | Path, overwrite: bool
) -> Path:
    """The ensemble written to ``out`` with its out-of-fold table (each covered image's true label,
    prediction, loss and probabilities)."""
    images = context.data.images
    frame = ensemble.to_frame([str(p) for p, kept in zip(images.paths, selected.covered, strict=True) if kept], oof)
    frame.insert(1, "true_label", images.subset(np.flatnonzero(selected.covered)).label_names())
    frame.insert(3 if images.multilabel else 4, "loss", log_losses(selected.labels, oof))
    return ensemble.save(out, extra={OOF_FILE: frame.to_csv(index=False)}, overwrite=overwrite)


def _thresholds(
    labels: np.ndarray, oof: np.ndarray, *, names: tuple[str, ...], average: str, reporter: Reporter
) -> Thresholds:
    """A multi-label model's per-label thresholds of best F1 (``average``: macro, or micro when the
    study optimises it) on the out-of-fold probabilities, and the F1 they give there (a multi-label
    model is not temperature-scaled)."""
    from sklearn.metrics import f1_score

    thresholds = choose_thresholds(labels, oof, average)
    predicted = decide(oof, thresholds)
    macro = float(f1_score(labels, predicted, average="macro", zero_division=0))
    micro = float(f1_score(labels, predicted, average="micro", zero_division=0))
    shown = ", ".join(f"{name} {t:.2f}" for name, t in zip(names, thresholds))
    reporter.print(f"label thresholds chosen on out-of-fold {average} F1: {shown}; out-of-fold macro F1 {macro:.4f}")
    return Thresholds(
        values=tuple(round(float(t), 6) for t in thresholds),
        label_delimiter=";",
        maximise=f"{average} F1",
        oof_macro_f1=macro,
        oof_micro_f1=micro,
    )


def _within_limits(context: RefitContext, candidates: list[Candidate]) -> Callable[..., bool]:
    """Whether a set of candidates (indices), run on ``views`` views of each image, keeps the
    study's deployment limits; always true without limits. The best trial alone must keep them."""
    limits = context.setup.limits
    if not limits:
        return lambda members, views=1: True
    cost = context.cost_model()
    costs = [fold_models_cost(cost, c.config, len(c.cv.folds)) for c in candidates]

    def within(members: frozenset[int], views: int = 1) -> bool:
        total = sum((costs[i] for i in members), DeploymentCost())
        return limits.exceeded(DeploymentCost(total.latency_ms * views, total.parameters)) is None

    reason = limits.exceeded(costs[0])
    if reason:
        first = candidates[0]
        raise AutoclsError(
            f"trial {first.trial.number}'s {len(first.cv.folds)} fold models take {reason} (the study's limit); "
            "refit without --retrain (the search's fold models kept it), or choose another --trial."
        )
    return within


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


def _choose_tta(
    members: list[tuple[Candidate, float]],
    data: PreparedData,
    device: torch.device,
    *,
    criterion: Score,
    score: Score,
    plain: np.ndarray,
    covered: np.ndarray,
    allowed: Callable[[int], bool] = lambda views: views <= 1 + MAX_VIEWS,
) -> tuple[list[str], np.ndarray, dict[str, float]]:
    """Test-time views that raise the out-of-fold ``criterion`` (higher is better), chosen greedily.

    Each fold model also predicts its own validation images in every view of
    :data:`autocls.model.views.TTA_VIEWS`; the view whose average with the image and the views kept so far
    raises the criterion most is kept (a tie goes to the view listed first), until none raises it
    or ``allowed`` (given the number of views with the image itself: the deployment limits and the
    most views asked for, :data:`MAX_VIEWS` by default) says no. ``plain`` is the ``covered``
    images' out-of-fold probabilities without views. Returns the views, the out-of-fold
    probabilities with them, and ``score`` (the study's metric, higher is better) of each step:
    ``"none"``, then the views kept so far joined by ``+``.

    Refit passes the study's metric after temperature scaling: a view must change decisions for
    the better to be worth a forward pass per fold model in every prediction (see the measurement
    where refit calls it).
    """
    labels = data.images.labels[covered]
    scores = {"none": float(score(labels, plain))}
    if not allowed(2):
        return [], plain, scores
    seen = {
        name: sum(weight * _view_oof(c, name, data, device)[covered] for c, weight in members) for name in TTA_VIEWS
    }
    kept: list[str] = []
    total, best = plain.astype(np.float64), criterion(labels, plain)
    while allowed(len(kept) + 2):
        averages = {name: (total + oof) / (len(kept) + 2) for name, oof in seen.items() if name not in kept}
        if not averages:
            break
        values = {name: criterion(labels, average) for name, average in averages.items()}
        name = max(values, key=values.__getitem__)
        if values[name] <= best:
            break
        kept.append(name)
        total, best = total + seen[name], values[name]
        scores["+".join(kept)] = float(score(labels, averages[name]))
    return kept, (total / (len(kept) + 1)).astype(plain.dtype), scores


@torch.inference_mode()
def _view_oof(candidate: Candidate, view: str, data: PreparedData, device: torch.device) -> np.ndarray:
    """``candidate``'s out-of-fold probabilities on ``view`` of each image (each fold model on its own
    validation images)."""
    num_classes = len(data.images.class_names)
    images = data.store.at(candidate.config.resolution)
    oof = np.zeros_like(candidate.cv.oof_probs)
    for fold, model in zip(candidate.cv.folds, candidate.models(num_classes), strict=True):
        model = model_to_device(model, device).eval()
        probs = predict_in_batches(
            [model],
            images,
            Preprocess(*model_norm(model, device), device),
            device,
            multilabel=data.images.multilabel,
            batch=EVAL_BATCH,
            rows=torch.as_tensor(fold.val_indices),
            views=lambda x: [TTA_VIEWS[view](x)],
        )
        oof[fold.val_indices] = probs.numpy()
    return oof


def selection_criterion(metric: str, multilabel: bool, labels: np.ndarray, score: Score) -> tuple[str, Score]:
    """What ensemble selection maximises: ``score`` (the study's metric, higher is better) for
    multi-label data and a log-loss study; otherwise the negative out-of-fold log loss, weighted
    by inverse class frequency where the metric weighs classes equally.

    Log loss scores the same probabilities smoothly, where accuracy moves in steps of one image and
    greedy steps on it fit the noise of a few thousand out-of-fold images. Measured on the kept
    trials of four 30-minute Fashion-MNIST studies (2,000 images each, held-out 2,000; no TTA or
    calibration on either side): selection on accuracy gave weak trials (CV 0.68-0.85) weights of
    0.18-0.38 and held-out accuracy 0.8873 on average, below the best trial alone (0.8881); on log
    loss 0.8895, higher than on accuracy in each of the four (+0.10 to +0.35 points).
    """
    if multilabel or metric == "log_loss":
        return metric, score
    weights = None
    if metric in ("balanced_accuracy", "macro_f1"):  # every class counts alike, as in the metric
        weights = 1.0 / np.bincount(labels)[labels]

    return "log_loss", lambda y, p: -log_loss(y, p, weights)


def _manifest(
    context: RefitContext,
    selected: Selected,
    views: Views,
    *,
    calibration: Calibration | None,
    thresholds: Thresholds | None,
    oof: np.ndarray,
) -> Manifest:
    """The saved model's manifest, built once: its members, views, calibration or thresholds,
    deployment cost, selection, scores and provenance. The lead member (of most weight) gives the
    top-level configuration, fold scores and history."""
    setup, data, labels = context.setup, context.data, selected.labels
    classes = len(data.images.class_names)
    lead = selected.lead
    members = []
    for candidate, weight in selected.members:
        mean, std = pretrained_mean_std(candidate.models(classes)[0])
        members.append(
            MemberSpec(
                config=candidate.config,
                weight=weight,
                mean=mean,
                std=std,
                folds=len(candidate.cv.folds),
                trial=candidate.trial.number,
                cv_score=candidate.trial.value,
                oof_score=candidate.cv.oof_score(),
                fold_models=_fold_models(candidate),
            )
        )
    selection = SelectionRecord(
        candidates=tuple(c.trial.number for c in selected.candidates),
        criterion=selected.criterion,
        oof_criterion_selected=selected.criterion_selected,
        oof_criterion_best_trial=selected.criterion_best_trial,
        oof_score_selected=selected.score_selected,
        oof_score_best_trial=selected.score_best_trial,
        oof_score_tta={view: context.sign * value for view, value in views.scores.items()},
    )
    return Manifest(
        class_names=tuple(data.images.class_names),
        decode_size=data.store.base_size,
        members=tuple(members),
        tta=tuple(views.tta),
        calibration=calibration,
        thresholds=thresholds,
        limits=_deployment_cost(context, selected.members, views=1 + len(views.tta)),
        selection=selection,
        scores=Scores(
            metric=setup.metric,
            cv_score=lead.cv.mean_score,
            search_cv_score=lead.trial.value,
            oof_score=context.metric(labels, oof),
            oof_accuracy=get_metric("accuracy")(labels, oof),
            oof_images=len(labels),  # fewer than the data's when the search trained fewer than all folds
            folds=tuple(FoldSummary(**summary) for summary in fold_summaries(lead.cv.folds)),
            history=tuple(tuple(fold.history) for fold in lead.cv.folds),
        ),
        data=TrainingData(spec=setup.data, images=len(data.images), fingerprint=data.fingerprint),
        provenance=Provenance(
            study=context.study.study_name,
            trial=lead.trial.number,
            seed=TrialRecord.read(lead.trial).seed,
            fold_models=_fold_models(lead),
            versions=library_versions(),
        ),
    )


def _fold_models(candidate: Candidate) -> str:
    return "reused from the search" if candidate.reused else "retrained"


def _deployment_cost(
    context: RefitContext, members: list[tuple[Candidate, float]], *, views: int
) -> DeploymentRecord | None:
    """What the saved model costs, beside the limits it keeps; ``None`` for a study without limits."""
    setup = context.setup
    if not setup.limits:
        return None
    cost = context.cost_model()
    total = sum((fold_models_cost(cost, c.config, len(c.cv.folds), views) for c, _ in members), DeploymentCost())
    return DeploymentRecord(
        max_latency_ms=setup.max_latency_ms,
        max_params=setup.max_params,
        latency_ms=round(total.latency_ms, 3),
        parameters=total.parameters,
        device=context.device.type,
    )


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
