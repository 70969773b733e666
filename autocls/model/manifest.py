"""A saved model's manifest: one typed, versioned record of what a model folder holds, validated when read.

``manifest.json`` describes the members (each trial's configuration, weight, normalisation and fold
count), the test-time views, the calibration or the label thresholds, the deployment limits kept,
the selection that chose the members, and where the model came from (study, trial, data, library
versions). Refit and distillation each build one :class:`Manifest` in one place; nothing edits it
afterwards (the dataclasses are frozen).

The JSON layout is the one models have been saved in since format 2 (format 1: one trial, no
``members``), so models saved before this module existed load as they are, and the keys a user
reads in the file keep their names. Reading validates the file: a foreign JSON file, a newer
format, damaged JSON or a missing field each give one :class:`~autocls.runtime.errors.AutoclsError`
line that names the file and says what to do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from autocls.data.discover import DataSpec
from autocls.model.calibration import Calibration
from autocls.model.views import TTA_VIEWS
from autocls.runtime.errors import AutoclsError
from autocls.train.config import TrainConfig
from autocls.train.history import EpochRecord

MANIFEST = "manifest.json"
# 2: members (several trials) and test-time views; 1 (one trial, no "members") still loads
FORMAT_VERSION = 2
RESIZE = "shorter side to decode_size, centre crop, then bilinear (antialiased) to resolution"
DISTILLED = "distilled"  # the ``fold_models`` of a student
REWRITE = "run autocls refit (or distill) again to write the model"

T = TypeVar("T")


class InvalidManifest(AutoclsError):
    """A manifest's value that no model can have; ``detail`` says which, without the file."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}.")
        self.detail = detail


@dataclass(frozen=True)
class MemberSpec:
    """One member: a trial's fold models, averaged, weighed by ``weight`` in the ensemble.

    ``mean``/``std`` normalise its input (the backbone's pretraining statistics); ``cv_score`` is
    the search's score of the trial, ``oof_score`` its out-of-fold score as refit measured it, and
    ``fold_models`` whether refit reused the search's fold models or retrained them."""

    config: TrainConfig
    weight: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folds: int
    trial: int | None = None
    cv_score: float | None = None
    oof_score: float | None = None
    fold_models: str | None = None

    def files(self, index: int) -> list[str]:
        """The fold models' file names when this is member ``index``: :func:`fold_files`."""
        return fold_files(index, self.folds)


def fold_files(index: int, folds: int) -> list[str]:
    """Member ``index``'s fold model files; member 0 keeps the single-trial names
    (``fold<i>.safetensors``), so older readers load it."""
    prefix = "" if index == 0 else f"member{index}_"
    return [f"{prefix}fold{i}.safetensors" for i in range(folds)]


@dataclass(frozen=True)
class SelectionRecord:
    """How refit chose the members and views on out-of-fold predictions. ``criterion`` is what
    selection maximised (log loss for most single-label studies); ``*_selected`` is the saved blend,
    ``*_best_trial`` the best trial alone; ``oof_score_tta`` the study's metric after each step of
    the choice of views (``"none"``, then the views kept so far joined by ``+``)."""

    candidates: tuple[int, ...]
    criterion: str
    oof_criterion_selected: float
    oof_criterion_best_trial: float
    oof_score_selected: float
    oof_score_best_trial: float
    oof_score_tta: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Thresholds:
    """A multi-label model's per-label decision thresholds, chosen to maximise ``maximise`` (macro or
    micro F1) on the out-of-fold probabilities, and the F1 they give there (a student keeps its
    teacher's thresholds without them)."""

    values: tuple[float, ...]
    label_delimiter: str = ";"
    maximise: str | None = None
    oof_macro_f1: float | None = None
    oof_micro_f1: float | None = None


@dataclass(frozen=True)
class DeploymentRecord:
    """What the saved model costs beside the study's deployment limits (``None``: no such limit)."""

    max_latency_ms: float | None
    max_params: int | None
    latency_ms: float
    parameters: int
    device: str


@dataclass(frozen=True)
class TeacherMember:
    trial: int | None
    weight: float
    folds: int


