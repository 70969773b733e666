"""The resolved configuration of one training run: what a search trial samples and refit re-runs.

Every setting is checked against one table, :data:`CONSTRAINTS` (type, range or choices), which a
search space's values are checked against as well; the settings of a run (trials, folds, timeout,
...) have theirs in :data:`RUN_CONSTRAINTS`, which the command line's flags and the Python API's
arguments are checked against. Every refusal reads the same
(:class:`~autocls.runtime.errors.SettingError`). The choices of ``optimizer``, ``scheduler`` and
``augmentation`` are listed here and implemented by the registries of :mod:`autocls.train.optim` and
:mod:`autocls.train.augment`, keyed by the same names (a test keeps them the same): this module
imports no torch, so the command line and ``autocls space show`` read it at once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from autocls.runtime.errors import AutoclsError, SettingError

IMBALANCE = ("none", "class_weight", "sampler")
# the names a search space and the CLI's tables use, implemented by the registries named above
OPTIMIZER_NAMES = ("adamw", "adam", "sgd")
SCHEDULER_NAMES = ("cosine", "onecycle", "step", "plateau", "constant")
AUGMENTATIONS = ("none", "light", "randaugment", "trivialaugment", "autoaugment")
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}


@dataclass(frozen=True)
class Constraint:
    """What one setting accepts: a type, and choices or a range (``open_low``: low itself is excluded);
    ``unit`` names what a number counts ("seconds")."""

    kind: type
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    unit: str = ""

    def accepts(self, value: Any) -> bool:
        # bool is an int to Python, but "epochs = true" is a mistake; an int is a fine float
        types = (int, float) if self.kind is float else self.kind
        if isinstance(value, bool) != (self.kind is bool) or not isinstance(value, types):
            return False
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        kind = _TYPE_NAMES[self.kind] + (f" of {self.unit}" if self.unit else "")
        if self.low is None and self.high is None:
            return kind
        if self.high is None:
            return f"{kind} {'>' if self.open_low else '>='} {self.low:g}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"


def _fraction(open_high: bool = False) -> Constraint:
    return Constraint(float, low=0.0, high=1.0, open_high=open_high)


CONSTRAINTS: dict[str, Constraint] = {
    "backbone": Constraint(str),
    "pretrained": Constraint(bool),
    "freeze": _fraction(),  # of the backbone's stages: 0 fine-tunes all, 1 trains the head alone
    "optimizer": Constraint(str, choices=OPTIMIZER_NAMES),
    "lr": Constraint(float, low=0.0, open_low=True),
    "weight_decay": Constraint(float, low=0.0, high=10.0),
    "momentum": _fraction(open_high=True),
    "nesterov": Constraint(bool),
    "sam_rho": Constraint(float, low=0.0, high=10.0),
    "layer_decay": Constraint(float, low=0.0, high=1.0, open_low=True),
    "scheduler": Constraint(str, choices=SCHEDULER_NAMES),
    "warmup_epochs": Constraint(int, low=0),
    "augmentation": Constraint(str, choices=AUGMENTATIONS),
    "random_erasing": _fraction(),
    "mixup": Constraint(float, low=0.0),
    "cutmix": Constraint(float, low=0.0),
    "label_smoothing": _fraction(open_high=True),
    "imbalance": Constraint(str, choices=IMBALANCE),
    "dropout": _fraction(open_high=True),
    "head_hidden": Constraint(int, low=0),
    "batch_size": Constraint(int, low=1),
    "resolution": Constraint(int, low=8),
    "epochs": Constraint(int, low=1),
    "patience": Constraint(int, low=1),
}


# the settings of a run rather than of one training: the CLI's flags and the API's arguments
RUN_CONSTRAINTS: dict[str, Constraint] = {
    "trials": Constraint(int, low=1),
    "folds": Constraint(int, low=2),
    "keep_trials": Constraint(int, low=1),
    "seed": Constraint(int, low=0),
    "timeout": Constraint(float, low=0.0, open_low=True, unit="seconds"),
    "workers": Constraint(int, low=1),
    "max_latency_ms": Constraint(float, low=0.0, open_low=True, unit="milliseconds"),
    "max_params": Constraint(int, low=1),
    "label_weight": _fraction(),
}


def constraint(name: str) -> Constraint:
    """What setting ``name`` accepts: a training setting, or a setting of the run."""
    return CONSTRAINTS[name] if name in CONSTRAINTS else RUN_CONSTRAINTS[name]


def check_setting(name: str, value: Any, where: str | None = None) -> None:
    """Raise :class:`~autocls.runtime.errors.SettingError` unless ``value`` is acceptable for setting
    ``name`` (:func:`constraint`)."""
    if not constraint(name).accepts(value):
        raise SettingError(name, constraint(name).describe(), value, where)


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
        for name in self.field_names():
            check_setting(name, getattr(self, name))

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
