from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autocls.runtime.errors import AutoclsError
from autocls.study.space import builtin_space_names, load_space, space_from_dict
from autocls.train.config import TrainConfig


@pytest.mark.parametrize("name", ["default", "fast"])
def test_builtin_spaces_cover_the_required_dimensions(name: str) -> None:
    space = load_space(name)
    searched = {d.name for d in space.dimensions}
    assert {"backbone", "freeze", "optimizer", "lr", "weight_decay", "scheduler", "augmentation"} <= searched
    assert {"batch_size", "resolution"} <= searched
    assert set(space.values_of("optimizer")) == {"adamw", "adam", "sgd"}
    assert {"cosine", "plateau", "step"} <= set(space.values_of("scheduler"))
    assert {"none", "light", "randaugment"} <= set(space.values_of("augmentation"))
    assert min(space.values_of("freeze")) == 0.0 and max(space.values_of("freeze")) == 1.0


def test_builtin_names() -> None:
    assert {"default", "fast"} <= set(builtin_space_names())


def test_conditional_dimension_is_sampled_only_when_its_condition_holds(tiny_space: Path) -> None:
    space = load_space(tiny_space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"adamw": 0, "sgd": 0}
    for _ in range(20):
        trial = study.ask()
        config = space.sample(trial)
        seen[config.optimizer] += 1
        assert ("momentum" in trial.params) == (config.optimizer == "sgd")
        assert config.backbone == "test_efficientnet" and config.resolution == 24  # fixed settings
        study.tell(trial, 0.0)
    assert seen["adamw"] and seen["sgd"]


def test_round_trip_through_dict(tiny_space: Path) -> None:
    space = load_space(tiny_space)
    again = space_from_dict(space.to_dict(), name=space.name)
    assert again == space
    assert space.max_resolution == 24


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fixed": {"backbone": "x", "colour": 1}}, "unknown setting 'colour'"),
        ({"params": {"backbone": {"choices": []}}}, "non-empty list"),
        ({"fixed": {"backbone": "x"}, "params": {"lr": {"low": 1.0, "high": 0.1}}}, "low must be below high"),
        (
            {"fixed": {"backbone": "x"}, "params": {"lr": {"low": 0.1, "high": 1.0, "when": {"opt": "sgd"}}}},
            "not a dimension",
        ),
        ({"params": {"lr": {"low": 0.1, "high": 1.0}}}, "fix or search 'backbone'"),
        ({"fixed": {"backbone": "x"}, "extra": 1}, "unknown top-level"),
        # wrong values are found when the file is loaded, not when a trial happens to sample them
        ({"fixed": {"backbone": "x"}, "params": {"optimizer": {"choices": ["adamw", "lion"]}}}, "params.optimizer"),
        ({"fixed": {"backbone": "x"}, "params": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log range needs"),
        (
            {"fixed": {"backbone": "x"}, "params": {"epochs": {"choices": [4, "six"]}}},
            r"The 'epochs' parameter of bad.toml \[params.epochs\] must be an integer >= 1. Got 'six' instead",
        ),
        (
            {"fixed": {"backbone": "x", "lr": "fast"}},
            r"The 'lr' parameter of bad.toml \[fixed\] must be a number > 0. Got 'fast' instead",
        ),
        (
            {"fixed": {"backbone": "x", "pretrained": 1}},
            "'pretrained' parameter of bad.toml \\[fixed\\] must be true or false. Got 1 instead",
        ),
        ({"fixed": {"backbone": "x"}, "params": {"lr": {"low": "a", "high": 0.1}}}, "must be numbers"),
        ({"fixed": {"backbone": "resnet19"}}, "unknown backbone 'resnet19'; did you mean resnet18"),
        (
            {"fixed": {"backbone": "x", "lr": -3}},
            r"The 'lr' parameter of bad.toml \[fixed\] must be a number > 0. Got -3 instead.",
        ),
        ({"fixed": {"backbone": "x", "dropout": 1.0}}, r"'dropout' .* must be a number in \[0, 1\). Got 1.0"),
        ({"fixed": {"backbone": "x", "resolution": 4}}, "'resolution' .* must be an integer >= 8. Got 4"),
        ({"fixed": {"backbone": "x", "scheduler": "poly"}}, r"must be one of \['cosine', 'onecycle'"),
    ],
)
def test_invalid_spaces_are_rejected_with_the_reason(data: dict, message: str) -> None:
    with pytest.raises(AutoclsError, match=message):
        space_from_dict(data, name="bad", origin="bad.toml")


def test_unknown_space_name_lists_the_builtins() -> None:
    with pytest.raises(AutoclsError, match="one of"):
        load_space("no-such-space")


def test_config_validates_choices() -> None:
    with pytest.raises(AutoclsError, match=r"The 'optimizer' parameter must be one of \[.adamw., .adam., .sgd.\]"):
        TrainConfig(backbone="resnet18", optimizer="lion")
    with pytest.raises(AutoclsError, match=r"The 'freeze' parameter must be a number in \[0, 1\]. Got 1.5 instead."):
        TrainConfig(backbone="resnet18", freeze=1.5)
