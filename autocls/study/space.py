"""Search spaces: TOML data files read into plain dataclasses, sampled define-by-run.

A space file has an optional ``description``, a ``[fixed]`` table of settings every trial shares,
and one ``[params.NAME]`` table per searched dimension, in the order they are sampled::

    [params.optimizer]
    choices = ["adamw", "sgd"]

    [params.momentum]            # sampled only when the condition holds
    low = 0.8
    high = 0.99
    when = { optimizer = ["sgd"] }

A dimension with ``choices`` is categorical; one with ``low``/``high`` is an integer range when both
bounds are integers and a float range otherwise (``log = true`` samples on a log scale, ``step`` sets
a grid). ``when`` makes it conditional on dimensions sampled before it. Names are the fields of
:class:`autocls.train.config.TrainConfig`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocls.runtime.errors import AutoclsError
from autocls.train.config import SettingError, TrainConfig, check_setting

if TYPE_CHECKING:  # a trial samples a space; showing one needs no Optuna
    import optuna

Value = bool | int | float | str
_DIMENSION_KEYS = {"choices", "low", "high", "log", "step", "when"}


@dataclass(frozen=True)
class Dimension:
    """One searched setting: categorical ``choices`` or a numeric ``low``..``high`` range."""

    name: str
    choices: tuple[Value, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: dict[str, tuple[Value, ...]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "categorical"
        return "int" if isinstance(self.low, int) and isinstance(self.high, int) else "float"

    def is_active(self, sampled: dict[str, Any]) -> bool:
        return all(name in sampled and sampled[name] in allowed for name, allowed in self.when.items())

    def suggest(self, trial: optuna.Trial) -> Value:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return ", ".join(str(c) for c in self.choices)
        scale = " (log)" if self.log else ""
        step = f" step {self.step}" if self.step else ""
        return f"{self.low} .. {self.high}{scale}{step}"


@dataclass(frozen=True)
class SearchSpace:
    """A named search space: fixed settings plus dimensions sampled in order."""

    name: str
    description: str = ""
    fixed: dict[str, Value] = field(default_factory=dict)
    dimensions: tuple[Dimension, ...] = ()

    def sample(self, trial: optuna.Trial) -> TrainConfig:
        """Sample the active dimensions of this space with ``trial`` (define-by-run)."""
        sampled: dict[str, Any] = {}
        for dim in self.dimensions:
            if dim.is_active(sampled):
                sampled[dim.name] = dim.suggest(trial)
        return TrainConfig.from_dict({**self.fixed, **sampled})

    def values_of(self, name: str) -> list[Value]:
        """Every value ``name`` can take: its choices, its bounds, or its fixed value."""
        for dim in self.dimensions:
            if dim.name == name:
                return list(dim.choices) if dim.choices is not None else [dim.low, dim.high]
        if name in self.fixed:
            return [self.fixed[name]]
        return [getattr(TrainConfig, name)] if hasattr(TrainConfig, name) else []

    @property
    def max_resolution(self) -> int:
        return int(max(self.values_of("resolution")))

    def to_dict(self) -> dict[str, Any]:
        """The space as TOML-shaped data, stored with the study so refit never depends on the file."""
        params = {}
        for dim in self.dimensions:
            entry: dict[str, Any] = {}
            if dim.choices is not None:
                entry["choices"] = list(dim.choices)
            else:
                entry.update(low=dim.low, high=dim.high, log=dim.log)
                if dim.step is not None:
                    entry["step"] = dim.step
            if dim.when:
                entry["when"] = {k: list(v) for k, v in dim.when.items()}
            params[dim.name] = entry
        return {"name": self.name, "description": self.description, "fixed": dict(self.fixed), "params": params}


def builtin_space_dir() -> Path:
    """``search_spaces/`` of the source tree, or the copy installed inside the package."""
    source_tree = Path(__file__).resolve().parents[2] / "search_spaces"
    if source_tree.is_dir():
        return source_tree
    return Path(str(resources.files("autocls") / "search_spaces"))


def builtin_space_names() -> list[str]:
    return sorted(p.stem for p in builtin_space_dir().glob("*.toml"))


def load_space(name_or_path: str | Path, *, check_backbones: bool = True) -> SearchSpace:
    """Load a built-in space by name (``default``, ``fast``) or a space file by path.

    ``check_backbones=False`` leaves the backbone names unchecked: timm's registry, which knows
    them, imports torch (seconds), which showing a space does not need; a search checks them."""
    path = Path(name_or_path)
    if not path.is_file():
        path = builtin_space_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise AutoclsError(
                f"no search space {str(name_or_path)!r}: give a .toml file or one of {builtin_space_names()}."
            )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise AutoclsError(f"{path}: not valid TOML ({err}).") from None
    return space_from_dict(data, name=path.stem, origin=str(path), check_backbones=check_backbones)


def space_from_dict(
    data: dict[str, Any], name: str, origin: str = "search space", *, check_backbones: bool = True
) -> SearchSpace:
    """Build and validate a :class:`SearchSpace` from TOML-shaped data."""
    unknown = set(data) - {"name", "description", "fixed", "params"}
    if unknown:
        raise AutoclsError(f"{origin}: unknown top-level keys {sorted(unknown)}; expected description, fixed, params.")
    known = set(TrainConfig.field_names())
    fixed = dict(data.get("fixed", {}))
    dimensions = []
    for dim_name, spec in data.get("params", {}).items():
        dimensions.append(_dimension(dim_name, spec, origin, sampled_before={d.name for d in dimensions}))
    for setting in [*fixed, *(d.name for d in dimensions)]:
        if setting not in known:
            raise AutoclsError(f"{origin}: unknown setting {setting!r}; settings are {sorted(known)}.")
    space = SearchSpace(
        name=str(data.get("name", name)),
        description=str(data.get("description", "")),
        fixed=fixed,
        dimensions=tuple(dimensions),
    )
    if "backbone" not in fixed and all(d.name != "backbone" for d in dimensions):
        raise AutoclsError(f"{origin}: a space must fix or search 'backbone'.")
    _check_values(space, origin)
    if check_backbones:
        _check_backbones(space, origin)
    return space


def _check_backbones(space: SearchSpace, origin: str) -> None:
    """Every backbone is one timm knows; a misspelt name gets the nearest names as suggestions."""
    import difflib

    import timm

    for name in space.values_of("backbone"):
        if not timm.is_model(str(name)):
            near = difflib.get_close_matches(str(name), timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else "; see timm.list_models() for the names."
            raise AutoclsError(f"{origin}: unknown backbone {name!r}{hint}")


def _check_values(space: SearchSpace, origin: str) -> None:
    """Every value a space can give is a valid setting (:data:`autocls.train.config.CONSTRAINTS`), checked
    when the file is loaded rather than when a trial happens to sample it (then it failed
    mid-search as an 'unexpected error')."""
    for name, value in space.fixed.items():
        try:
            check_setting(name, value)
        except SettingError as err:
            raise err.at(f"{origin} [fixed]") from None
    for dim in space.dimensions:
        for value in dim.choices if dim.choices is not None else (dim.low, dim.high):
            try:
                check_setting(dim.name, value)
            except SettingError as err:
                raise err.at(f"{origin} [params.{dim.name}]") from None


def _dimension(name: str, spec: Any, origin: str, sampled_before: set[str]) -> Dimension:
    where = f"{origin}: params.{name}"
    if not isinstance(spec, dict):
        raise AutoclsError(f"{where} must be a table with choices or low/high, got {spec!r}.")
    unknown = set(spec) - _DIMENSION_KEYS
    if unknown:
        raise AutoclsError(f"{where}: unknown keys {sorted(unknown)}; allowed are {sorted(_DIMENSION_KEYS)}.")
    when = {}
    for parent, allowed in spec.get("when", {}).items():
        if parent not in sampled_before:
            raise AutoclsError(f"{where}: condition on {parent!r}, which is not a dimension listed before it.")
        when[parent] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise AutoclsError(f"{where}: choices must be a non-empty list, got {choices!r}.")
        return Dimension(name, choices=tuple(choices), when=when)
    if "low" not in spec or "high" not in spec:
        raise AutoclsError(f"{where}: give either choices = [...] or both low and high.")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise AutoclsError(f"{where}: low and high must be numbers, got low={low!r}, high={high!r}.")
    if not low < high:
        raise AutoclsError(f"{where}: low must be below high, got low={low}, high={high}.")
    if spec.get("log") and low <= 0:
        raise AutoclsError(f"{where}: a log range needs low > 0, got low={low}.")
    return Dimension(name, low=low, high=high, log=bool(spec.get("log", False)), step=spec.get("step"), when=when)
