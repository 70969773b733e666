"""Test-time views: cheap transforms of a normalised ``(N, 3, R, R)`` batch whose predictions can be
averaged with the batch's own.

Each view is a small change a classifier trained with augmentation should hardly notice (a mirror
image; a rotation within the +-15 degrees of the "light" policy; a tenth more or less of the
object), so its predictions are about as good as the plain ones while their errors partly differ.
Refit keeps the views that improve its out-of-fold criterion
(:func:`autocls.refitter._choose_tta`); a saved model's manifest lists them, and prediction and
the exported graph apply the same functions. Geometric views resample with
``grid_sample`` and replicate the border (the background of most photos and scans), one affine
map per view, the same at every resolution and traceable into TorchScript and ONNX.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

View = Callable[[torch.Tensor], torch.Tensor]

ROTATION_DEGREES = 10.0  # within the "light" augmentation's +-15 degrees, where every recipe trains
ZOOM = 1.1  # a tenth more or less of the image: objects' framing varies at least this much across photos


def _affine(x: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    """``x`` resampled by the 2x3 affine map ``theta`` (output -> input, normalised coordinates)."""
    matrix = torch.tensor(theta, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _rotate(degrees: float) -> View:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return lambda x: _affine(x, [[c, -s, 0.0], [s, c, 0.0]])


def _zoom(factor: float) -> View:
    return lambda x: _affine(x, [[1 / factor, 0.0, 0.0], [0.0, 1 / factor, 0.0]])


# name -> view; refit keeps those that improve its out-of-fold criterion (a tie goes to the first listed)
TTA_VIEWS: dict[str, View] = {
    "hflip": lambda x: torch.flip(x, dims=[3]),
    "rotate_left": _rotate(ROTATION_DEGREES),  # counter-clockwise (affine_grid's y axis points down)
    "rotate_right": _rotate(-ROTATION_DEGREES),
    "zoom_in": _zoom(ZOOM),
    "zoom_out": _zoom(1 / ZOOM),
}


def with_views(x: torch.Tensor, names: tuple[str, ...] | list[str]) -> list[torch.Tensor]:
    """``x`` and each named view of it, in order."""
    return [x] + [TTA_VIEWS[name](x) for name in names]


def describe_steps(scores: dict[str, float]) -> str:
    """``none 0.8740, hflip 0.8755, hflip+zoom_in 0.8760``: each step of refit's choice of views
    (the manifest's ``selection.oof_score_tta``) with its out-of-fold score."""
    return ", ".join(f"{views} {value:.4f}" for views, value in scores.items())
