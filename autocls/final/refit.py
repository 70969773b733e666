"""Refit: the chosen trial's fold models (kept by the search, or trained again) saved as an :class:`Ensemble`,
in named stages (candidates, selection, test-time views, calibration or thresholds, manifest, save).

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

from autocls.data.discover import DataSpec
from autocls.data.multilabel import choose_thresholds, decide
from autocls.final.candidates import gather_candidates
from autocls.final.context import Candidate, RefitContext, Selected, Views
from autocls.final.selection import Score, blend, select_ensemble
from autocls.final.testtime import MAX_VIEWS, choose_views
from autocls.model.calibration import Calibration, calibrate, scale
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
from autocls.model.views import TTA_VIEWS
from autocls.runtime.control import resolve_device
from autocls.runtime.errors import AutoclsError, SettingError
from autocls.storage.records import TrialRecord, fold_summaries
from autocls.storage.trials import TrialStore
from autocls.storage.workdir import Workdir
from autocls.study.limits import DeploymentCost, fold_models_cost
from autocls.study.progress import Reporter
from autocls.study.setup import StudySetup, library_versions
from autocls.study.studydata import PreparedData, locate_data
from autocls.train.cv import CVResult
from autocls.train.feeding import pretrained_mean_std
from autocls.train.metrics import get_metric, log_loss, log_losses

logger = logging.getLogger(__name__)


@dataclass
class RefitResult:
    ensemble: Ensemble
    cv: CVResult  # the member of most weight (the only one for a single trial)
    directory: Path
    oof_score: float  # of the saved model: its members and test-time views, on out-of-fold predictions


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
    (:func:`choose_tta`), at most ``max_views`` of them (0: none).

    ``data_source`` is where the study's images are on this machine, when not where the search
    recorded them (another machine's mount, a moved folder): they are known by content, so fold
    models trained elsewhere are reused all the same.

    The stages: candidates (:func:`autocls.final.candidates.gather_candidates`) -> selection
    (:func:`_select`) -> test-time views (:func:`autocls.final.testtime.choose_views`) -> calibration
    or label thresholds (:func:`_calibrate_or_threshold`) -> manifest (:func:`_manifest`) -> save
    (:func:`_save`), each given the one :class:`~autocls.final.context.RefitContext`.
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
    candidates = gather_candidates(context, trial_number=trial_number, best=best, retrain=retrain)
    selected = _select(context, candidates)
    views = choose_views(context, selected)
    calibration, thresholds, oof = _calibrate_or_threshold(context, selected.labels, views.oof)
    manifest = _manifest(context, selected, views, calibration=calibration, thresholds=thresholds, oof=oof)
    classes = len(data.images.class_names)
    members = [Member(spec, c.models(classes)) for spec, (c, _) in zip(manifest.members, selected.members, strict=True)]
    ensemble = Ensemble(members, manifest, context.device)
    directory = _save(context, ensemble, selected, oof, out=out, overwrite=overwrite)
    return RefitResult(ensemble, selected.lead.cv, directory, context.metric(selected.labels, oof))


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
