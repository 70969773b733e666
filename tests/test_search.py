"""The search driver: every choice of the default space trains, pruning, warm start, budget, metric."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autocls.data.discover import DataSpec, discover
from autocls.data.images import build_store
from autocls.storage import records
from autocls.storage.trials import TrialStore
from autocls.study.budget import Budget, BudgetExhausted, first_share, folds_to_train, size_to_shares
from autocls.study.driver import MAX_CONSECUTIVE_SKIPS, run_search
from autocls.study.objective import TrialObserver
from autocls.study.portfolio import DataStats, recipes
from autocls.study.progress import Reporter
from autocls.study.pruning import FOLD_STEP, FoldAwarePruner
from autocls.study.setup import SearchRequest, create_or_continue
from autocls.study.space import load_space, space_from_dict
from autocls.study.trainingtime import CPU_PROBE_RESOLUTION, PRIOR_CORRECTION, TrainingTimeModel
from autocls.train.callbacks import TrainingObserver
from autocls.train.config import TrainConfig
from autocls.train.cv import FoldData, cross_validate, stratified_folds
from autocls.train.history import EpochRecord, FoldResult
from autocls.train.metrics import default_metric
from autocls.train.trainer import Trainer
from tests.helpers import edit_space, write_class_folders

CPU = torch.device("cpu")
DEFAULT = load_space("default")
TINY = {"backbone": "test_efficientnet", "pretrained": False, "resolution": 32, "batch_size": 4, "epochs": 1}


def _every_choice() -> list[tuple[str, object]]:
    cases = []
    for dim in DEFAULT.dimensions:
        values = dim.choices if dim.choices is not None else (dim.low, dim.high)
        cases.extend((dim.name, value) for value in values)
    return cases


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory):
    data = discover(write_class_folders(tmp_path_factory.mktemp("data"), per_class=4))
    return build_store(data, 32)


@pytest.mark.parametrize(("name", "value"), _every_choice(), ids=lambda v: str(v))
def test_every_choice_of_the_default_space_builds_and_trains_a_step(tiny_store, name: str, value: object) -> None:
    data, store = tiny_store
    settings = {**TINY, name: value}
    if name in ("pretrained",):
        settings["pretrained"] = False  # no weights offline: pretrained loading has its own tests
    if name == "resolution":
        settings["resolution"] = min(int(value), 32)  # every resolution is one resize; keep the step cheap
    if name in ("momentum", "nesterov"):
        settings["optimizer"] = "sgd"
    config = TrainConfig.from_dict(settings)
    train_idx, val_idx = stratified_folds(data.labels, 2, seed=0)[0]
    result = Trainer(config, 3, CPU).fit(store, torch.as_tensor(data.labels), train_idx, val_idx)
    assert torch.isfinite(torch.tensor(result.best.train_loss))


def test_losing_trial_is_pruned_between_folds(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="data", storage=storage, direction="maximize")
    for lr in (0.03, 0.03, 0.03, 1e-9):
        study.enqueue_trial({"optimizer": "adamw", "lr": lr, "augmentation": "none"})
    # one epoch per fold: no epoch step can prune, so only the fold-mean steps can
    edit_space(tiny_space, {"epochs = 2": "epochs = 1", "low = 0.003": "low = 1e-9"})
    request = SearchRequest(DataSpec.of(image_folder), storage=storage, space=str(tiny_space), trials=4, folds=4)
    run_search(request, CPU)
    trials = optuna.load_study(study_name="data", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    pruned = trials[3]
    assert min(s for s in pruned.intermediate_values if s >= FOLD_STEP) == FOLD_STEP
    assert len(pruned.user_attrs["folds"]) < 4  # stopped before its remaining folds


def test_portfolio_has_one_known_good_config_per_family_within_the_space() -> None:
    configs = recipes(DEFAULT, DataStats(images=2000, classes=10, image_side=28))
    assert [c["backbone"] for c in configs] == ["tf_efficientnet_lite0", "resnet18", "convnext_tiny"]
    for config in configs:
        assert config["resolution"] == 96  # the space's closest to 28 px images
        for name, value in config.items():
            dim = next(d for d in DEFAULT.dimensions if d.name == name)
            assert value in dim.choices if dim.choices is not None else dim.low <= value <= dim.high
    assert configs[1]["optimizer"] == "sgd" and configs[1]["nesterov"] is True
    few = recipes(DEFAULT, DataStats(images=40, classes=4, image_side=300))
    assert all(c["freeze"] == 0.5 and c["resolution"] == 224 for c in few)


def test_new_study_enqueues_the_portfolio_first(image_folder: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = tmp_path / "two.toml"
    space.write_text(
        '[fixed]\npretrained = false\n[params.backbone]\nchoices = ["efficientnet_b0", "resnet18"]\n'
        "[params.lr]\nlow = 1e-4\nhigh = 1e-1\nlog = true\n"
    )
    study, _ = create_or_continue(storage, "s", SearchRequest(DataSpec.of(image_folder), space=str(space)))
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"backbone": "efficientnet_b0", "lr": 3e-3},
        {"backbone": "resnet18", "lr": 1e-2},
    ]
    again, _ = create_or_continue(storage, "s", SearchRequest(DataSpec.of(image_folder)))
    assert len(again.trials) == 2  # continuing does not enqueue it again


def test_metric_defaults_to_balanced_accuracy_for_imbalanced_classes(tmp_path: Path) -> None:
    assert default_metric({"a": 10, "b": 9}) == "accuracy"
    assert default_metric({"a": 50, "b": 10}) == "balanced_accuracy"
    root = write_class_folders(tmp_path / "data", classes=2, per_class=4)
    write_class_folders(tmp_path / "more", classes=1, per_class=16, seed=3)
    for i, image in enumerate(sorted((tmp_path / "more" / "class_0").iterdir())):
        image.rename(root / "class_0" / f"extra{i}.png")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study, setup = create_or_continue(storage, "imb", SearchRequest(DataSpec.of(root), space="fast", folds=2))
    assert setup.metric == "balanced_accuracy" and study.metric_names == ["balanced_accuracy"]
    study, setup = create_or_continue(
        storage, "ll", SearchRequest(DataSpec.of(root), space="fast", metric="log_loss", folds=2)
    )
    assert study.direction == optuna.study.StudyDirection.MINIMIZE


def test_timeout_bounds_the_whole_command(image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(TrainingTimeModel, "images_per_second", lambda self, config: 1e9)  # an estimate far too low
    # a first fold far longer than the budget: the trial is cut inside it (a trial cut between
    # folds with none completed is kept on its folds: see the test after this one)
    edit_space(tiny_space, {"epochs = 2": "epochs = 2000", "patience = 2": "patience = 2000"})
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    data = DataSpec.of(image_folder)
    request = SearchRequest(data, storage=storage, space=str(tiny_space), trials=5, folds=2, timeout=2)
    start = time.monotonic()
    run_search(request, CPU)
    elapsed = time.monotonic() - start
    trials = optuna.load_study(study_name="data", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # stopped, and queued for the next run
    assert (
        trials[0].user_attrs["stopped_by"] == "timeout" and trials[1].system_attrs["fixed_params"] == trials[0].params
    )
    assert elapsed < 60  # 4000 epochs would take far longer: it stopped at the budget, not at the end


def test_a_budget_that_ends_between_the_first_trials_folds_still_delivers_a_model(
    image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch
) -> None:
    """With no completed trial, a trial the budget stops after some folds completes on those folds
    (a model from a short budget, not nothing); once one has completed, a cut trial is queued again."""
    import autocls
    from autocls.study.budget import Budget, BudgetExhausted

    def check(self: Budget, needed: float, what: str) -> None:  # the budget ends before every second fold
        if what == "fold 2":
            raise BudgetExhausted(f"time budget: 1s left, {what} needs about 5s")

    monkeypatch.setattr(Budget, "check", check)
    workdir = tmp_path / "runs"
    workdir.mkdir()
    storage = f"sqlite:///{workdir / 'autocls.db'}"
    request = SearchRequest(
        DataSpec.of(image_folder), workdir, storage, space=str(tiny_space), trials=3, folds=2, pruning=False
    )
    study = run_search(request, CPU)
    first, second, queued = study.trials
    assert first.state.name == "COMPLETE" and len(first.user_attrs["folds"]) == 1
    assert first.value == pytest.approx(first.user_attrs["folds"][0]["score"], abs=1e-6)
    assert "1 of 2 folds" in first.user_attrs["cut_short"]
    assert second.state.name == "FAIL" and second.user_attrs["stopped_by"] == "timeout"
    assert queued.state.name == "WAITING"
    model = autocls.refit(study, workdir=workdir)
    assert [len(m.models) for m in model.members] == [1]
    assert model.manifest.scores.oof_images == 12  # the one trained fold's validation half of 24 images


class _FixedBudget(Budget):
    """A budget with a deadline and always ``seconds`` left."""

    def __init__(self, seconds: float) -> None:
        super().__init__(3600)
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds


def _fold(fold: int, epochs: int, seconds_per_epoch: float = 30.0) -> FoldResult:
    history = [EpochRecord(e, 1.0, 1.0, 0.5, 1e-3, seconds_per_epoch) for e in range(epochs)]
    return FoldResult(fold, history, epochs - 1, np.arange(2), np.full((2, 2), 0.5, np.float32), 0)


class _PruneBetweenFolds(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return (trial.last_step or 0) >= FOLD_STEP


@pytest.mark.parametrize(("left", "expected"), [(1000.0, 8), (960.0, 8), (500.0, 4), (240.0, 2), (200.0, None)])
def test_folds_that_do_not_fit_the_time_left_share_it(left: float, expected: int | None) -> None:
    """At the pace of the fold done (30 s an epoch), the 4 folds left of 8 epochs split the time left
    evenly, at least 2 epochs each; when not even those fit, the budget is exhausted (the trial is
    queued again)."""
    trial = optuna.create_study().ask()
    observer = TrialObserver(trial, Reporter(quiet=True), _FixedBudget(left))
    assert observer.fold_epochs(0, 5, 8) == 8  # the first fold: admitted on the training-time model's estimate
    observer.folds.append(_fold(0, 8))
    if expected is None:
        with pytest.raises(BudgetExhausted, match="fold 2 with the 3 after it needs about 240s"):
            observer.fold_epochs(1, 5, 8)
        return
    assert observer.fold_epochs(1, 5, 8) == expected
    shortened = trial.user_attrs.get("shortened_folds", {})
    if expected < 8:
        assert list(shortened) == ["2"] and shortened["2"].startswith(f"{expected} of 8 epochs to end by the deadline")
    else:
        assert not shortened


def test_cross_validation_trains_each_fold_the_epochs_its_observer_allows(tiny_store) -> None:
    data, store = tiny_store

    class ShortenSecond(TrainingObserver):
        def fold_epochs(self, fold: int, folds: int, epochs: int) -> int:
            return 1 if fold == 1 else epochs

    config = TrainConfig.from_dict({**TINY, "epochs": 2})
    splits = stratified_folds(data.labels, 3, seed=0)
    result = cross_validate(config, FoldData(store, data.labels, splits, 3), CPU, observer=ShortenSecond())
    assert [len(f.history) for f in result.folds] == [2, 1, 2]  # the third fold is back at the configuration's
    assert not np.isnan(result.oof_probs).any()  # every image predicted: the trial can join an ensemble


def test_a_trial_that_trained_all_its_folds_is_not_pruned() -> None:
    trial = optuna.create_study(pruner=_PruneBetweenFolds()).ask()
    observer = TrialObserver(trial, Reporter(quiet=True), Budget(None))
    observer.on_fold_start(0, 2, 8)
    with pytest.raises(optuna.TrialPruned):  # a fold is left: pruning saves its time
        observer.on_fold_end(_fold(0, 8))
    observer.on_fold_start(1, 2, 8)
    observer.on_fold_end(_fold(1, 8))  # the last: nothing is left to save, the trained trial is kept
    assert trial.storage.get_trial(trial._trial_id).intermediate_values[FOLD_STEP + 1] == 0.5


def test_a_hold_out_trial_is_not_pruned_after_its_last_epoch() -> None:
    class PruneAlways(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    trial = optuna.create_study(pruner=PruneAlways()).ask()
    observer = TrialObserver(trial, Reporter(quiet=True), Budget(None))
    observer.on_fold_start(0, 1, 2)  # one fold: a hold-out split
    with pytest.raises(optuna.TrialPruned):
        observer.on_epoch_end(0, _fold(0, 2).history[0])
    observer.on_epoch_end(0, _fold(0, 2).history[1])  # its last epoch: the trial is trained
    observer.on_fold_end(_fold(0, 2))


def test_the_deadline_passing_in_a_folds_last_epoch_keeps_the_fold() -> None:
    trial = optuna.create_study().ask()
    observer = TrialObserver(trial, Reporter(quiet=True), _FixedBudget(-5.0))
    observer.on_fold_start(0, 2, 2)
    with pytest.raises(BudgetExhausted):  # an epoch of the fold is left: it cannot end in time
        observer.on_epoch_end(0, _fold(0, 1).history[0])
    observer.on_epoch_end(0, _fold(0, 2).history[1])  # the fold's last epoch: finished, kept


def test_a_fold_shortened_to_the_deadline_may_end_an_epoch_past_it() -> None:
    """Its length was chosen to end at the deadline, at the pace of earlier folds: an epoch slower
    than theirs still ends it; more than one epoch past the deadline stops it."""
    budget = _FixedBudget(100.0)
    observer = TrialObserver(optuna.create_study().ask(), Reporter(quiet=True), budget)
    observer.on_fold_start(0, 2, 8)
    observer.on_fold_end(_fold(0, 8))
    assert observer.fold_epochs(1, 2, 8) == 3  # 100 s left at 30 s an epoch
    observer.on_fold_start(1, 2, 3)
    budget.seconds = -20.0
    observer.on_epoch_end(1, _fold(1, 3).history[0])  # 20 s past the deadline: within an epoch
    budget.seconds = -40.0
    with pytest.raises(BudgetExhausted):
        observer.on_epoch_end(1, _fold(1, 3).history[1])


def test_a_trial_that_runs_out_of_memory_finishes_at_a_smaller_batch(
    image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch
) -> None:
    real_step = Trainer._train_step

    def step(self, model, optimizer, x, labels, *, class_weights):  # a device that holds 4 images a batch
        if len(x) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, model, optimizer, x, labels, class_weights=class_weights)

    monkeypatch.setattr(Trainer, "_train_step", step)
    monkeypatch.setattr("autocls.train.cv.MIN_BATCH", 4)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    request = SearchRequest(DataSpec.of(image_folder), storage=storage, space=str(tiny_space), trials=1, folds=2)
    trial = run_search(request, CPU).trials[0]
    assert trial.state.name == "COMPLETE"
    assert [f["batch_size"] for f in trial.user_attrs["folds"]] == [4, 4]  # the space's 8, halved once
    assert [len(epochs) for epochs in trial.user_attrs["history"]] == [2, 2]  # the restarted fold's once


def test_configurations_that_cannot_finish_in_time_are_skipped(
    image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(TrainingTimeModel, "images_per_second", lambda self, config: 0.01)  # 100 s an image
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    request = SearchRequest(DataSpec.of(image_folder), storage=storage, space=str(tiny_space), trials=20, timeout=600)
    start = time.monotonic()
    run_search(request, CPU)
    trials = optuna.load_study(study_name="data", storage=storage).trials
    assert len(trials) == MAX_CONSECUTIVE_SKIPS  # then it stopped: nothing sampled would fit
    # FAIL, not PRUNED: skips do not count toward --trials, and TPE (which ignores failed trials)
    # does not learn that those regions are bad: they were only too long for the time left
    assert all(t.state.name == "FAIL" and "needs about" in t.user_attrs["skipped"] for t in trials)
    assert not any("history" in t.user_attrs for t in trials)  # skipped before training
    assert time.monotonic() - start < 60


def test_the_training_time_model_measures_a_configuration_once_and_learns_from_real_trials(
    tmp_path: Path, monkeypatch
) -> None:
    config = TrainConfig.from_dict({**TINY, "resolution": 24})
    cost = TrainingTimeModel(CPU, tmp_path / "speeds.json")
    speed = cost.images_per_second(config)
    assert speed > 0
    monkeypatch.setattr(TrainingTimeModel, "_measure", lambda self, config: pytest.fail("measured again"))
    again = TrainingTimeModel(CPU, tmp_path / "speeds.json")  # read back from the workdir
    assert again.images_per_second(config) == speed
    per_epoch = again.epoch_seconds(config, 80, 20)
    assert per_epoch == pytest.approx(80 / speed + 20 / (speed * 3))
    # before a trial has finished, the estimate carries the measured prior: trials run longer than probes
    assert again.trial_seconds(config, 100, 5) == pytest.approx(PRIOR_CORRECTION * per_epoch * config.epochs * 5)
    history = [[{"seconds": 2 * per_epoch}, {"seconds": 2 * per_epoch}]]
    done = optuna.trial.create_trial(value=0.5, user_attrs={records.ESTIMATE: per_epoch, records.HISTORY: history})
    again.learn_from([done, optuna.trial.create_trial(value=0.4)])
    assert again.correction == pytest.approx(2.0)  # the real epochs took twice the estimate
    assert again.trial_seconds(config, 100, 5) == pytest.approx(2 * per_epoch * config.epochs * 5)


def test_a_cpu_probes_high_resolutions_once_at_a_lower_one_scaled_by_the_pixels(monkeypatch) -> None:
    measured = []
    monkeypatch.setattr(TrainingTimeModel, "_measure", lambda self, config: measured.append(config.resolution) or 90.0)
    cost = TrainingTimeModel(CPU)
    speeds = {r: cost.images_per_second(TrainConfig.from_dict({**TINY, "resolution": r})) for r in (96, 160, 224)}
    assert measured == [96, CPU_PROBE_RESOLUTION]  # one probe serves every resolution above it
    assert speeds[96] == 90.0 and speeds[224] == pytest.approx(90.0 * (CPU_PROBE_RESOLUTION / 224) ** 2)


def test_a_real_run_of_a_backbone_calibrates_its_estimates_at_every_size(monkeypatch) -> None:
    speeds = {24: 100.0, 32: 50.0}
    monkeypatch.setattr(TrainingTimeModel, "images_per_second", lambda self, config: speeds[config.resolution])
    cost = TrainingTimeModel(CPU)
    small = TrainConfig.from_dict({**TINY, "resolution": 24, "epochs": 2})
    large = TrainConfig.from_dict({**TINY, "resolution": 32, "epochs": 4})
    other = TrainConfig.from_dict({**TINY, "backbone": "resnet18", "resolution": 32, "epochs": 4})
    before_large, before_other = cost.trial_seconds(large, 100, 5), cost.trial_seconds(other, 100, 5)
    # one fold (80 training and 20 validation images) of ``small`` estimated at 1.2 x 2 x 0.867 s = 2.08 s took 1.04 s
    estimate = cost.trial_seconds(small, 100, 5, trained=1)
    cost.calibrate(small, 80, 20, estimate / 2)
    assert cost.trial_seconds(small, 100, 5, trained=1) == pytest.approx(estimate / 2)
    assert cost.trial_seconds(large, 100, 5) == pytest.approx(before_large / 2)  # the backbone's factor, any size
    assert cost.trial_seconds(other, 100, 5) == pytest.approx(before_other)  # other backbones keep theirs
    cost.calibrate(small, 80, 20, estimate * 3)  # measured again: replaces the factor, not compounds it
    assert cost.trial_seconds(small, 100, 5, trained=1) == pytest.approx(estimate * 3)


def test_portfolio_is_sized_to_the_time_budget() -> None:
    fast = load_space("fast")

    def seconds(params: dict) -> float:  # a trial costs its resolution times its epochs
        return params["resolution"] * params["epochs"]

    stats = DataStats(images=2000, classes=10, image_side=28)
    first, second = size_to_shares(fast, recipes(fast, stats), seconds, budget=2400)
    # 960 s (40% of 2400 s) hold 96 px x 8 epochs (768 s); the second recipe's 600 s (25%) hold
    # 96 px x 6 (576 s); a third would get 15%
    assert (first["resolution"], first["epochs"]) == (96, 8)
    assert (second["resolution"], second["epochs"]) == (96, 6)
    # 20 minutes: the first recipe's share is 0.575 (690 s): 96 px x 6 (576 s), not 96 px x 8 (768 s)
    twenty = size_to_shares(fast, recipes(fast, stats), seconds, budget=1200)
    assert (twenty[0]["resolution"], twenty[0]["epochs"]) == (96, 6)
    # 10 minutes: 75% (450 s) holds 6 epochs only at 64 px (384 s); 96 px x 4 (384 s) is too short a schedule
    ten = size_to_shares(fast, recipes(fast, stats), seconds, budget=600)
    assert (ten[0]["resolution"], ten[0]["epochs"]) == (64, 6)
    tight = size_to_shares(fast, recipes(fast, stats), seconds, budget=60)
    assert all((c["resolution"], c["epochs"]) == (48, 4) for c in tight)  # the cheapest, to be skipped if need be


def test_a_space_of_one_family_gets_a_recipe_on_its_second_backbone() -> None:
    """Offline on a CPU only the EfficientNet-Lite checkpoints are there: the portfolio then trains
    the family's recipe on Lite0 and on Lite1, two strong members for ensemble selection."""
    data = load_space("fast").to_dict()
    data["params"]["backbone"]["choices"] = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
    configs = recipes(space_from_dict(data, name="lite"), DataStats(images=2000, classes=10, image_side=28))
    assert [c["backbone"] for c in configs] == ["tf_efficientnet_lite0", "tf_efficientnet_lite1"]
    assert {k: v for k, v in configs[0].items() if k != "backbone"} == {
        k: v for k, v in configs[1].items() if k != "backbone"
    }
    data["params"]["backbone"]["choices"] = ["tf_efficientnet_lite0"]
    assert len(recipes(space_from_dict(data, name="lite0"), DataStats(2000, 10, 28))) == 1


