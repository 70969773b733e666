"""Warm start: strong known configurations, one per backbone family, tried before the sampler.

Each family has the recipe its practitioners use for fine-tuning (timm's and the papers'): AdamW
with a one-cycle schedule for EfficientNet/MobileNet, Nesterov SGD with cosine for ResNet/DenseNet,
AdamW with a small learning rate, warmup and layer-wise decay for ConvNeXt/ViT/Swin. The family's
cheapest backbone in the space is used, with more frozen stages when there are few images per
class. Without a time budget it trains at the resolution closest to the images' own size; with
one, at the largest resolution and then the most epochs whose estimated trial time fits the
recipe's share of the budget (pretrained CNNs gain from upsampling small images, as far as time
allows). Only values the space can take are enqueued; the rest is left to the sampler.

The budget also sets how many of the k folds each trial trains (:func:`folds_to_train`): all of
them when the first recipe's k-fold CV fits its share, else fewer, down to a hold-out split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from typing import Any

from autocls.study.space import SearchSpace

# family -> (name prefixes, recipe); prefixes are matched against the space's backbone choices
FAMILIES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "efficientnet": (
        ("tf_efficientnet_lite", "efficientnet_", "tf_efficientnet_", "mobilenet", "lcnet"),
        {
            "optimizer": "adamw",
            "lr": 3e-3,
            "weight_decay": 1e-4,
            "scheduler": "onecycle",
            "augmentation": "light",
            "label_smoothing": 0.1,
            "mixup": 0.0,  # MixUp/CutMix pay off in long schedules; a recipe must be reliable in short ones
            "cutmix": 0.0,
            "batch_size": 64,
        },
    ),
    "resnet": (
        ("resnet", "densenet", "regnet"),
        {
            "optimizer": "sgd",
            "nesterov": True,
            "momentum": 0.9,
            "lr": 1e-2,
            "weight_decay": 1e-4,
            "scheduler": "cosine",
            "warmup_epochs": 1,
            "augmentation": "light",
            "label_smoothing": 0.1,
            "mixup": 0.0,
            "cutmix": 0.0,
            "batch_size": 64,
        },
    ),
    "transformer": (
        ("convnext", "vit_", "swin", "deit", "eva"),
        {
            "optimizer": "adamw",
            "lr": 1e-4,
            "weight_decay": 0.05,
            "layer_decay": 0.75,
            "scheduler": "cosine",
            "warmup_epochs": 1,
            "augmentation": "randaugment",
            "label_smoothing": 0.1,
            "batch_size": 32,
        },
    ),
}


@dataclass(frozen=True)
class DataStats:
    """What the portfolio looks at: dataset size, class count and typical image side in pixels."""

    images: int
    classes: int
    image_side: int


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
    recipes = portfolio(space, stats)
    if not recipes or fold_seconds is None or not budget:
        return folds
    per_fold = _cheapest_long_enough(space, recipes[0], fold_seconds)
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


def survivors(scores: list[float], maximise: bool, images: int) -> list[int]:
    """Indices of the recipes that go on, best first: the better half (rounded up) of those whose probe
    gave a score, and any other within noise of the best (:func:`ties`).

    A failed probe (nan) never goes on, unless every probe failed: then all go on, in their first order.
    """
    scored = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if not scored:
        return list(range(len(scores)))
    order = sorted(scored, key=lambda i: -scores[i] if maximise else scores[i])
    tied = ties(scores, maximise, images)
    half = math.ceil(len(scores) / 2)
    return [i for rank, i in enumerate(order) if rank < half or i in tied]


# Probes whose scores differ by less than this many standard errors of a difference are tied
# (a two-sided test at 5%).
TIE_Z = 1.96


def ties(scores: list[float], maximise: bool, images: int) -> list[int]:
    """Indices of the probes that a test at 5% cannot tell from the best score, best first (the best
    included; none when no probe gave a score).

    Two shares (accuracy and the like, on the 0-1 scale) measured on ``images`` validation images
    differ by noise up to :data:`TIE_Z` standard errors of a difference, ``sqrt(2 p (1 - p) / images)``
    at the best score ``p``. The probes score the same images, so the paired error is smaller: this
    errs toward a tie, which costs the best recipe part of its time, where a wrong drop costs the
    ensemble its second member. With one standard error of one share as the bound (0.017 on 400
    images), Lite1's 0.8600 against Lite0's 0.8300 on 2,000 Fashion-MNIST images dropped Lite0, and
    the search delivered Lite1 alone (held-out 0.8980, the same as its first recipe refit alone).
    """
    scored = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if not scored:
        return []
    order = sorted(scored, key=lambda i: -scores[i] if maximise else scores[i])
    best = scores[order[0]]
    p = min(max(best, 0.0), 1.0)
    noise = TIE_Z * math.sqrt(2 * p * (1 - p) / max(images, 1))
    return [i for i in order if abs(scores[i] - best) <= noise]


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


def portfolio(
    space: SearchSpace,
    stats: DataStats,
    trial_seconds: Callable[[dict[str, Any]], float] | None = None,
    budget: float | None = None,
) -> list[dict[str, Any]]:
    """Parameter sets to enqueue, cheapest family first; empty if the space searches no backbone.

    ``trial_seconds`` estimates a parameter set's trial time; with it and a ``budget`` in seconds
    each recipe is sized to its share of the budget (see :data:`BUDGET_SHARES`).
    """
    found = recipes(space, stats)
    if trial_seconds is None or not budget:
        return found
    return size_to_shares(space, found, trial_seconds, budget)


def recipes(space: SearchSpace, stats: DataStats) -> list[dict[str, Any]]:
    """Each family's recipe on its cheapest backbone in the space, fitted to the space, not yet sized."""
    backbones = [str(b) for b in space.values_of("backbone")]
    families = []
    for prefixes, recipe in FAMILIES.values():
        members = [b for b in backbones if b.startswith(prefixes)]
        if members:
            families.append((recipe, members))
    if len(families) == 1 and len(families[0][1]) > 1:
        # one family only (offline on a CPU: the EfficientNet-Lite checkpoints): its second backbone
        # too, so that ensemble selection has two strong members that differ in more than the seed
        recipe, members = families[0]
        families.append((recipe, members[1:]))
    configs = []
    for recipe, members in families:
        params = {**recipe, "backbone": members[0]}  # spaces list each family's cheapest first
        params["resolution"] = stats.image_side  # snapped to the space's nearest resolution below
        per_class = stats.images / max(1, stats.classes)
        params["freeze"] = 0.5 if per_class < 30 else 0.0
        params["augmentation"] = params["augmentation"] if per_class >= 30 else "light"
        configs.append(_fit_to_space(space, params))
    return [c for c in configs if c]