@dataclass(frozen=True)
class Distillation:
    """A student's teacher and how the two compare on the training images (in-sample, both)."""

    model: str
    members: tuple[TeacherMember, ...]
    tta: tuple[str, ...]
    label_weight: float
    agreement_on_training_images: float
    teacher_accuracy_on_training_images: float
    student_accuracy_on_training_images: float
    teacher_oof_score: float | None
    teacher_ms_per_image: float  # batched prediction of the training images, this device
    student_ms_per_image: float


@dataclass(frozen=True)
class FoldSummary:
    """One fold model of the lead member: its validation score and loss at the epoch it keeps."""

    fold: int
    score: float
    val_loss: float
    best_epoch: int
    epochs_run: int
    seconds: float
    batch_size: int


@dataclass(frozen=True)
class Scores:
    """The lead member's training and the saved model's out-of-fold scores, in the study's ``metric``.
    ``oof_images`` is fewer than the data's images where the search trained fewer than all folds."""

    metric: str = "accuracy"
    cv_score: float | None = None
    search_cv_score: float | None = None
    oof_score: float | None = None
    oof_accuracy: float | None = None
    oof_images: int | None = None
    folds: tuple[FoldSummary, ...] = ()
    history: tuple[tuple[EpochRecord, ...], ...] = ()  # per fold, per epoch


