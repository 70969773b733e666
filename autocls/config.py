"""The resolved configuration of one training run: what a search trial samples and refit re-runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from autocls.errors import AutoclsError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "onecycle", "step", "plateau", "constant")
AUGMENTATIONS = ("none", "light", "randaugment", "trivialaugment", "autoaugment")
IMBALANCE = ("none", "class_weight", "sampler")


_TYPES = {"str": str, "bool": bool, "int": int, "float": (int, float)}
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", (int, float): "a number"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs to train one fold model.

    ``freeze`` is the fraction of the backbone's stages (timm's coarse parameter groups, head
    excluded) that stay frozen: 0 fine-tunes everything, 1 trains the head alone (a linear probe).
    ``layer_decay`` below 1 gives lower layers smaller learning rates (timm's layer-wise decay).
    ``sam_rho`` above 0 wraps the optimizer in SAM with that neighbourhood radius. ``mixup`` and
    ``cutmix`` are Beta alphas (0 is off), ``random_erasing`` a probability. ``imbalance`` picks
    class-weighted loss or a class-balanced sampler.
    """

    backbone: str
    pretrained: bool = True
    freeze: float = 0.0
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    sam_rho: float = 0.0
    layer_decay: float = 1.0
    scheduler: str = "cosine"
    warmup_epochs: int = 1
    augmentation: str = "light"
    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    imbalance: str = "none"
    dropout: float = 0.0
    head_hidden: int = 0
    batch_size: int = 32
    resolution: int = 64
    epochs: int = 10
    patience: int = 3

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value, kind = getattr(self, spec.name), _TYPES[spec.type]
            # bool is an int to Python, but "epochs = true" is a mistake; an int is a fine float
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
                raise AutoclsError(f"{spec.name} must be {_TYPE_NAMES[kind]}, got {value!r}.")
        for field, allowed in (
            ("optimizer", OPTIMIZERS),
            ("scheduler", SCHEDULERS),
            ("augmentation", AUGMENTATIONS),
            ("imbalance", IMBALANCE),
        ):
            value = getattr(self, field)
            if value not in allowed:
                raise AutoclsError(f"{field} must be one of {list(allowed)}, got {value!r}.")
        if not 0.0 <= self.freeze <= 1.0:
            raise AutoclsError(f"freeze is a fraction of the backbone's stages in [0, 1], got {self.freeze}.")
        if not 0.0 < self.layer_decay <= 1.0:
            raise AutoclsError(f"layer_decay must be in (0, 1], got {self.layer_decay}.")
        for field in ("batch_size", "resolution", "epochs"):
            if getattr(self, field) < 1:
                raise AutoclsError(f"{field} must be a positive integer, got {getattr(self, field)}.")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise AutoclsError(f"unknown training settings {unknown}; known ones are {list(cls.field_names())}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
