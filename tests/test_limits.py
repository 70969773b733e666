"""Deployment limits: backbones over them leave the space, configurations over them are not
trained, and refit's ensemble keeps them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autocls.data.discover import DataSpec
from autocls.final.selection import select_ensemble
from autocls.runtime.errors import AutoclsError
from autocls.study.driver import run_search
from autocls.study.limits import DeploymentCost, Limits, fold_models_cost
from autocls.study.setup import SearchRequest, narrow_to_limits
from autocls.study.space import load_space
from autocls.study.trainingtime import TrainingTimeModel
from autocls.train.config import TrainConfig
from autocls.train.metrics import get_metric
from tests.helpers import edit_space

CPU = torch.device("cpu")


def fake_latency(self: TrainingTimeModel, config: TrainConfig) -> float:
    """Per-image milliseconds of one fold model: 1 per 1,000 pixels, 3 for a ResNet."""
    return (3.0 if "resnet" in config.backbone else 1.0) * config.resolution**2 / 1000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"max_latency_ms": -3},
            "The 'max_latency_ms' parameter must be a number of milliseconds > 0. Got -3 instead.",
        ),
        ({"max_latency_ms": float("nan")}, "must be a number of milliseconds > 0. Got nan instead."),
        ({"max_params": 0}, "The 'max_params' parameter must be an integer >= 1. Got 0 instead."),
        ({"max_params": 2.5}, "must be an integer >= 1. Got 2.5 instead."),
    ],
)
def test_limits_refuse_what_cannot_be_a_limit(kwargs: dict, message: str) -> None:
    with pytest.raises(AutoclsError, match=message.replace(".", r"\.")):
        Limits(**kwargs)


def test_a_model_cost_is_checked_against_each_limit() -> None:
    limits = Limits(max_latency_ms=10, max_params=1_000_000)
    assert limits.exceeded(DeploymentCost(9.9, 999_999)) is None
    assert "11.0 ms an image, over the limit of 10 ms" in limits.exceeded(DeploymentCost(11, 10))
    assert "over the limit of 1,000,000" in limits.exceeded(DeploymentCost(1, 1_000_001))
    assert not Limits() and Limits(max_params=1)
    # five fold models on two views: ten passes an image, five copies of the weights
    assert DeploymentCost(2.0, 100).times(10, 5) == DeploymentCost(20.0, 500)


def test_backbones_over_the_latency_limit_leave_the_space(monkeypatch, caplog) -> None:
    """fast's lowest resolution is 48 px: a Lite model takes 2.3 ms there, resnet18 6.9 ms; five fold
    models of each: 11.5 ms and 34.6 ms. A 20 ms limit keeps the Lites and MobileNet only."""
    monkeypatch.setattr(TrainingTimeModel, "latency_ms", fake_latency)
    monkeypatch.setattr(TrainingTimeModel, "parameters", lambda self, config: 1000)
    space = narrow_to_limits(load_space("fast"), Limits(max_latency_ms=20), TrainingTimeModel(CPU), folds=5)
    assert "resnet18" not in space.values_of("backbone") and "tf_efficientnet_lite0" in space.values_of("backbone")
    assert "resnet18 (34.6 ms an image, over the limit of 20 ms)" in caplog.text
    with pytest.raises(AutoclsError, match="no backbone of space 'fast' meets the limit"):
        narrow_to_limits(load_space("fast"), Limits(max_latency_ms=5), TrainingTimeModel(CPU), folds=5)


def test_ensemble_selection_keeps_out_members_the_limit_forbids() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=300)
    noisy = [rng.dirichlet(np.ones(3), size=300) for _ in range(3)]
    for probs in noisy:
        probs[np.arange(300), labels] += 0.4  # each fairly good, differently wrong: blends help
    score = get_metric("accuracy")
    free = select_ensemble(noisy, labels, score)
    assert len(free.weights) > 1
    alone = select_ensemble(noisy, labels, score, allowed=lambda members: len(members) == 1)
    assert len(alone.weights) == 1
    without_best = select_ensemble(noisy, labels, score, allowed=lambda members: free.best_single not in members)
    assert free.best_single not in without_best.weights


def test_a_search_under_a_latency_limit_never_trains_a_configuration_over_it(
    image_folder: Path, tiny_space: Path, tmp_path: Path, monkeypatch
) -> None:
    """test_efficientnet at 16 px: 2 fold models x 0.26 ms; at 24 px 2 x 0.58 ms. A limit of 1 ms
    keeps the backbone and skips every 24 px configuration before training; refit's model keeps it."""
    import json

    from autocls.api import refit

    monkeypatch.setattr(TrainingTimeModel, "latency_ms", fake_latency)
    edit_space(
        tiny_space,
        {
            "resolution = 24\n": "",
            "[params.optimizer]": "[params.resolution]\nchoices = [16, 24]\n\n[params.optimizer]",
        },
    )
    workdir = tmp_path / "runs"
    data = DataSpec.of(image_folder)
    request = SearchRequest(data, workdir, space=str(tiny_space), trials=3, folds=2, max_latency_ms=1.0)
    study = run_search(request, CPU)
    trained = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    skipped = [t for t in study.trials if "skipped" in t.user_attrs]
    assert trained and skipped and all(t.params["resolution"] == 16 for t in trained)
    assert all(t.params["resolution"] == 24 and "over the limit of 1 ms" in t.user_attrs["skipped"] for t in skipped)
    assert all(t.user_attrs["model_cost"]["latency_ms"] <= 1.0 for t in trained)
    refit(study, workdir=workdir)
    manifest = json.loads((workdir / "data" / "model" / "manifest.json").read_text())
    assert manifest["limits"]["latency_ms"] <= 1.0 and manifest["limits"]["max_latency_ms"] == 1.0
    # the same study continued with another limit is refused: its trials were chosen under this one
    with pytest.raises(AutoclsError, match=r"--max-latency-ms 2\.0"):
        run_search(SearchRequest(data, workdir, space=str(tiny_space), trials=4, folds=2, max_latency_ms=2.0), CPU)


def test_fold_models_cost_measures_each_model_once(monkeypatch) -> None:
    calls = []

    def latency(self: TrainingTimeModel, config: TrainConfig) -> float:
        calls.append(config.backbone)
        return 2.0

    monkeypatch.setattr(TrainingTimeModel, "latency_ms", latency)
    monkeypatch.setattr(TrainingTimeModel, "parameters", lambda self, config: 10)
    config = TrainConfig.from_dict({"backbone": "test_efficientnet", "resolution": 16})
    assert fold_models_cost(TrainingTimeModel(CPU), config, folds=5, views=2) == DeploymentCost(20.0, 50)
    assert calls == ["test_efficientnet"]