@dataclass(frozen=True)
class TrainingData:
    """The data the model was trained on: where it was (``spec``: ``None`` when not recorded), how many
    images, and their content fingerprint."""

    spec: DataSpec | None = None
    images: int | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class Provenance:
    """Where the model came from: the study and its lead trial, the training seed, whether the fold
    models were reused from the search, retrained or distilled, and the library versions."""

    study: str | None = None
    trial: int | None = None
    seed: int | None = None
    fold_models: str | None = None
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Everything a model folder records besides its weights. See the module docstring.

    A multi-label model is one with ``thresholds``; a single-label one may carry a ``calibration``
    (its temperature scales every prediction). Constructing one validates what prediction depends
    on (:class:`InvalidManifest`)."""

    class_names: tuple[str, ...]
    decode_size: int
    members: tuple[MemberSpec, ...]
    tta: tuple[str, ...] = ()
    calibration: Calibration | None = None
    thresholds: Thresholds | None = None
    limits: DeploymentRecord | None = None
    selection: SelectionRecord | None = None
    distilled_from: Distillation | None = None
    scores: Scores = field(default_factory=Scores)
    data: TrainingData = field(default_factory=TrainingData)
    provenance: Provenance = field(default_factory=Provenance)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise InvalidManifest(problem)

    def _problem(self) -> str | None:
        labels = len(self.class_names)
        if self.decode_size < 1:
            return f"the manifest's decode size must be a positive number of pixels; got {self.decode_size}"
        unknown = sorted(set(self.tta) - set(TTA_VIEWS))
        if unknown:
            return f"unknown test-time views {unknown} in the manifest; known: {list(TTA_VIEWS)}"
        temperature = self.temperature
        if not (math.isfinite(temperature) and temperature > 0):
            return f"the manifest's calibration temperature must be a positive number; got {temperature}"
        values = self.thresholds.values if self.thresholds else ()
        if self.thresholds and (len(values) != labels or not all(0 <= t <= 1 for t in values)):
            return f"the manifest's thresholds must be {labels} numbers in [0, 1], one per label; got {list(values)}"
        for index, member in enumerate(self.members):
            if not (math.isfinite(member.weight) and member.weight > 0) or member.folds < 1:
                return (
                    f"the manifest's member {index} must have a positive weight and at least one fold model; "
                    f"got weight {member.weight}, {member.folds} folds"
                )
            if len(member.mean) != 3 or len(member.std) != 3 or not all(s > 0 for s in member.std):
                return f"the manifest's member {index} must have 3 channel means and 3 positive standard deviations"
        return None

    # -- what prediction reads -------------------------------------------------------------
    @property
    def multilabel(self) -> bool:
        return self.thresholds is not None

    @property
    def temperature(self) -> float:
        """The calibration temperature; 1 (no scaling) for a model without one."""
        return float(self.calibration.temperature) if self.calibration else 1.0

    @property
    def lead(self) -> MemberSpec:
        """The member of most weight (the first of them on a tie; the only one for a single trial)."""
        return max(self.members, key=lambda m: m.weight)

    @property
    def label_delimiter(self) -> str | None:
        return self.thresholds.label_delimiter if self.thresholds else None

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The JSON object written as ``manifest.json`` (format 2's layout)."""
        lead = self.lead if self.members else None
        scores, origin = self.scores, self.provenance
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "study": origin.study,
            "trial": origin.trial,
            "config": lead.config.to_dict() if lead else None,
            "class_names": list(self.class_names),
            "preprocessing": {
                "decode_size": self.decode_size,
                "resolution": lead.config.resolution if lead else None,
                "resize": RESIZE,
                "mean": list(lead.mean) if lead else None,
                "std": list(lead.std) if lead else None,
            },
            "members": [_member_json(m) for m in self.members],
            "tta": list(self.tta),
        }
        if self.selection:
            out["selection"] = {**asdict(self.selection), "candidates": list(self.selection.candidates)}
        out["calibration"] = self.calibration.to_dict() if self.calibration else {}
        out |= {"folds": [asdict(f) for f in scores.folds], "metric": scores.metric}
        measured = {  # a student has none of these: it is scored on held-out images (evaluate)
            "cv_score": scores.cv_score,
            "oof_score": scores.oof_score,
            "oof_accuracy": scores.oof_accuracy,
            "oof_images": scores.oof_images,
            "search_cv_score": scores.search_cv_score,
        }
        out |= {key: value for key, value in measured.items() if value is not None}
        out |= {
            "fold_models": origin.fold_models,
            "seed": origin.seed,
            "data": {
                **(asdict(self.data.spec) if self.data.spec else {}),
                "images": self.data.images,
                "fingerprint": self.data.fingerprint,
            },
            "history": [[asdict(e) for e in fold] for fold in scores.history],
            "versions": dict(origin.versions),
        }
        if self.thresholds:
            t = self.thresholds
            out |= {"multilabel": True, "label_delimiter": t.label_delimiter, "thresholds": list(t.values)}
            if t.maximise is not None:
                out["thresholds_maximise"] = t.maximise
                out["oof_f1_at_thresholds"] = {"macro": t.oof_macro_f1, "micro": t.oof_micro_f1}
        if self.limits:
            out["limits"] = asdict(self.limits)
        if self.distilled_from:
            source = self.distilled_from
            out["distilled_from"] = {
                **asdict(source),
                "members": [asdict(m) for m in source.members],
                "tta": list(source.tta),
            }
        return out

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest in ``path``, validated; every problem is one :class:`AutoclsError` line."""
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise AutoclsError(f"{path}: not a readable autocls manifest (not UTF-8 text); {REWRITE}.") from None
        except OSError as err:
            raise AutoclsError(f"{path}: cannot read the manifest ({err.strerror or err}); {REWRITE}.") from None
        try:
            raw = json.loads(text)
        except ValueError as err:
            where = f" at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
            raise AutoclsError(
                f"{path}: not a readable autocls manifest (damaged: not JSON{where}); {REWRITE}."
            ) from None
        return cls.from_json(raw, path)

    @classmethod
    def from_json(cls, raw: object, path: Path | str = MANIFEST) -> Manifest:
        """The manifest of JSON object ``raw`` (read from ``path``, named in errors), validated."""
        if not isinstance(raw, dict) or not ({"format_version", "class_names"} & set(raw)):
            raise AutoclsError(
                f"{path}: not an autocls manifest (it has no format_version or class_names: another program's "
                "file?); give a model folder written by autocls refit or distill."
            )
        version = raw.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise AutoclsError(
                f"{path}: not a readable autocls manifest (format_version must be a whole number; got {version!r}); "
                f"{REWRITE}."
            )
        if version > FORMAT_VERSION:
            raise AutoclsError(
                f"{path}: written by a newer autocls (manifest format {version}; this autocls reads formats up to "
                f"{FORMAT_VERSION}); upgrade autocls (pip install -U autocls) to load this model."
            )
        try:
            return _parse(_Fields(raw, "", path), version)
        except InvalidManifest as err:
            raise AutoclsError(f"{path}: {err.detail}; {REWRITE}.") from None


def _member_json(member: MemberSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "trial": member.trial,
        "weight": member.weight,
        "config": member.config.to_dict(),
        "mean": list(member.mean),
        "std": list(member.std),
        "folds": member.folds,
    }
    if member.fold_models is not None:  # refit's members; a student's one member has none of these
        out |= {"cv_score": member.cv_score, "oof_score": member.oof_score, "fold_models": member.fold_models}
    return out


# -- reading -----------------------------------------------------------------------------------
_NUMBER = (int, float)


class _Fields:
    """Typed access to one JSON object of a manifest; a missing or mistyped field is an error that
    names the field (``members[1].weight``) and the file."""

    def __init__(self, raw: dict[str, Any], where: str, path: Path | str) -> None:
        self.raw, self.where, self.path = raw, where, path

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def need(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if self.raw.get(key) is None:
            raise AutoclsError(f"{self.path}: incomplete autocls manifest ({self._name(key)} is missing); {REWRITE}.")
        return self.get(key, kind)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.raw.get(key)
        if value is None:
            return default
        numbers = kind in (_NUMBER, int)
        if not isinstance(value, kind) or (numbers and isinstance(value, bool)):
            expected = {int: "a whole number", _NUMBER: "a number", str: "text", list: "a list", dict: "an object"}
            raise AutoclsError(
                f"{self.path}: not a readable autocls manifest ({self._name(key)} must be "
                f"{expected.get(kind, 'another kind of value')}; got {value!r}); {REWRITE}."
            )
        return float(value) if kind is _NUMBER else value

    def object(self, key: str, required: bool = True) -> _Fields | None:
        value = self.need(key, dict) if required else self.get(key, dict)
        return None if value is None else _Fields(value, self._name(key), self.path)

    def objects(self, key: str, required: bool = True) -> list[_Fields]:
        items = self.need(key, list) if required else self.get(key, list, [])
        out = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise AutoclsError(
                    f"{self.path}: not a readable autocls manifest ({self._name(key)}[{index}] must be an object; "
                    f"got {item!r}); {REWRITE}."
                )
            out.append(_Fields(item, f"{self._name(key)}[{index}]", self.path))
        return out

    def numbers(self, key: str, required: bool = True) -> tuple[float, ...] | None:
        values = self.need(key, list) if required else self.get(key, list)
        if values is None:
            return None
        if not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in values):
            raise AutoclsError(
                f"{self.path}: not a readable autocls manifest ({self._name(key)} must be a list of numbers; "
                f"got {values!r}); {REWRITE}."
            )
        return tuple(float(v) for v in values)

    def config(self, key: str) -> TrainConfig:
        values = self.need(key, dict)
        try:
            return TrainConfig.from_dict(values)
        except (AutoclsError, TypeError, ValueError) as err:
            reason = str(err).rstrip(".") if isinstance(err, AutoclsError) else "settings missing or of the wrong kind"
            raise AutoclsError(
                f"{self.path}: not a readable autocls manifest ({self._name(key)}: {reason}); {REWRITE}."
            ) from None

    def record(self, kind: Callable[..., T], **converters: Callable[[Any], Any]) -> T:
        """A dataclass ``kind`` of this object's fields of the same names (extra keys are ignored);
        ``converters`` turn JSON values into the fields' types."""
        names = [f.name for f in fields(kind)]  # type: ignore[arg-type]
        values = {n: converters.get(n, lambda v: v)(self.raw[n]) for n in names if n in self.raw}
        try:
            return kind(**values)
        except TypeError:
            missing = [n for n in names if n not in self.raw]
            raise AutoclsError(
                f"{self.path}: incomplete autocls manifest ({self._name(missing[0] if missing else '?')} is "
                f"missing); {REWRITE}."
            ) from None


