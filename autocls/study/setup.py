"""A study's persisted setup: what was asked (:class:`SearchRequest`), what is stored on the study
(:class:`StudySetup`), and creating a study or continuing one with its own settings."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import timm
import torch

from autocls import __version__
from autocls.data.discover import DataSpec, LabelledImages, check_folds, typical_side
from autocls.runtime.errors import AutoclsError, SettingError
from autocls.storage.artifacts import Location
from autocls.storage.rdb import open_storage, redact
from autocls.storage.records import PORTFOLIO, PORTFOLIO_PLAN
from autocls.storage.workdir import DEFAULT_WORKDIR
from autocls.study.budget import folds_to_train, recipe_seconds, should_probe, size_to_shares
from autocls.study.limits import Limits, fold_models_cost
from autocls.study.portfolio import DataStats, probe_params, recipes
from autocls.study.pruning import make_pruner
from autocls.study.samplers import make_sampler
from autocls.study.space import SearchSpace, load_space, space_from_dict
from autocls.study.trainingtime import TrainingTimeModel
from autocls.train.backbones import check_weights
from autocls.train.config import TrainConfig, check_setting
from autocls.train.metrics import default_metric, get_metric

logger = logging.getLogger(__name__)

DEFAULT_FOLDS = 5
DEFAULT_SPACE = "default"
CPU_SPACE = "fast"
STUDY_ATTR = "autocls"  # the study user attribute that holds how the study was set up
SUCCESSOR_ATTR = "successor"  # study user attribute: the new study named when this one's data changed
INHERITED = 3  # best configurations of the study a new one succeeds, queued first


def library_versions() -> dict[str, str]:
    return {
        "autocls": __version__,
        "timm": timm.__version__,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class StudySetup:
    """How a study was set up; stored on the study so later runs and refit use the same data and folds."""

    data: DataSpec
    space: dict[str, Any]
    folds: int
    seed: int
    metric: str = "accuracy"
    weights: str | None = None
    search_folds: int | None = None  # the first folds each trial trains when the budget holds fewer than all
    max_latency_ms: float | None = None  # deployment limits of the delivered model (autocls.study.limits)
    max_params: int | None = None

    @property
    def limits(self) -> Limits:
        return Limits(self.max_latency_ms, self.max_params)

    @property
    def trained_folds(self) -> int:
        """How many of the ``folds`` each trial of the search trains (the first ones)."""
        return self.search_folds or self.folds

    def to_attr(self) -> dict[str, Any]:
        return {**asdict(self), "versions": library_versions()}

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudySetup:
        stored = dict(study.user_attrs.get(STUDY_ATTR) or {})
        if not stored:
            raise AutoclsError(f"study {study.study_name!r} was not created by autocls search.")
        stored.pop("versions", None)
        return cls(**{**stored, "data": DataSpec(**stored["data"])})

    @property
    def search_space(self) -> SearchSpace:
        return space_from_dict(self.space, name=self.space.get("name", "stored"))

    @property
    def weights_dir(self) -> Path | None:
        return Path(self.weights) if self.weights else None


Storage = optuna.storages.BaseStorage


def study_names(storage: Storage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage)]


def open_study(url: str, study_name: str | None) -> optuna.Study:
    """Load ``study_name`` from the storage at ``url``, or the only study there when no name is given."""
    storage = open_storage(url)
    names = study_names(storage)
    if not names:
        raise AutoclsError(
            f"no study in {redact(url)} yet; run autocls search first, or point --workdir (or --storage) at the search."
        )
    if study_name is None:
        if len(names) != 1:
            raise AutoclsError(f"{redact(url)} holds {len(names)} studies {names}; choose one with --study.")
        study_name = names[0]
    if study_name not in names:
        raise AutoclsError(f"no study {study_name!r} in {redact(url)}; studies there: {names}.")
    return optuna.load_study(study_name=study_name, storage=storage, sampler=make_sampler(0), pruner=make_pruner())


def narrow_to_available_weights(space: SearchSpace, weights_dir: Path | None, quiet: bool = False) -> SearchSpace:
    """Drop backbones whose pretrained weights cannot be found, saying so once, before any trial.

    Only when the space fixes ``pretrained = true``; where ``pretrained`` is searched, every backbone
    stays (it can train from scratch) and a trial that needs missing weights fails with the reason.
    """
    can_pretrain = True in space.values_of("pretrained")
    backbones = [str(b) for b in space.values_of("backbone")]
    missing = {name: reason for name in backbones if can_pretrain and (reason := check_weights(name, weights_dir))}
    if not missing:
        return space
    example = next(iter(missing.values()))
    if space.values_of("pretrained") != [True]:
        if not quiet:
            logger.warning("no pretrained weights for %s; those trials train from scratch or fail", ", ".join(missing))
        return space
    available = [b for b in backbones if b not in missing]
    if not available:
        raise AutoclsError(example)
    if not quiet:
        logger.warning("no pretrained weights for %s, left out of this study; e.g. %s", ", ".join(missing), example)
    data = space.to_dict()
    data["params"]["backbone"]["choices"] = available
    return space_from_dict(data, name=space.name)


def narrow_to_limits(space: SearchSpace, limits: Limits, timing: TrainingTimeModel, folds: int) -> SearchSpace:
    """Drop backbones whose ``folds`` fold models break ``limits`` even at the space's lowest
    resolution (measured here, batch 1), saying so once; none left is an error."""
    backbones = [str(b) for b in space.values_of("backbone")]
    lowest = min(int(r) for r in space.values_of("resolution"))
    broken = {}
    for backbone in backbones:
        config = TrainConfig.from_dict({**space.fixed, "backbone": backbone, "resolution": lowest})
        try:
            reason = limits.exceeded(fold_models_cost(timing, config, folds))
        except Exception as err:  # a model that cannot be built here fails its trials with the reason
            logger.debug("could not measure %s at %d px: %s", backbone, lowest, err)
            continue
        if reason:
            broken[backbone] = reason
    if len(broken) == len(backbones):
        raise AutoclsError(
            f"no backbone of space {space.name!r} meets the limit ({limits.describe()}) with {folds} fold models: "
            + "; ".join(f"{b}: {r}" for b, r in broken.items())
            + ". Raise the limit, or search fewer --folds."
        )
    if not broken:
        return space
    logger.warning(
        "left out of this study, over the limit (%s) with %d fold models at %d px: %s",
        limits.describe(),
        folds,
        lowest,
        "; ".join(f"{b} ({r})" for b, r in broken.items()),
    )
    data = space.to_dict()
    if "backbone" not in data["params"]:  # a fixed backbone that keeps the limit: nothing to narrow
        return space
    data["params"]["backbone"]["choices"] = [b for b in backbones if b not in broken]
    return space_from_dict(data, name=space.name)


@dataclass
class SearchRequest:
    """What ``autocls search`` was asked; ``None`` means: as stored in the study, else the default."""

    data: DataSpec
    workdir: Path = DEFAULT_WORKDIR
    storage: str | None = None
    study_name: str | None = None
    space: str | SearchSpace | None = None  # a name, a .toml path or a loaded space
    trials: int = 20
    timeout: float | None = None
    folds: int | None = None
    seed: int | None = None
    metric: str | None = None
    device: str = "auto"
    weights: str | None = None
    sampler: str = "tpe"
    pruning: bool = True
    warm_start: bool = True  # enqueue the portfolio's recipes first
    keep_trials: int | None = None  # best trials whose fold models are kept (the study's; DEFAULT_KEEP at first)
    artifacts: str | None = (
        None  # the artifact store's URL (autocls.storage.artifacts); None: as recorded, else WORKDIR
    )
    max_latency_ms: float | None = None  # the delivered model's per-image latency on this device
    max_params: int | None = None  # the delivered model's parameters, all fold models together

    def to_json(self) -> str:
        """The request as JSON, for a ``--workers`` child process (a loaded space travels as its dict)."""
        space = self.space.to_dict() if isinstance(self.space, SearchSpace) else self.space
        return json.dumps({**asdict(self), "workdir": str(self.workdir), "space": space})

    @classmethod
    def from_json(cls, text: str) -> SearchRequest:
        fields = json.loads(text)
        space = fields["space"]
        if isinstance(space, dict):
            space = space_from_dict(space, name=space.get("name", "stored"))
        return cls(**{**fields, "data": DataSpec(**fields["data"]), "workdir": Path(fields["workdir"]), "space": space})

    def __post_init__(self) -> None:
        """Every setting checked before anything is written: a refused value must not be stored."""
        problems = []
        for name in ("trials", "timeout", "folds", "keep_trials", "seed"):  # None: the default (not for trials)
            if getattr(self, name) is not None or name == "trials":
                try:
                    check_setting(name, getattr(self, name))
                except SettingError as err:
                    problems.append(str(err).rstrip("."))
        try:
            Limits(self.max_latency_ms, self.max_params)
        except AutoclsError as err:
            problems.append(str(err).rstrip("."))
        if self.artifacts is not None:
            try:
                Location.parse(self.artifacts)
            except AutoclsError as err:
                problems.append(str(err).rstrip("."))
        if self.weights is not None and not Path(self.weights).expanduser().is_dir():
            problems.append(f"weights must be a folder of checkpoints; {self.weights} is not one")
        if problems:
            raise AutoclsError("; ".join(problems) + ".")


def _check_continuation(study: optuna.Study, setup: StudySetup, request: SearchRequest) -> None:
    clashes = [
        f"{what} {asked} (the study has {stored})"
        for what, asked, stored in (
            ("--folds", request.folds, setup.folds),
            ("--seed", request.seed, setup.seed),
            ("--metric", request.metric, setup.metric),
            ("--max-latency-ms", request.max_latency_ms, setup.max_latency_ms),
            ("--max-params", request.max_params, setup.max_params),
            ("--space", _space_name(request.space), setup.space.get("name")),
        )
        if asked is not None and asked != stored and not (what == "--space" and Path(asked).stem == stored)
    ]
    if clashes:
        raise AutoclsError(
            f"study {study.study_name!r} continues with its own settings, not {'; '.join(clashes)}; "
            "drop those options or start a new study with --study NAME."
        )


def _warn_if_space_changed(setup: StudySetup, asked: str | SearchSpace | None) -> None:
    if asked is None:
        return
    try:
        current = asked if isinstance(asked, SearchSpace) else load_space(asked)
        # the stored space left out backbones without weights: compare like with like, or the
        # warning came on every run although nothing changed
        current = narrow_to_available_weights(current, setup.weights_dir, quiet=True)
    except AutoclsError:
        return
    if current.to_dict() != setup.search_space.to_dict():
        logger.warning(
            "space %r has changed since this study started; the study keeps its own space "
            "(start a new study with --study NAME to search the new one)",
            current.name,
        )


def _default_space(request: SearchRequest) -> str:
    """``default`` where a GPU will train; on a CPU, ``fast``, whose trials finish in minutes there
    (a ViT at 224 px trains at a few images a second on two cores)."""
    on_gpu = request.device.startswith("cuda") or (request.device == "auto" and torch.cuda.is_available())
    if on_gpu:
        return DEFAULT_SPACE
    logger.info("no GPU: searching the CPU-sized 'fast' space (--space default to override)")
    return CPU_SPACE


def _space_name(space: str | SearchSpace | None) -> str | None:
    return space.name if isinstance(space, SearchSpace) else space


def create_or_continue(
    storage: Storage,
    study_name: str,
    request: SearchRequest,
    *,
    timing: TrainingTimeModel | None = None,
    discovered: LabelledImages | None = None,
) -> tuple[optuna.Study, StudySetup]:
    """Continue ``study_name`` with its stored setup, or create it: metric, space and warm start.

    With a training-time model (``timing``) and a ``request.timeout``, the warm-start recipes are
    sized to the budget, and a budget too short for all folds trains fewer (:mod:`autocls.study.budget`).
    ``discovered`` is ``request.data`` already discovered by the caller (read again when not given).
    """
    if study_name in study_names(storage):
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner())
        if STUDY_ATTR in study.user_attrs:
            setup = StudySetup.from_study(study)
            _check_continuation(study, setup, request)
            _warn_if_space_changed(setup, request.space)
            return study, setup
    data = discovered if discovered is not None else request.data.discover()
    check_folds(data, request.folds or DEFAULT_FOLDS)  # before the study and its settings are stored
    metric = request.metric or default_metric(data.class_counts(), data.multilabel)
    if request.metric is None and metric == "balanced_accuracy":
        logger.warning("classes are imbalanced 5:1 or more: optimising balanced_accuracy (--metric to change)")
    get_metric(metric, data.multilabel)
    weights = request.weights
    space = (
        request.space
        if isinstance(request.space, SearchSpace)
        else load_space(request.space or _default_space(request))
    )
    space = narrow_to_available_weights(space, Path(weights) if weights else None)
    folds = request.folds or DEFAULT_FOLDS
    # read before the study exists: a failure here must not leave a study without its warm start
    stats = DataStats(len(data), len(data.class_names), typical_side(data.paths))
    fold_seconds = None
    if timing is not None and request.timeout and request.warm_start:
        fold_seconds = recipe_seconds(timing, fixed=space.fixed, images=len(data), folds=folds, trained=1)
    trained = folds_to_train(space, stats, folds, fold_seconds=fold_seconds, budget=request.timeout)
    limits = Limits(request.max_latency_ms, request.max_params)
    if limits:
        space = narrow_to_limits(space, limits, timing or TrainingTimeModel(torch.device("cpu")), trained)
    setup = StudySetup(
        data=request.data,
        space=space.to_dict(),
        folds=folds,
        seed=request.seed if request.seed is not None else 0,
        metric=metric,
        weights=weights,
        search_folds=trained if trained < folds else None,
        max_latency_ms=request.max_latency_ms,
        max_params=request.max_params,
    )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction=get_metric(metric).direction,
        pruner=make_pruner(),
        load_if_exists=True,  # a study created beforehand (e.g. with enqueued trials) is adopted
    )
    study.set_user_attr(STUDY_ATTR, setup.to_attr())
    study.set_metric_names([metric])
    if not study.trials:
        _inherit(study, space, fold_seconds=fold_seconds, trained=trained, timeout=request.timeout)
    if not study.trials and request.warm_start:
        _warm_start(study, space, stats, fold_seconds=fold_seconds, trained=trained, timeout=request.timeout)
    return study, setup


def _inherit(
    study: optuna.Study,
    space: SearchSpace,
    *,
    fold_seconds: Callable[[dict[str, Any]], float] | None,
    trained: int,
    timeout: float | None,
) -> None:
    """A study named when an earlier study's data changed (``SUCCESSOR_ATTR``) starts from what
    that study learnt: its best configurations are queued first, sized to this study's budget."""
    storage = study._storage
    earlier = next(
        (s for s in optuna.get_all_study_summaries(storage) if s.user_attrs.get(SUCCESSOR_ATTR) == study.study_name),
        None,
    )
    if earlier is None:
        return
    done = optuna.load_study(study_name=earlier.study_name, storage=storage).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    )
    if not done:
        return
    maximize = earlier.direction == optuna.study.StudyDirection.MAXIMIZE
    best = sorted(done, key=lambda t: t.value, reverse=maximize)[:INHERITED]
    names = {dim.name for dim in space.dimensions}
    found = [{k: v for k, v in t.params.items() if k in names} for t in best]
    if fold_seconds is not None and timeout:
        found = size_to_shares(space, found, lambda params: fold_seconds(params) * trained, timeout)
    for params, trial in zip(found, best, strict=True):
        study.enqueue_trial(params, user_attrs={"inherited_from": f"{earlier.study_name}#{trial.number}"})
    logger.warning(
        "study %r starts from study %r, whose data changed: its %d best configurations (trials %s) are queued first",
        study.study_name,
        earlier.study_name,
        len(best),
        ", ".join(str(t.number) for t in best),
    )


def _warm_start(
    study: optuna.Study,
    space: SearchSpace,
    stats: DataStats,
    *,
    fold_seconds: Callable[[dict[str, Any]], float] | None,
    trained: int,
    timeout: float | None,
) -> None:
    """Enqueue the portfolio's recipes sized to the budget; or, when the budget is long enough to
    probe them first (:func:`autocls.study.budget.should_probe`), leave them as the study's plan for
    :func:`autocls.study.halving.halve_portfolio`, which enqueues the survivors."""
    found = recipes(space, stats)
    if fold_seconds is None or not timeout:
        for params in found:
            study.enqueue_trial(params, user_attrs={PORTFOLIO: True}, skip_if_exists=True)
        return
    if should_probe(found, lambda params: fold_seconds(probe_params(space, params)), timeout):
        study.set_user_attr(PORTFOLIO_PLAN, {"recipes": found, "budget": timeout})
        return
    for params in size_to_shares(space, found, lambda params: fold_seconds(params) * trained, timeout):
        study.enqueue_trial(params, user_attrs={PORTFOLIO: True}, skip_if_exists=True)