# Recipes the probes could not tell from the best (the best included) share this part of the time
# equally; the sampler keeps the rest.
MAX_TIED_SHARE = 0.85


def size_to_shares(
    space: SearchSpace,
    ordered: list[dict[str, Any]],
    trial_seconds: Callable[[dict[str, Any]], float],
    budget: float,
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


def probe_params(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` at the lowest fidelity the space offers: its lowest resolution and fewest epochs."""
    searched = {dim.name: dim for dim in space.dimensions if dim.choices is not None}
    return {**params, **{name: min(searched[name].choices) for name in ("resolution", "epochs") if name in searched}}


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


def _fit_to_space(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """Keep the parameters the space searches, snapped to its choices or clipped to its bounds."""
    fitted: dict[str, Any] = {}
    for dim in space.dimensions:
        if dim.name not in params or not dim.is_active(fitted):
            continue
        value = params[dim.name]
        if dim.choices is not None:
            if value in dim.choices:
                fitted[dim.name] = value
            elif all(isinstance(c, int | float) and not isinstance(c, bool) for c in dim.choices):
                fitted[dim.name] = min(dim.choices, key=lambda c: abs(c - value))
        else:
            fitted[dim.name] = type(dim.low)(min(max(value, dim.low), dim.high))
    return fitted