def _parse(raw: _Fields, version: int) -> Manifest:
    class_names = raw.need("class_names", list)
    if not class_names or not all(isinstance(n, str) for n in class_names):
        raise AutoclsError(
            f"{raw.path}: not a readable autocls manifest (class_names must be a list of names); {REWRITE}."
        )
    preprocessing = raw.object("preprocessing")
    assert preprocessing is not None
    if version == 1 and not raw.has("members"):  # one trial: its configuration and normalisation at the top
        members = (
            MemberSpec(
                config=raw.config("config"),
                weight=1.0,
                mean=preprocessing.numbers("mean"),
                std=preprocessing.numbers("std"),
                folds=len(raw.need("folds", list)),
                trial=raw.get("trial", int),
            ),
        )
    else:
        members = tuple(_member(m) for m in raw.objects("members"))
        if not members:
            raise AutoclsError(f"{raw.path}: incomplete autocls manifest (members is empty); {REWRITE}.")
    calibration = raw.object("calibration", required=False)
    return Manifest(
        class_names=tuple(class_names),
        decode_size=preprocessing.need("decode_size", int),
        members=members,
        tta=tuple(raw.get("tta", list, [])),
        calibration=calibration.record(Calibration) if calibration and calibration.raw else None,
        thresholds=_thresholds(raw),
        limits=_optional(raw, "limits", DeploymentRecord),
        selection=_optional(raw, "selection", SelectionRecord, candidates=tuple),
        distilled_from=_distillation(raw),
        scores=_scores(raw),
        data=_data(raw),
        provenance=Provenance(
            study=raw.get("study", str),
            trial=raw.get("trial", int),
            seed=raw.get("seed", int),
            fold_models=raw.get("fold_models", str),
            versions=dict(raw.get("versions", dict, {})),
        ),
        format_version=version,
    )


