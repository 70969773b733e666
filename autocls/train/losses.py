"""The loss and the update rule: cross-entropy on soft targets (binary for multi-label data),
Sharpness-Aware Minimisation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against soft targets (MixUp/CutMix, label smoothing), optionally class-weighted.

    With class weights each image counts with the weight of its (mixed) target and the sum is
    normalised by the total weight, which for hard targets is torch's weighted ``cross_entropy``.
    timm's ``SoftTargetCrossEntropy`` has no class weights, hence this one function for both.
    """
    per_image = -(targets * logits.float().log_softmax(dim=1)).sum(dim=1)
    if class_weights is None:
        return per_image.mean()
    weights = targets @ class_weights
    return (per_image * weights).sum() / weights.sum()


def binary_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-label loss: binary cross-entropy of each label's logit against its (soft) target,
    averaged over images and labels; ``pos_weight`` weighs each label's positive term."""
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight)


def sam_ascent_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, compute_loss: Callable[[], torch.Tensor], rho: float
) -> None:
    """Sharpness-Aware Minimisation (Foret et al., 2021), first order; timm has no SAM.

    With the gradient at w already in ``.grad``, step to w + rho * g/|g|, take the gradient there
    and step back: the caller's ``optimizer.step()`` then applies the gradient of the worst nearby
    point at w. Wrapping the step rather than the optimizer keeps timm's schedulers and param groups.
    The ascent pass leaves BatchNorm's running statistics as the first pass left them, as reference
    SAM implementations do: each batch counts once, and not at the perturbed weights.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
    # no ascent where the gradients overflowed (fp16 training scales the loss, and its scaler then
    # skips the step): inf/inf offsets would leave NaN in the weights. A select, not an `if`, so
    # the host does not wait for the GPU; where the norm is finite the offsets are as they were.
    step = torch.where(torch.isfinite(grad_norm), rho / (grad_norm + 1e-12), torch.zeros_like(grad_norm))
    offsets = [p.grad * step for p in params]
    with torch.no_grad():
        torch._foreach_add_(params, offsets)
    optimizer.zero_grad(set_to_none=True)
    with batchnorm_stats_frozen(model):
        compute_loss().backward()
    with torch.no_grad():
        torch._foreach_sub_(params, offsets)


@contextlib.contextmanager
def batchnorm_stats_frozen(model: nn.Module):
    """BatchNorm layers in train mode still normalise with batch statistics, but their running
    statistics (and batch counts) are restored on the way out. Restoring copies is exact even for a
    batch with non-finite values, where a momentum of 0 would still write 0 * nan."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [{name: buf.clone() for name, buf in m.named_buffers(recurse=False)} for m in layers]
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, buffers in zip(layers, saved, strict=True):
                for name, value in buffers.items():
                    getattr(layer, name).copy_(value)
