"""Training-time augmentation policies, keyed by name, on uint8 image tensors.

Policies run per image on ``(3, H, W)`` uint8 tensors from the image store (torchvision's v2
transforms), so they never touch the files; normalisation happens afterwards, per batch, in the
trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

Transform = Callable[[torch.Tensor], torch.Tensor]


def _light(resolution: int) -> Transform:
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(15),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    )


def _randaugment(resolution: int) -> Transform:
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=2, magnitude=9)])


POLICIES: dict[str, Callable[[int], Transform]] = {
    "light": _light,
    "randaugment": _randaugment,
}


def create_augmentation(policy: str, resolution: int) -> Transform | None:
    """The per-image transform for ``policy``, or ``None`` for ``"none"``."""
    if policy == "none":
        return None
    return POLICIES[policy](resolution)
