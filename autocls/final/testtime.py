"""Refit's test-time-views stage: the views (:mod:`autocls.model.views`) that raise the blend's
out-of-fold score, within the views asked for and the deployment limits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from autocls.final.context import Candidate, RefitContext, Selected, Views
from autocls.final.selection import Score
from autocls.model.calibration import fit_temperature, scale
from autocls.model.views import TTA_VIEWS, describe_steps
from autocls.study.studydata import PreparedData
from autocls.train.feeding import Preprocess, model_norm, model_to_device, predict_in_batches

# Test-time views kept at most by default: all those of the catalogue (each is one more forward
# pass of every fold model at prediction time; `refit --views` lowers it).
MAX_VIEWS = len(TTA_VIEWS)
EVAL_BATCH = 256


def choose_views(context: RefitContext, selected: Selected) -> Views:
    """The test-time views that raise the blend's out-of-fold score (:func:`choose_tta`), within
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
    tta, oof, tta_scores = choose_tta(
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


def choose_tta(
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
