"""Training-time augmentation, keyed by policy name, on whole batches on the device that trains.

A batch of uint8 ``(N, 3, H, W)`` images from the image store goes to the training device first and
is augmented there at once, each image with its own random parameters (flip or not, angle, jitter
factors, erased box), by kornia's augmentation modules; normalisation and MixUp/CutMix (timm's
``Mixup``, which mixes whole batches) follow in the trainer. The per-image loop of torchvision
transforms this replaces ran on one CPU core in the main process, which a GPU would outrun many
times over (``bench/throughput.py`` measures both).

kornia's automatic policies (RandAugment, TrivialAugment, AutoAugment) draw which operations to
apply once per call, for the whole batch. :class:`PerGroup` calls them on small random groups of
the batch, so each image's operations are still a draw from the policy (the same distribution as
torchvision's per-image policy) while the work stays batched; ``bench/throughput.py`` measures the
group size's cost.
"""

from __future__ import annotations

from collections.abc import Callable

import kornia.augmentation as K
import torch
from kornia.augmentation.auto import AutoAugment, RandAugment, TrivialAugment
from torch import nn

GROUP = 4  # images that share one draw of an automatic policy's operations


class PerGroup(nn.Module):
    """``policy`` (which draws its operations once per call) applied to random groups of ``group``
    images: every image's operations are a fresh draw of the policy, with batched work."""

    def __init__(self, policy: nn.Module, group: int = GROUP) -> None:
        super().__init__()
        self.policy, self.group = policy, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for members in torch.randperm(len(x), device=x.device).split(self.group):
            out[members] = self.policy(x[members])
        return out


POLICIES: dict[str, Callable[[], list[nn.Module]]] = {
    "none": lambda: [],
    # torchvision's RandomRotation and ColorJitter always apply (p=1); kornia's rotation defaults to p=0.5
    "light": lambda: [
        K.RandomHorizontalFlip(),
        K.RandomRotation(15.0, p=1.0),
        K.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, p=1.0),
    ],
    # magnitude 9 of 30, as torchvision's RandAugment(num_ops=2, magnitude=9) of its 31 bins
    "randaugment": lambda: [K.RandomHorizontalFlip(), PerGroup(RandAugment(n=2, m=9))],
    "trivialaugment": lambda: [K.RandomHorizontalFlip(), PerGroup(TrivialAugment())],
    "autoaugment": lambda: [K.RandomHorizontalFlip(), PerGroup(AutoAugment("imagenet"))],
}


class BatchAugment(nn.Module):
    """uint8 ``(N, 3, H, W)`` batch (on any device) -> augmented float batch in [0, 1] on that device."""

    def __init__(self, steps: list[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.Sequential(*steps)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.steps(images.float() / 255.0).clamp_(0.0, 1.0)


def create_augmentation(policy: str, random_erasing: float = 0.0) -> BatchAugment | None:
    """The batch augmentation for ``policy`` plus RandomErasing (to black, as before normalisation)
    with probability ``random_erasing``; ``None`` when there is nothing to do."""
    steps = POLICIES[policy]()
    if random_erasing > 0:
        steps.append(K.RandomErasing(p=random_erasing, value=0.0))
    return BatchAugment(steps) if steps else None
