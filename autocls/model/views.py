"""Test-time views: cheap transforms of a normalised ``(N, 3, R, R)`` batch whose predictions can be
averaged with the batch's own.

Refit keeps a view only where it raises the out-of-fold score (:func:`autocls.final.testtime.choose_tta`);
a saved model's manifest lists the views it kept, and prediction and the exported graph apply the
same functions.

Only the horizontal flip is offered. Rotations of 10 degrees either way and zooms of 10% in and out
(affine resampling with a replicated border) were measured and left out: on four 30-minute
Fashion-MNIST studies (2,000 images; 2,000 held out) refit chose one or two of them after the flip
on out-of-fold accuracy (+0.30 to +0.55 points there) or all of them on log loss, and held-out
accuracy was 0.05-0.20 points below the flip alone every time. With four candidates, what they
gained out of fold was noise chosen as signal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

View = Callable[[torch.Tensor], torch.Tensor]

# name -> view; refit keeps those that raise the out-of-fold score (a tie goes to the first listed)
TTA_VIEWS: dict[str, View] = {"hflip": lambda x: torch.flip(x, dims=[3])}


def with_views(x: torch.Tensor, names: tuple[str, ...] | list[str]) -> list[torch.Tensor]:
    """``x`` and each named view of it, in order."""
    return [x] + [TTA_VIEWS[name](x) for name in names]


def describe_steps(scores: dict[str, float]) -> str:
    """``none 0.8740, hflip 0.8755``: each step of refit's choice of views (the manifest's
    ``selection.oof_score_tta``) with its out-of-fold score."""
    return ", ".join(f"{views} {value:.4f}" for views, value in scores.items())
