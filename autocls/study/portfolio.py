"""Warm start: strong known configurations, one per backbone family, tried before the sampler.

Each family has the recipe its practitioners use for fine-tuning (timm's and the papers'): AdamW
with a one-cycle schedule for EfficientNet/MobileNet, Nesterov SGD with cosine for ResNet/DenseNet,
AdamW with a small learning rate, warmup and layer-wise decay for ConvNeXt/ViT/Swin. The family's
cheapest backbone in the space is used, with more frozen stages when there are few images per
class, at the resolution closest to the images' own size. Only values the space can take are
enqueued; the rest is left to the sampler.

How large each recipe trains in a time budget (the largest resolution, then the most epochs, that
fit its share: pretrained CNNs gain from upsampling small images, as far as time allows), and how
many of the k folds each trial trains, is the time plan's (:mod:`autocls.study.budget`). Which
recipes go on after their probes is decided here (:func:`survivors`, :mod:`autocls.study.halving`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


def probe_params(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` at the lowest fidelity the space offers: its lowest resolution and fewest epochs."""
    searched = {dim.name: dim for dim in space.dimensions if dim.choices is not None}
    return {**params, **{name: min(searched[name].choices) for name in ("resolution", "epochs") if name in searched}}


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