@pytest.mark.parametrize(
    ("budget", "share"), [(60, 0.75), (300, 0.75), (600, 0.75), (1200, 0.575), (1800, 0.4), (7200, 0.4)]
)
def test_the_first_recipe_takes_more_of_a_short_budget(budget: float, share: float) -> None:
    assert first_share(budget) == pytest.approx(share)


@pytest.mark.parametrize(
    ("budget", "folds", "expected"),
    [
        (None, 5, 5),  # no budget: every fold
        (3600, 5, 5),  # 1440 s hold five 288 s folds
        (1200, 5, 2),  # 690 s hold two
        (300, 5, 1),  # 225 s hold none: a hold-out split, not a skipped recipe
        (300, 3, 1),
        (30, 5, 1),
    ],
)
def test_a_short_budget_trains_fewer_folds(budget: float | None, folds: int, expected: int) -> None:
    def fold_seconds(params: dict) -> float:  # 6 epochs, the floor: 48 px 288 s, 64 px 384 s (dearer than 25%)
        assert params["epochs"] == 6
        return params["resolution"] * params["epochs"]

    stats = DataStats(images=2000, classes=10, image_side=28)
    assert folds_to_train(load_space("fast"), stats, folds, fold_seconds=fold_seconds, budget=budget) == expected


