"""Training-time augmentation, keyed by policy name, on uint8 image tensors.

Policies run per image on ``(3, H, W)`` uint8 tensors from the image store with torchvision's v2
transforms, so no file is read again; normalisation and MixUp/CutMix (timm's ``Mixup``, which mixes
whole batches) happen afterwards, in the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

Transform = Callable[[torch.Tensor], torch.Tensor]

POLICIES: dict[str, Callable[[], list[Transform]]] = {
    "none": lambda: [],
    "light": lambda: [
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(15),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ],
    "randaugment": lambda: [v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=2, magnitude=9)],
    "trivialaugment": lambda: [v2.RandomHorizontalFlip(), v2.TrivialAugmentWide()],
    "autoaugment": lambda: [v2.RandomHorizontalFlip(), v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)],
}


def create_augmentation(policy: str, random_erasing: float = 0.0) -> Transform | None:
    """The per-image transform for ``policy`` plus RandomErasing with probability ``random_erasing``.

    ``None`` when there is nothing to do, so the trainer can skip the per-image loop entirely.
    """
    steps = POLICIES[policy]()
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps) if steps else None
