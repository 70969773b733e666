"""The time plan of a search: one deadline, what fits the time left, and which share of it goes where.

Every decision a search takes by the clock is taken here, from two inputs: the deadline
(:class:`Budget`, from ``--timeout``) and the training-time model's estimates
(:class:`autocls.study.trainingtime.TrainingTimeModel`).

* **Shares of the budget**, when a study is created: the first warm-start recipe's share
  (:func:`first_share`), how many folds each trial trains (:func:`folds_to_train`), whether the
  recipes are probed first (:func:`should_probe`, see :mod:`autocls.study.halving`), and the size
  of each recipe in its share (:func:`size_to_shares`).
* **What fits the time left**, while trials run (:class:`TimePlan`): a trial is estimated before
  it trains (:meth:`TimePlan.trial_seconds`); one that cannot finish is skipped, and its largest
  smaller version that can is queued (:meth:`TimePlan.too_long`, :func:`smaller_that_fits`); the
  folds left of a running trial are shortened to end by the deadline (:meth:`Budget.shortened_epochs`);
  and the budget's last minutes train the best configuration again, smaller, as an ensemble member
  (:func:`last_member`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import optuna

from autocls.runtime.errors import AutoclsError
from autocls.storage.records import TrialRecord, member_attrs
from autocls.study.portfolio import DataStats, recipes
from autocls.study.space import SearchSpace
from autocls.study.trainingtime import TrainingTimeModel
from autocls.train.config import TrainConfig

# A fold shortened to end by the deadline trains at least this many epochs: a one-epoch schedule is
# mostly warm-up (one-cycle's rising phase; the spaces' one warm-up epoch for cosine and step), its
# model no member worth its time.
MIN_SHORTENED_EPOCHS = 2
# The best configuration queued again for the budget's last minutes is sized to this share of the
# time left: the training-time model's estimate can be short by a few percent, and a member stopped
# before its last fold is lost.
MEMBER_TIME_SHARE = 0.9


class BudgetExhausted(AutoclsError):
    """The time budget cannot hold more training."""


class TrialSkipped(AutoclsError):
    """A configuration that cannot finish in the time left, not trained. Recorded FAIL (with a
    ``skipped`` reason) rather than PRUNED: it must not count toward ``--trials``, and TPE, which
    ignores failed trials, must not learn that its region is bad: it was only too long for the time left."""


class Budget:
    """A wall-clock deadline for the whole command; ``None`` seconds means no deadline."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = time.monotonic() + seconds if seconds else None

    def left(self) -> float:
        """Seconds to the deadline (negative past it; infinite without one)."""
        return self.deadline - time.monotonic() if self.deadline else float("inf")

    def check(self, needed: float, what: str) -> None:
        """Raise :class:`BudgetExhausted`, naming ``what``, when ``needed`` seconds exceed the time left."""
        if needed > self.left():
            raise BudgetExhausted(f"time budget: {self.left():.0f}s left, {what} needs about {needed:.0f}s")

    def shortened_epochs(
        self, *, epochs: int, folds_left: int, epoch_seconds: float, setup_seconds: float, what: str
    ) -> tuple[int, float] | None:
        """``None`` when ``folds_left`` folds of ``epochs`` epochs fit the time left, at
        ``epoch_seconds`` an epoch and ``setup_seconds`` a fold outside its epochs; else the epochs
        each of them trains, the time left split evenly among them, at least
        :data:`MIN_SHORTENED_EPOCHS` (with the seconds left it was sized on). Raises
        :class:`BudgetExhausted`, naming ``what``, when not even those fit.

        A trial that trained most of its folds is worth finishing short: its out-of-fold predictions
        then cover every image and it can join the ensemble, where a trial stopped before its last
        fold is lost. On 2 CPU cores the second recipe of a 30-minute study once ran 1.7x slower than
        measured and was stopped with 78 s left and its last fold needing 234 s: the search delivered
        the first recipe alone (held-out 0.8860, against 0.8900 for both in a run at normal speed).
        The shortfall is spread over the folds left, as a few epochs less cost each fold model less
        accuracy than many epochs less cost one.
        """
        self.check(folds_left * (setup_seconds + epoch_seconds * min(epochs, MIN_SHORTENED_EPOCHS)), what)
        left = self.left()
        if folds_left * (setup_seconds + epoch_seconds * epochs) <= left:  # also without a deadline (infinite)
            return None
        # the check above holds the minimum (the clock moved on since by microseconds only)
        return max(MIN_SHORTENED_EPOCHS, int((left / folds_left - setup_seconds) // epoch_seconds)), left


def recipe_seconds(
    timing: TrainingTimeModel, *, fixed: dict[str, Any], images: int, folds: int, trained: int | None
) -> Callable[[dict[str, Any]], float]:
    """Estimated seconds of a parameter set (over the space's ``fixed`` ones) cross-validated on
    ``images`` images in ``folds`` folds, ``trained`` of them trained (all when ``None``)."""

    def seconds(params: dict[str, Any]) -> float:
        return timing.trial_seconds(TrainConfig.from_dict({**fixed, **params}), images, folds, trained)

    return seconds


@dataclass(frozen=True)
class TooLong:
    """A configuration that cannot finish in the time left: its estimate, the seconds left, and the
    largest smaller version that fits (resolution and epochs; empty when none does)."""

    needed: float
    left: float
    smaller: dict[str, int]


@dataclass
class TimePlan:
    """One search run's time plan: its deadline, the training-time model (``None``: nothing is
    estimated), and what each trial trains: ``images`` split into ``folds`` folds, the first
    ``trained_folds`` trained, with the space's ``fixed`` parameters under a recipe's."""

    budget: Budget
    timing: TrainingTimeModel | None
    images: int
    folds: int
    trained_folds: int
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def estimates(self) -> bool:
        """Whether trials are sized to the time left: there is a deadline and a training-time model."""
        return self.timing is not None and self.budget.deadline is not None

    def trial_seconds(self, config: TrainConfig) -> float:
        """Estimated seconds of a trial of ``config``: every trained fold, every epoch."""
        assert self.timing is not None
        return self.timing.trial_seconds(config, self.images, self.folds, self.trained_folds)

    def recipe_seconds(self, params: dict[str, Any]) -> float:
        """:meth:`trial_seconds` of a parameter set over the space's fixed parameters."""
        return self.trial_seconds(TrainConfig.from_dict({**self.fixed, **params}))

    def epoch_seconds(self, config: TrainConfig) -> float:
        """The model's estimate of one epoch of ``config`` (a trial records it: finished trials
        correct the estimates by their real epochs against it)."""
        assert self.timing is not None
        images, folds = self.images, self.folds
        return self.timing.epoch_seconds(config, images - images // folds, images // folds)

    def recipes_seconds(self, planned: float) -> float:
        """The seconds the probed warm-start recipes are sized to: the time left, or the ``planned``
        budget in a run continued without a deadline."""
        return max(self.budget.left(), 0.0) if self.budget.deadline else planned

    def too_long(self, space: SearchSpace, params: dict[str, Any], config: TrainConfig) -> TooLong | None:
        """``None`` when a trial of ``config`` (sampled as ``params``) fits the time left; else what
        it needs, and its largest smaller version that fits (:func:`smaller_that_fits`)."""
        needed = self.trial_seconds(config)
        left = self.budget.left()
        if needed <= left:
            return None
        smaller = smaller_that_fits(space, params, config, seconds_of=self.trial_seconds, seconds=left)
        return TooLong(needed, left, smaller)

    def last_member(
        self, study: optuna.Study, space: SearchSpace
    ) -> tuple[optuna.trial.FrozenTrial, dict[str, int]] | None:
        """:func:`last_member` in the time left."""
        return last_member(study, space, self.trial_seconds, self.budget.left())


# Share of the time budget each recipe may take, in order: the first (EfficientNet-style) recipe
# is the one most likely to win, so it gets the time to train well; the sampler keeps the rest.
# The first share grows as the budget shrinks (see first_share).
BUDGET_SHARES = (0.4, 0.25, 0.15)
MIN_RECIPE_EPOCHS = 6  # a recipe trains at least this long before it trains at a larger resolution
# Budgets (seconds) between which the first recipe's share falls from SHORT_SHARE to BUDGET_SHARES[0]
SHORT_BUDGET, LONG_BUDGET = 600.0, 1800.0
SHORT_SHARE = 0.75


def first_share(budget: float) -> float:
    """The first recipe's share of a ``budget`` in seconds: 0.75 up to 10 minutes, 0.4 from 30,
    linear between.

    In a short budget the sampler has room for a few cheap trials at most, and at 10 minutes on 2,000
    Fashion-MNIST images none of them came near the first recipe (its 5-fold CV 0.8400; the one
    sampled trial that ran was stopped by the deadline after 3 of 5 folds, its 228 s lost): the
    time buys more accuracy as a longer first recipe. In a long budget the sampler's trials become
    ensemble members and the recipe keeps 40%.
    """
    if budget <= SHORT_BUDGET:
        return SHORT_SHARE
    reach = min(1.0, (budget - SHORT_BUDGET) / (LONG_BUDGET - SHORT_BUDGET))
    return SHORT_SHARE + (BUDGET_SHARES[0] - SHORT_SHARE) * reach


def folds_to_train(
    space: SearchSpace,
    stats: DataStats,
    folds: int,
    *,
    fold_seconds: Callable[[dict[str, Any]], float] | None = None,
    budget: float | None = None,
) -> int:
    """How many of the ``folds`` each trial trains: all of them, unless the first recipe at its
    cheapest long-enough size (:data:`MIN_RECIPE_EPOCHS` epochs, or the most the space allows, at
    the largest resolution about as cheap as the lowest: see :func:`_cheapest_long_enough`) cannot
    train them all in its share of the ``budget``; then as many as fit, down to one (a hold-out
    split of 1/``folds`` of the images).

    ``fold_seconds`` estimates one fold of a parameter set. Fewer folds keep the search's trials
    comparable (every trial trains the same folds, so the pruner and ensemble selection still
    compare like with like) while a short budget still trains a real recipe: a 5-fold CV of
    EfficientNet-Lite0 at 48 px x 4 epochs on 2,000 images takes about 270 s on 2 CPU cores, more
    than a 5-minute search has for it.
    """
    found = recipes(space, stats)
    if not found or fold_seconds is None or not budget:
        return folds
    per_fold = _cheapest_long_enough(space, found[0], fold_seconds)
    fits = int(budget * first_share(budget) // max(per_fold, 1e-9))
    return max(1, min(folds, fits))


# Probe when all probes together are estimated to take at most this share of the time budget: on
# 2 CPU cores the two Lite recipes' probes (48 px, 4 epochs, one fold of 2,000 images) take about
# 150 s, so a 30-minute search probes and a 10-minute one (where they would take a quarter) does not.
PROBE_SHARE = 0.1


def should_probe(
    recipes: list[dict[str, Any]], probe_seconds: Callable[[dict[str, Any]], float], budget: float
) -> bool:
    """Probe when there is a choice (two recipes or more) and the probes fit :data:`PROBE_SHARE` of ``budget``."""
    return len(recipes) >= 2 and sum(probe_seconds(r) for r in recipes) <= PROBE_SHARE * budget


# A resolution whose fold costs at most this much more than the lowest's counts as no dearer.
NEARLY_FREE = 1.25


def _cheapest_long_enough(
    space: SearchSpace, params: dict[str, Any], fold_seconds: Callable[[dict[str, Any]], float]
) -> float:
    """Seconds of one fold of ``params`` at :data:`MIN_RECIPE_EPOCHS` epochs (or the most the space
    allows) and the largest resolution whose fold costs at most :data:`NEARLY_FREE` times the lowest's.

    On a CPU small inputs are bound by per-layer overhead, not pixels: Lite0 trains at 136 images/s
    at 48 px and 126 at 64 px on 2 cores. Measured at 2,000 Fashion-MNIST images, 2 folds at 64 px
    x 6 epochs (5-minute budget, held-out 0.8760) beat 5 folds at 48 px x 6 (10-minute budget,
    0.8635): the resolution that costs almost nothing more is worth more than the extra folds.
    """
    searched = {dim.name: dim for dim in space.dimensions if dim.choices is not None}
    size = dict(params)
    if "epochs" in searched:
        epochs = sorted(searched["epochs"].choices)
        size["epochs"] = next((e for e in epochs if e >= MIN_RECIPE_EPOCHS), epochs[-1])
    if "resolution" not in searched:
        return fold_seconds(size)
    costs = [fold_seconds({**size, "resolution": r}) for r in sorted(searched["resolution"].choices)]
    return max(c for c in costs if c <= NEARLY_FREE * costs[0])


# Recipes the probes could not tell from the best (the best included) share this part of the time
# equally; the sampler keeps the rest.
MAX_TIED_SHARE = 0.85


def size_to_shares(
    space: SearchSpace,
    ordered: list[dict[str, Any]],
    trial_seconds: Callable[[dict[str, Any]], float],
    budget: float,
    *,
    available: float | None = None,
    tied: int = 1,
) -> list[dict[str, Any]]:
    """``ordered`` recipes sized, in order, to :func:`first_share` of ``budget`` and then
    :data:`BUDGET_SHARES` (of ``available`` seconds when given: the time left after probes).

    The first ``tied`` recipes (the best probe and those the probes could not tell from it) each get
    an equal part of :data:`MAX_TIED_SHARE` of the time: equally promising recipes
    are worth equal time, and two members of equal strength make a better ensemble than a strong
    one and a weak one. On 2,000 Fashion-MNIST images in 30 minutes (2 CPU cores), the tied second
    recipe sized to 25% trained 4 epochs for CV 0.8345 / 0.8545 against the first's 0.8670 / 0.8855
    at 6-8 epochs, and ensemble selection on log loss gave it weights of 0.15-0.23.
    """
    available = budget if available is None else available
    tied = max(1, min(tied, len(ordered)))
    best = MAX_TIED_SHARE / tied if tied > 1 else first_share(budget)
    shares = [best] * tied + list(BUDGET_SHARES[1:])
    return [
        _size_to_budget(space, params, trial_seconds, available * shares[min(i, len(shares) - 1)])
        for i, params in enumerate(ordered)
    ]


def _size_to_budget(
    space: SearchSpace, params: dict[str, Any], trial_seconds: Callable[[dict[str, Any]], float], seconds: float
) -> dict[str, Any]:
    """``params`` at the largest searched resolution, then epochs, whose estimate fits ``seconds``,
    among sizes of at least :data:`MIN_RECIPE_EPOCHS` epochs first; at the cheapest size when none
    fits (the study then skips it if it cannot finish at all).

    Resolution yields to epochs below that floor: on 2,000 Fashion-MNIST images in 30 minutes the
    first recipe sized to 96 px x 4 epochs scored CV 0.8535 (held-out 0.8700 as the delivered
    blend), at 64 px x 8 epochs CV 0.8600 (held-out 0.8815); a one-cycle schedule of 4 epochs is
    too short to use the larger input.
    """
    searched = {dim.name: dim for dim in space.dimensions if dim.choices is not None}
    options = {
        name: sorted(searched[name].choices, reverse=True) if name in searched else [params.get(name)]
        for name in ("resolution", "epochs")
    }
    candidates = [
        {**params, **{k: v for k, v in zip(options, values, strict=True) if v is not None}}
        for values in product(*options.values())
    ]
    long_enough = [c for c in candidates if c.get("epochs", MIN_RECIPE_EPOCHS) >= MIN_RECIPE_EPOCHS]
    short = [c for c in candidates if c not in long_enough]
    return next((c for c in long_enough + short if trial_seconds(c) <= seconds), candidates[-1])


def smaller_that_fits(
    space: SearchSpace,
    params: dict[str, Any],
    config: TrainConfig,
    *,
    seconds_of: Callable[[TrainConfig], float],
    seconds: float,
) -> dict[str, int]:
    """The most expensive resolution and epochs, each at most ``config``'s and among the space's
    choices, whose estimate (``seconds_of``) fits ``seconds``; empty if none does or ``params`` (a
    trial's) did not sample them."""
    choices = {
        dim.name: sorted(c for c in dim.choices if c <= getattr(config, dim.name))
        for dim in space.dimensions
        if dim.name in ("resolution", "epochs") and dim.choices is not None and dim.name in params
    }
    if not choices:
        return {}
    sizes = [dict(zip(choices, values, strict=True)) for values in product(*choices.values())]
    costs = {
        i: seconds_of(TrainConfig.from_dict({**config.to_dict(), **size}))
        for i, size in enumerate(sizes)
        if any(size[name] != getattr(config, name) for name in size)
    }
    fitting = [i for i, cost in costs.items() if cost <= seconds]
    return sizes[max(fitting, key=costs.__getitem__)] if fitting else {}


def last_member(
    study: optuna.Study, space: SearchSpace, seconds_of: Callable[[TrainConfig], float], left: float
) -> tuple[optuna.trial.FrozenTrial, dict[str, int]] | None:
    """Queue the best completed trial's configuration again, at the largest resolution and epochs
    whose estimate fits :data:`MEMBER_TIME_SHARE` of the ``left`` seconds, when the best no longer
    fits at its own size and no queued trial waits (warm-start recipes and smaller versions of
    skipped trials come first). Returns the best trial and the size queued, or ``None``.

    The queued trial has a new number, so a new seed; it shares the study's folds, so its
    out-of-fold predictions join ensemble selection, and it is never pruned. The sampler's
    proposals for the same minutes measured nothing: a 30-minute Fashion-MNIST study (2 CPU
    cores) ended with 9 pruned and 18 skipped trials after its two recipes, none of them a member.
    A second, smaller model of the best configuration is a member whose worth does not depend on
    the sampler's luck in its last proposals.
    """
    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        return None
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return None
    recorded = TrialRecord.read(best).config
    if recorded is None:
        return None
    config = TrainConfig.from_dict(recorded)
    if seconds_of(config) <= left:
        return None  # the sampler's trials can still be as large as the best: they go on
    size = smaller_that_fits(space, best.params, config, seconds_of=seconds_of, seconds=MEMBER_TIME_SHARE * left)
    if not size:
        return None
    study.enqueue_trial({**best.params, **size}, user_attrs=member_attrs(best))
    return best, size