def _member(m: _Fields) -> MemberSpec:
    return MemberSpec(
        config=m.config("config"),
        weight=m.need("weight", _NUMBER),
        mean=m.numbers("mean"),
        std=m.numbers("std"),
        folds=m.need("folds", int),
        trial=m.get("trial", int),
        cv_score=m.get("cv_score", _NUMBER),
        oof_score=m.get("oof_score", _NUMBER),
        fold_models=m.get("fold_models", str),
    )


def _optional(raw: _Fields, key: str, kind: Callable[..., T], **converters: Callable[[Any], Any]) -> T | None:
    found = raw.object(key, required=False)
    return found.record(kind, **converters) if found and found.raw else None


def _thresholds(raw: _Fields) -> Thresholds | None:
    if not raw.get("multilabel", (bool, int), False):
        return None
    f1 = raw.object("oof_f1_at_thresholds", required=False)
    return Thresholds(
        values=raw.numbers("thresholds"),
        label_delimiter=raw.get("label_delimiter", str, ";"),
        maximise=raw.get("thresholds_maximise", str),
        oof_macro_f1=f1.get("macro", _NUMBER) if f1 else None,
        oof_micro_f1=f1.get("micro", _NUMBER) if f1 else None,
    )


def _distillation(raw: _Fields) -> Distillation | None:
    source = raw.object("distilled_from", required=False)
    if source is None:
        return None
    return source.record(
        Distillation,
        members=lambda items: tuple(_Fields(m, "", raw.path).record(TeacherMember) for m in items),
        tta=tuple,
    )


def _scores(raw: _Fields) -> Scores:
    history = raw.get("history", list, [])
    return Scores(
        metric=raw.get("metric", str, "accuracy"),
        cv_score=raw.get("cv_score", _NUMBER),
        search_cv_score=raw.get("search_cv_score", _NUMBER),
        oof_score=raw.get("oof_score", _NUMBER),
        oof_accuracy=raw.get("oof_accuracy", _NUMBER),
        oof_images=raw.get("oof_images", int),
        folds=tuple(f.record(FoldSummary) for f in raw.objects("folds", required=False)),
        history=tuple(
            tuple(_Fields(e, f"history[{i}]", raw.path).record(EpochRecord) for e in fold)
            for i, fold in enumerate(history)
        ),
    )


def _data(raw: _Fields) -> TrainingData:
    data = raw.object("data", required=False)
    if data is None:
        return TrainingData()
    spec = data.record(DataSpec) if data.has("source") else None
    return TrainingData(spec=spec, images=data.get("images", int), fingerprint=data.get("fingerprint", str))