def test_fewer_folds_are_counted_at_a_resolution_that_costs_little_more() -> None:
    """On a CPU 64 px costs about what 48 px does: the folds that fit are counted at 64 px."""
    costs = {48: 76.0, 64: 83.0, 96: 190.0}  # Lite0 seconds a fold at 6 epochs, as measured on 2 cores

    def fold_seconds(params: dict) -> float:
        return costs[params["resolution"]]

    stats = DataStats(images=2000, classes=10, image_side=28)
    # 10 minutes: 405 s hold five 48 px folds (380 s) but four at 64 px (332 s)
    assert folds_to_train(load_space("fast"), stats, 5, fold_seconds=fold_seconds, budget=540) == 4
    assert folds_to_train(load_space("fast"), stats, 5, fold_seconds=fold_seconds, budget=1740) == 5


def test_a_search_on_fewer_folds_is_refit_on_the_folds_it_trained(
    image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch
) -> None:
    """A budget that holds one fold of five: every trial trains fold 0 only, its out-of-fold scores
    cover that fold's images, and refit blends and saves what the search trained (one model each)."""
    import json

    from autocls.api import refit
    from autocls.study import setup as studysetup

    image_folder = write_class_folders(tmp_path / "more", classes=3, per_class=10)
    monkeypatch.setattr(studysetup, "folds_to_train", lambda *args, **kwargs: 1)
    workdir = tmp_path / "runs"
    request = SearchRequest(DataSpec.of(image_folder), workdir=workdir, space=str(tiny_space), trials=3, folds=5)
    study = run_search(request, CPU)
    assert studysetup.StudySetup.from_study(study).trained_folds == 1
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and all(len(t.user_attrs["folds"]) == 1 for t in complete)
    refit(study, workdir=workdir)
    manifest = json.loads((workdir / "more" / "model" / "manifest.json").read_text())
    assert manifest["oof_images"] == 6  # fold 0 of five over 30 images
    assert all(member["folds"] == 1 for member in manifest["members"])
    oof = (workdir / "more" / "model" / "oof_predictions.csv").read_text().splitlines()
    assert len(oof) == 1 + 6


