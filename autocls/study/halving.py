"""Successive halving across the warm-start portfolio: which recipe gets the budget's large share.

Without it the first recipe of :func:`autocls.study.portfolio.recipes` takes 40% (and more in short
budgets) of the time blind: it is the family most often best, not the one measured best on these
images. With a time budget long enough that probing costs little
(:data:`autocls.study.budget.PROBE_SHARE`), the search first trains every recipe on the first fold at
the lowest fidelity the space offers (its lowest resolution and fewest epochs): the first rung of
successive halving (Jamieson and Talwalkar, 2016; Li et al., 2018, "Hyperband"). Then the better
half of the recipes, and any other whose probe a test at 5% cannot tell from the best's, go
on: they are enqueued best first, the best sized to the first (large) share of the time left, the
next to the following shares, except that recipes the probes could not tell apart split 85% of the
time equally (:func:`autocls.study.budget.size_to_shares`); the rest are dropped and their time
returns to the sampler. Each probe's real time also calibrates its backbone's training-time estimate
(:meth:`autocls.study.trainingtime.TrainingTimeModel.calibrate`), so the survivors are sized by what a
fold of theirs really takes on these images, not by a few timed steps on random tensors.

Probes are not Optuna trials: a short low-fidelity run would enter TPE's history as a poor result
for the recipe's region and count toward ``--trials``. What they measured and decided is stored
on the study (:data:`autocls.storage.records.PORTFOLIO_PROBES`), printed, and shown in the report.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import torch

from autocls.runtime.control import derive_seed
from autocls.storage.records import PORTFOLIO, PORTFOLIO_PLAN, PORTFOLIO_PROBES
from autocls.study.budget import Budget, BudgetExhausted, TimePlan, size_to_shares
from autocls.study.portfolio import probe_params, survivors, ties
from autocls.study.progress import Reporter
from autocls.study.setup import StudySetup
from autocls.study.studydata import PreparedData
from autocls.train.callbacks import TrainingObserver
from autocls.train.config import TrainConfig
from autocls.train.cv import cross_validate
from autocls.train.history import EpochRecord
from autocls.train.metrics import get_metric

logger = logging.getLogger(__name__)

PROBE_SEED = 1_000_003  # probes' seeds derive from (study seed, this + recipe index): no trial's collides


@dataclass
class Probe:
    """One recipe's first rung: its score on the first fold at low fidelity (nan when it failed)."""

    backbone: str
    score: float
    seconds: float


class _ProbeObserver(TrainingObserver):
    """Shows a probe's progress and keeps the budget's deadline, as a trial's observer does."""

    def __init__(self, reporter: Reporter, budget: Budget) -> None:
        self.reporter, self.budget = reporter, budget

    def on_fold_start(self, fold: int, folds: int, epochs: int) -> None:
        self.reporter.on_fold_start(fold, folds, epochs)

    def on_epoch_end(self, fold: int, record: EpochRecord) -> None:
        self.reporter.on_epoch_end(fold, record)
        self.budget.check(0.0, "the next epoch")


