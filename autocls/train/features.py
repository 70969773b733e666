"""Frozen parts run once: the cached outputs of a frozen, pretrained backbone (or its first stages).

A frozen, pretrained part that sees unaugmented, unmixed images computes the same output every
epoch and fold: it runs once over all images (in eval mode), the :class:`ImageStore` keeps the
result for the next folds and trials, and only the rest of the model trains on it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from autocls.data.images import ImageStore
from autocls.train.backbones import split_frozen_prefix
from autocls.train.config import TrainConfig
from autocls.train.feeding import autocast, to_device_layout

logger = logging.getLogger(__name__)
CACHE_BATCH = 256


# A frozen prefix's feature maps are kept only up to this size (early stages of a CNN at a high
# resolution are large); beyond it the prefix runs every step, as without a cache. Beside a cached
# store they are kept in a memory-mapped file (ImageStore.scratch), in memory otherwise.
FEATURE_CACHE_BYTES = 4 << 30


class _HeadOnFeatures(nn.Module):
    """The model's dropout and classifier, applied to cached pre-logit features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.drop = nn.Dropout(getattr(model, "drop_rate", 0.0))
        self.head = model.get_classifier()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features))


class _RestOnPrefix(nn.Module):
    """The model's trainable stages and head, applied to a frozen prefix's cached feature maps.

    ``model`` is held as a submodule so ``train()``/``eval()`` reach its dropout and BatchNorm layers.
    """

    def __init__(self, model: nn.Module, rest: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rest = rest

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.rest(features))


def only_head_trains(model: nn.Module) -> bool:
    head = {id(p) for p in model.get_classifier().parameters()}
    return all(not p.requires_grad for p in model.parameters() if id(p) not in head)


def cached_inputs(
    model: nn.Module,
    store: ImageStore,
    config: TrainConfig,
    *,
    weights_dir: Path | None,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch: int = CACHE_BATCH,
) -> tuple[nn.Module, torch.Tensor] | None:
    """The network left to train and its cached inputs, when a frozen part can run once.

    The caller decides that the inputs are the same every epoch (no augmentation, no MixUp).
    Everything below the classifier frozen (a linear probe) caches pooled features; the first
    stages frozen cache the last frozen stage's feature maps. ``None`` when nothing can be cached.
    The frozen part runs ``batch`` images at a time, in training's precision (it stands in for the
    forward pass training would run); an out-of-memory retry halves ``batch``.
    """
    if not config.pretrained:
        return None  # random frozen weights differ per fold
    images = store.at(config.resolution)

    def features(part: str, frozen: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        def compute() -> torch.Tensor:
            # written into one tensor as the chunks come: a list of chunks then torch.cat held the
            # features twice at the end (8 GiB at the prefix cache's 4 GiB limit, on 100,000 images)
            model.eval()
            out = torch.empty(0)
            with torch.inference_mode(), autocast(device, training=True):
                for start in range(0, len(images), batch):
                    part = frozen(prepare(images[start : start + batch])).float()
                    if start == 0:  # on disk where the images are: memory does not grow with them
                        out = store.scratch((len(images), *part.shape[1:]))
                    out[start : start + len(part)] = part.cpu()
            return out

        return store.features((config.backbone, str(weights_dir), config.resolution, part), compute)

    if only_head_trains(model):
        pooled = functools.partial(model.forward_head, pre_logits=True)
        return _HeadOnFeatures(model), features("pre-logits", lambda x: pooled(model.forward_features(x)))
    model.eval()
    split = split_frozen_prefix(model, prepare(images[:2]))
    if split is None:
        return None
    prefix, rest = split
    with torch.inference_mode():
        per_image = prefix(prepare(images[:1])).numel() * 4
    if per_image * len(images) > FEATURE_CACHE_BYTES:
        logger.debug("frozen-prefix cache would need %d MiB; not cached", per_image * len(images) >> 20)
        return None
    return _RestOnPrefix(model, rest), features(f"prefix {len(prefix)}", prefix)


def features_to_device(features: torch.Tensor, device: torch.device) -> torch.Tensor:
    return to_device_layout(features.to(device, non_blocking=True))