def search_sizes(tiny_space: Path) -> None:
    """Make the tiny space search resolution (16 or 24 px) and epochs (1 or 2)."""
    edit_space(
        tiny_space,
        {
            "resolution = 24\n": "",
            "epochs = 2\n": "",
            "[params.optimizer]": "[params.resolution]\nchoices = [16, 24]\n\n"
            "[params.epochs]\nchoices = [1, 2]\n\n[params.optimizer]",
        },
    )


def test_a_configuration_too_long_for_the_time_left_is_queued_smaller(
    image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch
) -> None:
    """24 px would take days, 16 px is instant: each 24 px configuration is skipped and its 16 px
    version (same other parameters, the most epochs that fit) trains in its place."""
    search_sizes(tiny_space)
    monkeypatch.setattr(
        TrainingTimeModel, "images_per_second", lambda self, config: 1e-3 if config.resolution == 24 else 1e6
    )
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    data = DataSpec.of(image_folder)
    request = SearchRequest(
        data, tmp_path / "runs", storage, space=str(tiny_space), trials=4, folds=2, timeout=600, pruning=False
    )
    run_search(request, CPU)
    trials = optuna.load_study(study_name="data", storage=storage).trials
    skipped = [t for t in trials if "skipped" in t.user_attrs]
    assert skipped, "the sampler proposed no 24 px configuration in 4 trials"
    by_number = {t.number: t for t in trials}
    for trial in skipped:
        assert "queued smaller: resolution=16" in trial.user_attrs["skipped"]
        smaller = [t for t in trials if t.user_attrs.get(records.SHRUNK_FROM) == trial.number]
        assert len(smaller) == 1 and smaller[0].state.name == "COMPLETE"
        assert smaller[0].params == {**by_number[trial.number].params, "resolution": 16}