def halve_portfolio(
    study: optuna.Study,
    setup: StudySetup,
    data: PreparedData,
    *,
    device: torch.device,
    plan: TimePlan,
    reporter: Reporter,
) -> None:
    """Probe the recipes of the study's :data:`PORTFOLIO_PLAN` and enqueue the survivors, sized by
    the run's time ``plan`` (whose training-time model each probe calibrates); once per study (a run
    that died, or reached its deadline, before it enqueued them probes again)."""
    timing, budget = plan.timing, plan.budget
    assert timing is not None  # a search always has a training-time model
    planned = study.user_attrs.get(PORTFOLIO_PLAN)
    if PORTFOLIO_PROBES in study.user_attrs:  # probed by an earlier run: its speed measures still hold
        timing.backbone_factors.update(study.user_attrs[PORTFOLIO_PROBES].get("speed_factors", {}))
    if not planned or PORTFOLIO_PROBES in study.user_attrs:
        return
    space = setup.search_space
    recipes = planned["recipes"]
    probes = []
    for i, params in enumerate(recipes):
        if budget.left() <= 0:  # the deadline came during the probes: the next run probes again
            return
        reporter.set_title(f"portfolio probe {i + 1}/{len(recipes)}")
        probes.append(_probe(setup, data, params, index=i, device=device, plan=plan, reporter=reporter))
    if budget.left() <= 0:
        return
    val_images = len(data.splits[0][1])
    maximise = get_metric(setup.metric).greater_is_better
    scores = [p.score for p in probes]
    kept = survivors(scores, maximise, val_images)
    sized = size_to_shares(
        space,
        [recipes[i] for i in kept],
        plan.recipe_seconds,
        planned["budget"],
        available=plan.recipes_seconds(planned["budget"]),
        tied=len(ties(scores, maximise, val_images)),
    )
    for params in sized:
        study.enqueue_trial(params, user_attrs={PORTFOLIO: True}, skip_if_exists=True)
    fidelity = {k: v for k, v in probe_params(space, recipes[0]).items() if k in ("resolution", "epochs")}
    study.set_user_attr(
        PORTFOLIO_PROBES,
        {
            "fidelity": {**fidelity, "folds": 1},
            "probes": [asdict(p) for p in probes],
            "kept": [probes[i].backbone for i in kept],
            "dropped": [p.backbone for i, p in enumerate(probes) if i not in kept],
            "speed_factors": dict(timing.backbone_factors),
        },
    )
    reporter.print(_summary(probes, kept, fidelity, setup.metric))


def _probe(
    setup: StudySetup,
    data: PreparedData,
    params: dict[str, Any],
    *,
    index: int,
    device: torch.device,
    plan: TimePlan,
    reporter: Reporter,
) -> Probe:
    """Train ``params`` (the ``index``-th recipe) on the first fold at the lowest fidelity; its real
    time calibrates the backbone's estimates in the plan's training-time model
    (:meth:`autocls.study.trainingtime.TrainingTimeModel.calibrate`), which then sizes the recipe."""
    assert plan.timing is not None
    space = setup.search_space
    config = TrainConfig.from_dict({**space.fixed, **probe_params(space, params)})
    start = time.perf_counter()
    try:
        result = cross_validate(
            config,
            data.fold_data(1),
            device,
            weights_dir=setup.weights_dir,
            seed=derive_seed(setup.seed, PROBE_SEED + index),
            observer=_ProbeObserver(reporter, plan.budget),
            metric=setup.metric,
        )
        score = result.mean_score
        train_images, val_images = (len(part) for part in data.splits[0])
        plan.timing.calibrate(config, train_images, val_images, time.perf_counter() - start)
    except BudgetExhausted:
        score = math.nan  # the deadline came: halve_portfolio leaves the probes to the next run
    except Exception as err:  # a recipe that cannot train here (no weights, diverged) is dropped, not fatal
        logger.warning("portfolio probe of %s failed: %s: %s", config.backbone, err.__class__.__name__, err)
        score = math.nan
    return Probe(config.backbone, score, time.perf_counter() - start)


def _summary(probes: list[Probe], kept: list[int], fidelity: dict[str, int], metric: str) -> str:
    at = f"fold 1, {fidelity.get('resolution', '')} px, {fidelity.get('epochs', '')} epochs"
    scores = ", ".join(f"{p.backbone} {p.score:.4f} ({p.seconds:.0f}s)" for p in probes)
    order = " > ".join(probes[i].backbone for i in kept)
    dropped = [p.backbone for i, p in enumerate(probes) if i not in kept]
    return f"portfolio probes ({metric}, {at}): {scores}; recipes go on in this order: {order}" + (
        f"; dropped: {', '.join(dropped)}" if dropped else ""
    )