def test_trials_record_what_reproduces_them(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run_search(SearchRequest(DataSpec.of(image_folder), storage=storage, space=str(tiny_space), trials=1, folds=2), CPU)
    trial = optuna.load_study(study_name="data", storage=storage).trials[0]
    assert {"seed", "folds_hash", "data_fingerprint", "versions", "config"} <= set(trial.user_attrs)
    assert {"torch", "timm", "optuna", "autocls"} <= set(trial.user_attrs["versions"])


def test_trial_store_keeps_only_the_best_trials(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.9, 0.7, 0.8, 0.6):
        study.tell(study.ask(), value)
    store = TrialStore.in_folder(tmp_path / "trials", keep=3, grace_seconds=0)
    for number in range(5):
        (tmp_path / "trials" / str(number)).mkdir(parents=True)
    assert store.retain_best(study) == {1, 2, 3}
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["1", "2", "3"]
    assert store.is_candidate(study, 0.75) and not store.is_candidate(study, 0.65)


def _trial_with(values: dict[int, float], value: float | None = None) -> optuna.trial.FrozenTrial:
    state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.RUNNING
    return optuna.trial.create_trial(state=state, value=value, intermediate_values=values)


@pytest.mark.parametrize(("running_mean", "pruned"), [(0.80, True), (0.88, False)])
def test_fold_rule_prunes_below_the_best_quarter_at_the_same_fold(running_mean: float, pruned: bool) -> None:
    study = optuna.create_study(direction="maximize")
    for mean in (0.70, 0.85, 0.86, 0.90):
        study.add_trial(_trial_with({0: 0.5, 1: 0.6, FOLD_STEP: mean, FOLD_STEP + 1: mean}, value=mean))
    pruner = FoldAwarePruner(n_startup_trials=3, keep_fraction=0.25)
    # a first fold above the median of epochs (0.6) would survive the epoch rule; the fold rule decides
    trial = _trial_with({0: 0.55, 1: 0.65, FOLD_STEP: running_mean})
    assert pruner.prune(study, trial) is pruned
    # inside the first fold, Optuna's median rule on the same epoch
    assert pruner.prune(study, _trial_with({0: 0.5, 1: 0.4})) is True
    assert pruner.prune(study, _trial_with({0: 0.5, 1: 0.7})) is False


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_portfolio_halving_keeps_the_better_half_and_recipes_within_noise(direction: str) -> None:
    from autocls.study.portfolio import survivors

    maximise = direction == "maximize"

    def as_scores(shares: list[float]) -> list[float]:  # a loss falls where an accuracy rises
        return shares if maximise else [1 - s for s in shares]

    # best first; a difference of 0.10 is 4.7 standard errors of a difference (0.021 on 400 images): dropped
    assert survivors(as_scores([0.80, 0.90, 0.60, 0.85]), maximise, images=400) == [1, 3]
    # one recipe of two is the better half, but 0.89 is within noise of 0.90: both go on
    assert survivors(as_scores([0.89, 0.90]), maximise, images=400) == [1, 0]
    assert survivors(as_scores([0.89, 0.90]), maximise, images=40_000) == [1]  # 0.01 > 0.0042: told apart
    # measured: Lite0 0.8300 and Lite1 0.8600 on 400 images differ by 1.2 standard errors of a difference
    assert survivors(as_scores([0.83, 0.86]), maximise, images=400) == [1, 0]
    assert survivors(as_scores([0.80, 0.86]), maximise, images=400) == [1]  # 2.4: told apart
    nan = float("nan")
    assert survivors([nan, *as_scores([0.6, 0.7])], maximise, images=400) == [2, 1]  # a failed probe never goes on
    assert survivors([nan, nan], maximise, images=400) == [0, 1]  # nothing measured: all, in their order


def test_portfolio_is_probed_only_when_the_probes_are_a_small_part_of_the_budget() -> None:
    from autocls.study.budget import PROBE_SHARE, should_probe

    two = [{"backbone": "a"}, {"backbone": "b"}]
    assert should_probe(two, lambda params: 75.0, budget=1800)  # 150 s of 30 minutes
    assert not should_probe(two, lambda params: 75.0, budget=600)  # a quarter of 10 minutes
    assert should_probe(two, lambda params: 50.0, budget=100 / PROBE_SHARE)
    assert not should_probe(two[:1], lambda params: 1.0, budget=1800)  # one recipe: nothing to choose


def test_the_recipe_that_probes_best_gets_the_first_share_of_the_budget() -> None:
    fast = load_space("fast")
    lite, resnet = recipes(fast, DataStats(images=2000, classes=10, image_side=28))[:2]

    def seconds(params: dict) -> float:
        return params["resolution"] * params["epochs"]

    # 40% of 2400 s holds 96 px x 8 epochs; 25% holds 96 px x 6: whichever recipe comes first gets the former
    for ordered in ([lite, resnet], [resnet, lite]):
        first, second = size_to_shares(fast, ordered, seconds, budget=2400)
        assert first["backbone"] == ordered[0]["backbone"] and (first["resolution"], first["epochs"]) == (96, 8)
        assert second["backbone"] == ordered[1]["backbone"] and (second["epochs"]) == 6
    # a second recipe the probes could not tell from the first gets the first share too
    first, second = size_to_shares(fast, [lite, resnet], seconds, budget=2400, tied=2)
    assert (first["resolution"], first["epochs"]) == (second["resolution"], second["epochs"]) == (96, 8)
    # three tied share MAX_TIED_SHARE (85%) of the time: 680 s each, 96 px x 6
    third = {**lite, "backbone": "tf_efficientnet_lite1"}
    sized = size_to_shares(fast, [lite, resnet, third], seconds, budget=2400, tied=3)
    assert [(p["resolution"], p["epochs"]) for p in sized] == [(96, 6)] * 3


def _two_recipe_request(image_folder: Path, tmp_path: Path, monkeypatch) -> SearchRequest:
    """A 10-minute search of two recipes (MobileNet and ResNet families) whose probes are estimated
    to take no time, so the portfolio is probed first."""
    monkeypatch.setattr(TrainingTimeModel, "images_per_second", lambda self, config: 1e6)
    space = tmp_path / "two.toml"
    space.write_text(
        "[fixed]\npretrained = false\nbatch_size = 8\npatience = 2\n"
        '[params.backbone]\nchoices = ["mobilenetv3_small_050", "resnet18"]\n'
        "[params.resolution]\nchoices = [16, 24]\n[params.epochs]\nchoices = [1, 2]\n"
    )
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    return SearchRequest(
        DataSpec.of(image_folder), tmp_path / "runs", storage, space=str(space), trials=2, folds=2, timeout=600
    )


def test_a_long_budget_probes_every_recipe_on_the_first_fold_before_enqueuing_the_survivors(
    image_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    from autocls.report.html import _study_sections
    from autocls.storage.records import PORTFOLIO, PORTFOLIO_PLAN, PORTFOLIO_PROBES
    from autocls.study.budget import TimePlan
    from autocls.study.halving import halve_portfolio
    from autocls.train.cv import cross_validate as validate

    request = _two_recipe_request(image_folder, tmp_path, monkeypatch)
    folds_seen: list[int] = []
    trained: dict[str, float] = {}

    def counting(config, data, *args, **kwargs):
        folds_seen.append(len(data.splits))
        result = validate(config, data, *args, **kwargs)
        trained[config.backbone] = result.mean_score
        return result

    monkeypatch.setattr("autocls.study.halving.cross_validate", counting)
    storage = request.storage
    study, _ = create_or_continue(storage, "data", request, timing=TrainingTimeModel(CPU, tmp_path / "speeds.json"))
    assert not study.trials and len(study.user_attrs[PORTFOLIO_PLAN]["recipes"]) == 2  # nothing enqueued yet
    run_search(request, CPU)
    study = optuna.load_study(study_name="data", storage=storage)
    probed = study.user_attrs[PORTFOLIO_PROBES]
    assert folds_seen == [1, 1]  # each probe trained the first fold only
    assert probed["fidelity"] == {"resolution": 16, "epochs": 1, "folds": 1}
    scores = {p["backbone"]: p["score"] for p in probed["probes"]}
    assert scores == trained  # each probe's recorded score is its first fold's, as trained
    assert probed["kept"] == sorted(probed["kept"], key=lambda b: -scores[b])  # the best-probed recipe first
    trials = study.trials  # probes are not trials: the first trials are the surviving recipes, in that order
    assert [t.params["backbone"] for t in trials[: len(probed["kept"])]] == probed["kept"]
    assert all(t.user_attrs.get(PORTFOLIO) for t in trials[: len(probed["kept"])])
    assert not [t for t in trials if t.user_attrs.get(PORTFOLIO) and t.params["backbone"] in probed["dropped"]]
    # each probe's real time calibrated its backbone's estimates, and the study keeps the factors
    factors = probed["speed_factors"]
    assert set(factors) == set(scores) and all(f > 0 for f in factors.values())
    restored = TrainingTimeModel(CPU)
    plan = TimePlan(Budget(None), restored, images=24, folds=2, trained_folds=2)
    halve_portfolio(study, None, None, device=CPU, plan=plan, reporter=None)  # a continued run: no probes, factors back
    assert restored.backbone_factors == factors
    page = _study_sections(study)  # the report shows what the probes measured and decided
    assert "Warm-start probes" in page and all(f"<td>{b}</td>" in page for b in scores)


@pytest.mark.parametrize(("scores", "tied"), [((0.80, 0.81), 2), ((0.30, 0.95), 1)])
def test_recipes_the_probes_cannot_tell_apart_are_sized_alike(
    image_folder: Path, tmp_path: Path, monkeypatch, scores: tuple[float, float], tied: int
) -> None:
    from types import SimpleNamespace

    from autocls.study import halving

    request = _two_recipe_request(image_folder, tmp_path, monkeypatch)
    score_of = dict(zip(["mobilenetv3_small_050", "resnet18"], scores, strict=True))
    monkeypatch.setattr(
        halving, "cross_validate", lambda config, *a, **k: SimpleNamespace(mean_score=score_of[config.backbone])
    )
    passed: list[int] = []
    size_to_shares = halving.size_to_shares

    def sizing(*args, **kwargs):
        passed.append(kwargs["tied"])
        return size_to_shares(*args, **kwargs)

    monkeypatch.setattr(halving, "size_to_shares", sizing)
    run_search(request, CPU)
    # the noise bound on the first fold's 12 validation images is over 0.1: 0.01 is within it, 0.65 is not
    assert passed == [tied]
    study = optuna.load_study(study_name="data", storage=request.storage)
    assert len(study.user_attrs["portfolio_probes"]["kept"]) == tied


def test_a_recipe_whose_probe_fails_is_dropped_with_a_warning(image_folder: Path, tmp_path: Path, monkeypatch, caplog):
    from autocls.storage.records import PORTFOLIO, PORTFOLIO_PROBES
    from autocls.train.cv import cross_validate as validate

    request = _two_recipe_request(image_folder, tmp_path, monkeypatch)

    def resnet_fails(config, *args, **kwargs):
        if config.backbone == "resnet18":
            raise RuntimeError("no weights here")
        return validate(config, *args, **kwargs)

    monkeypatch.setattr("autocls.study.halving.cross_validate", resnet_fails)
    run_search(request, CPU)
    study = optuna.load_study(study_name="data", storage=request.storage)
    probed = study.user_attrs[PORTFOLIO_PROBES]
    assert (probed["kept"], probed["dropped"]) == (["mobilenetv3_small_050"], ["resnet18"])
    assert "portfolio probe of resnet18 failed: RuntimeError: no weights here" in caplog.text
    recipes = [t.params["backbone"] for t in study.trials if t.user_attrs.get(PORTFOLIO)]
    assert recipes == ["mobilenetv3_small_050"]  # the search went on; only the survivor was enqueued


def test_a_deadline_during_the_probes_leaves_them_to_the_next_run(image_folder: Path, tmp_path: Path, monkeypatch):
    from autocls.storage.records import PORTFOLIO, PORTFOLIO_PLAN, PORTFOLIO_PROBES
    from autocls.study.budget import Budget
    from autocls.train.cv import cross_validate as validate

    request = _two_recipe_request(image_folder, tmp_path, monkeypatch)
    probed: list[str] = []

    def first_probe_reaches_the_deadline(config, *args, **kwargs):
        probed.append(config.backbone)
        result = validate(config, *args, **kwargs)
        monkeypatch.setattr(Budget, "left", lambda self: -1.0)
        return result

    monkeypatch.setattr("autocls.study.halving.cross_validate", first_probe_reaches_the_deadline)
    run_search(request, CPU)
    study = optuna.load_study(study_name="data", storage=request.storage)
    assert probed == ["mobilenetv3_small_050"]  # the second recipe is not trained past the deadline
    assert PORTFOLIO_PROBES not in study.user_attrs and PORTFOLIO_PLAN in study.user_attrs
    assert not [t for t in study.trials if t.user_attrs.get(PORTFOLIO)]  # nothing sized on no time


def _completed(study: optuna.Study, value: float, resolution: int, epochs: int) -> None:
    """A finished trial of the fast space with ``resolution`` and ``epochs`` (no training)."""
    space = load_space("fast")
    params = {"backbone": "tf_efficientnet_lite0", "resolution": resolution, "epochs": epochs}
    distributions = {name: optuna.distributions.CategoricalDistribution(space.values_of(name)) for name in params}
    config = TrainConfig.from_dict({**params, "pretrained": True})
    study.add_trial(
        optuna.trial.create_trial(
            params=params,
            distributions=distributions,
            value=value,
            user_attrs={records.CONFIG: config.to_dict()},
        )
    )


def _pixel_epochs(config: TrainConfig) -> float:
    return config.resolution**2 * config.epochs / 1000.0  # seconds: 96 px x 8 epochs = 73.7 s


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_last_minutes_train_the_best_configuration_again_smaller(direction: str) -> None:
    """When the best trial no longer fits the time left, its configuration is queued once more at
    the largest size whose estimate fits 90% of it (a new trial: a new seed, the same folds)."""
    from autocls.study.budget import last_member

    study = optuna.create_study(direction=direction)
    better, worse = (0.9, 0.8) if direction == "maximize" else (0.2, 0.4)
    _completed(study, better, 96, 8)
    _completed(study, worse, 64, 8)
    space = load_space("fast")
    assert last_member(study, space, _pixel_epochs, left=80.0) is None  # 73.7 s: the best still fits
    best, size = last_member(study, space, _pixel_epochs, left=40.0)
    # fits 36 s: 64 px x 8 (32.8 s) is the most expensive; 96 px x 4 (36.9 s) is over
    assert (best.number, size) == (0, {"resolution": 64, "epochs": 8})
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(queued) == 1 and queued[0].user_attrs == {records.MEMBER_OF: 0}
    fixed = queued[0].system_attrs["fixed_params"]  # what the queued trial will sample
    assert fixed == {"backbone": "tf_efficientnet_lite0", "resolution": 64, "epochs": 8}
    assert last_member(study, space, _pixel_epochs, left=40.0) is None  # one waits in the queue already


def test_no_member_is_queued_when_nothing_fits_or_nothing_completed() -> None:
    from autocls.study.budget import last_member

    space = load_space("fast")
    study = optuna.create_study(direction="maximize")
    assert last_member(study, space, _pixel_epochs, left=5.0) is None  # no completed trial
    _completed(study, 0.9, 96, 8)
    assert last_member(study, space, _pixel_epochs, left=5.0) is None  # 48 px x 4 takes 9.2 s
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))


def test_a_member_for_the_last_minutes_is_never_pruned() -> None:
    class PruneAlways(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    study = optuna.create_study(pruner=PruneAlways())
    study.enqueue_trial({}, user_attrs={records.MEMBER_OF: 0})
    member, other = study.ask(), study.ask()
    for trial, pruned in ((other, True), (member, False)):
        observer = TrialObserver(trial, Reporter(quiet=True), Budget(None))
        observer.on_fold_start(0, 2, 8)
        if pruned:
            with pytest.raises(optuna.TrialPruned):
                observer.on_epoch_end(0, _fold(0, 8).history[1])
        else:
            observer.on_epoch_end(0, _fold(0, 8).history[1])
            observer.on_fold_end(_fold(0, 8))


def _search_queued_trials(image_folder: Path, tiny_space: Path, tmp_path: Path, **budget: int) -> None:
    """Search the study ``data`` in ``tmp_path/study.db`` (its trials queued by the test, no warm start)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    request = SearchRequest(
        DataSpec.of(image_folder),
        tmp_path / "runs",
        storage,
        space=str(tiny_space),
        folds=2,
        warm_start=False,
        **budget,
    )
    run_search(request, CPU)


def test_the_search_trains_the_best_configuration_again_for_its_last_minutes(
    image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch
) -> None:
    """End to end: each trial moves a fake clock by 300 s of a 540 s budget, so after the first
    (24 px x 2, estimated 500 s) the best no longer fits; the search queues it again at the size
    that fits 90% of the 240 s left (16 px x 1, 111 s), which trains and completes."""
    import types

    from autocls.study import budget as budget_module
    from autocls.study import objective as objective_module

    search_sizes(tiny_space)
    clock = [0.0]
    monkeypatch.setattr(budget_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(
        TrainingTimeModel,
        "trial_seconds",
        lambda self, config, *args: config.resolution**2 * config.epochs * 500 / 1152,
    )
    real_cross_validate = objective_module.cross_validate

    def cross_validate_then_advance(*args, **kwargs):
        result = real_cross_validate(*args, **kwargs)
        clock[0] += 300.0
        return result

    monkeypatch.setattr(objective_module, "cross_validate", cross_validate_then_advance)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="data", storage=storage, direction="maximize").enqueue_trial(
        {"resolution": 24, "epochs": 2}
    )
    _search_queued_trials(image_folder, tiny_space, tmp_path, trials=5, timeout=540)
    trials = optuna.load_study(study_name="data", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs[records.MEMBER_OF] == 0
    assert trials[1].params == {**trials[0].params, "resolution": 16, "epochs": 1}
    assert trials[1].user_attrs[records.SEED] != trials[0].user_attrs[records.SEED]


def test_a_pretrained_draw_without_weights_is_skipped_and_the_search_goes_on(
    image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch
) -> None:
    """Where the space searches ``pretrained``, a pretrained draw of a backbone without weights is
    a skip with its reason, not a failure: 11 in a row no longer stop the search (10 failures do)."""
    from autocls.train import backbones

    monkeypatch.setattr(backbones, "hub_reachable", lambda: False)  # offline, as here and in CI
    edit_space(
        tiny_space,
        {
            "pretrained = false\n": "",
            "[params.optimizer]": "[params.pretrained]\nchoices = [true, false]\n\n[params.optimizer]",
        },
    )
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="data", storage=storage, direction="maximize")
    for _ in range(11):
        study.enqueue_trial({"pretrained": True})
    study.enqueue_trial({"pretrained": False})
    _search_queued_trials(image_folder, tiny_space, tmp_path, trials=1)
    trials = optuna.load_study(study_name="data", storage=storage).trials
    assert len(trials) == 12
    for trial in trials[:11]:
        assert trial.user_attrs["skipped"].startswith(records.WEIGHTS_SKIP + "no pretrained weights for")
    assert trials[11].state.name == "COMPLETE" and trials[11].params["pretrained"] is False


def test_the_summary_counts_skipped_configurations_by_reason() -> None:
    from autocls.study.progress import _skip_reasons

    def skipped(reason: str) -> records.TrialRecord:
        return records.TrialRecord(0, optuna.trial.TrialState.FAIL, None, {}, skipped=reason)

    found = [skipped("needs about 300s, 40s left"), skipped(records.WEIGHTS_SKIP + "no pretrained weights for 'x'")]
    found += [skipped("needs about 90s, 20s left"), skipped(records.LIMIT_SKIP + "its 5 fold models take 80 ms")]
    assert _skip_reasons(found) == "2 too long for the time left, 1 without pretrained weights, 1 over a limit"


@pytest.mark.parametrize("queue_again", [records.retry_attrs, records.shrunk_attrs])
def test_a_member_queued_again_stays_a_member(queue_again) -> None:
    """A member stopped at the deadline (or skipped as too long) and queued again stays unpruned."""
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs={records.MEMBER_OF: 3, records.PORTFOLIO: True})
    attrs = queue_again(study.ask())
    assert attrs[records.MEMBER_OF] == 3 and attrs[records.PORTFOLIO] is True
    assert attrs[records.RETRY_OF if queue_again is records.retry_attrs else records.SHRUNK_FROM] == 0
