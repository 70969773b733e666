from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autocls.backbones import create_classifier, split_frozen_prefix
from autocls.config import AUGMENTATIONS, OPTIMIZERS, SCHEDULERS, TrainConfig
from autocls.data import discover
from autocls.errors import NonFiniteLossError
from autocls.images import build_store
from autocls.trainer import Trainer, TrainingObserver, cross_validate, stratified_folds

CPU = torch.device("cpu")
BASE = TrainConfig(backbone="test_efficientnet", pretrained=False, resolution=16, batch_size=8, epochs=2, lr=0.01)


@pytest.fixture
def prepared(image_folder: Path):
    data = discover(image_folder)
    kept, store = build_store(data, 16)
    return kept, store


def test_cross_validation_trains_every_fold_and_fills_out_of_fold(prepared) -> None:
    data, store = prepared
    splits = stratified_folds(data.labels, 3, seed=0)
    events: list[str] = []

    class Recorder(TrainingObserver):
        def on_fold_start(self, fold, folds, epochs):
            events.append(f"start {fold}/{folds}")

        def on_epoch_end(self, fold, record):
            events.append(f"epoch {fold}.{record.epoch}")

        def on_fold_end(self, result):
            events.append(f"end {result.fold}")

    config = TrainConfig(**{**BASE.to_dict(), "epochs": 8, "lr": 0.02})
    result = cross_validate(config, store, data.labels, splits, 3, CPU, observer=Recorder(), keep_models=True)
    assert len(result.folds) == 3 and events[0] == "start 0/3" and events[-1] == "end 2"
    assert not np.isnan(result.oof_probs).any()
    np.testing.assert_allclose(result.oof_probs.sum(axis=1), 1.0, atol=1e-5)
    assert result.mean_score > 0.6  # colour-coded classes are easy
    assert all(f.state_dict is not None for f in result.folds)
    for fold in result.folds:
        assert fold.best.val_loss <= min(r.val_loss for r in fold.history) + 1e-4  # the best epoch is kept


def test_early_stopping_stops_after_patience(prepared) -> None:
    data, store = prepared
    splits = stratified_folds(data.labels, 2, seed=0)
    config = TrainConfig(**{**BASE.to_dict(), "epochs": 30, "patience": 1, "lr": 1e-9})  # never improves
    result = cross_validate(config, store, data.labels, splits[:1], 3, CPU)
    assert len(result.folds[0].history) < 30


@pytest.mark.parametrize(
    "changes",
    [{"optimizer": o} for o in OPTIMIZERS]
    + [{"scheduler": s} for s in SCHEDULERS]
    + [{"augmentation": a} for a in AUGMENTATIONS]
    + [{"freeze": 1.0}, {"label_smoothing": 0.1, "dropout": 0.2}, {"backbone": "test_vit"}],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_every_choice_trains(prepared, changes: dict) -> None:
    data, store = prepared
    config = TrainConfig(**{**BASE.to_dict(), "epochs": 1, **changes})
    trainer = Trainer(config, 3, CPU)
    train_idx, val_idx = stratified_folds(data.labels, 2, seed=0)[0]
    result = trainer.fit(store.at(16), torch.as_tensor(data.labels), train_idx, val_idx)
    assert np.isfinite(result.best.train_loss) and 0.0 <= result.best.val_score <= 1.0


def test_diverging_loss_is_reported(prepared) -> None:
    data, store = prepared
    config = TrainConfig(**{**BASE.to_dict(), "lr": 1e30, "optimizer": "sgd", "warmup_epochs": 0, "epochs": 3})
    with pytest.raises(NonFiniteLossError, match="loss became"):
        cross_validate(config, store, data.labels, stratified_folds(data.labels, 2, 0), 3, CPU)


def test_same_config_and_seed_train_identically(prepared) -> None:
    data, store = prepared
    config = TrainConfig(**{**BASE.to_dict(), "augmentation": "randaugment", "mixup": 0.2, "random_erasing": 0.25})
    splits = stratified_folds(data.labels, 2, seed=0)
    runs = [cross_validate(config, store, data.labels, splits, 3, CPU, seed=7) for _ in range(2)]
    assert [r.train_loss for r in runs[0].folds[0].history] == [r.train_loss for r in runs[1].folds[0].history]
    np.testing.assert_array_equal(runs[0].oof_probs, runs[1].oof_probs)


def _fit_uncached(prepared, freeze: float):
    """A pretrained, unaugmented lite0 trial with ``freeze`` of its stages frozen, fitted on fold 0
    without the frozen-feature cache: the reference the cached runs must reproduce."""
    data, store = prepared
    config = TrainConfig(
        backbone="tf_efficientnet_lite0",
        pretrained=True,
        freeze=freeze,
        augmentation="none",
        resolution=16,
        batch_size=8,
        epochs=2,
        lr=0.01,
    )
    splits = stratified_folds(data.labels, 2, seed=0)
    images, labels = store.at(16), torch.as_tensor(data.labels)
    plain = Trainer(config, 3, CPU, feature_cache=False).fit(images, labels, *splits[0])
    return config, images, labels, splits, plain


def test_frozen_feature_cache_gives_the_same_model_and_skips_the_backbone(prepared, monkeypatch) -> None:
    from autocls import trainer as trainer_module

    config, images, labels, splits, plain = _fit_uncached(prepared, freeze=1.0)
    calls = []
    real_forward_features = __import__("timm").models.efficientnet.EfficientNet.forward_features
    monkeypatch.setattr(
        __import__("timm").models.efficientnet.EfficientNet,
        "forward_features",
        lambda self, x: calls.append(len(x)) or real_forward_features(self, x),
    )
    trainer_module._FEATURES.clear()
    cached = Trainer(config, 3, CPU).fit(images, labels, *splits[0])
    np.testing.assert_allclose(cached.val_probs, plain.val_probs, atol=1e-5)
    assert [r.train_loss for r in cached.history] == pytest.approx([r.train_loss for r in plain.history], abs=1e-5)
    assert sum(calls) == len(images)  # the backbone ran once over the images, not per step or epoch
    Trainer(config, 3, CPU).fit(images, labels, *splits[1])  # the next fold reuses the features
    assert sum(calls) == len(images)


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18", "mobilenetv3_large_100", "densenet121"])
def test_frozen_prefix_split_reproduces_forward_features(backbone) -> None:
    config = TrainConfig(backbone=backbone, pretrained=False, freeze=0.5, resolution=32)
    model = create_classifier(config, 3)
    prefix, rest = split_frozen_prefix(model, torch.randn(2, 3, 32, 32))
    assert not any(p.requires_grad for p in prefix.parameters())
    assert any(p.requires_grad for p in rest.parameters())
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rest(prefix(x)), model.forward_features(x))


def test_no_prefix_split_for_a_vit_or_when_nothing_is_frozen() -> None:
    vit = create_classifier(
        TrainConfig(backbone="vit_tiny_patch16_224", pretrained=False, freeze=0.5, resolution=32), 3
    )
    assert split_frozen_prefix(vit, torch.randn(2, 3, 32, 32)) is None  # position embeddings sit between modules
    cnn = create_classifier(TrainConfig(backbone="resnet18", pretrained=False, freeze=0.0, resolution=32), 3)
    assert split_frozen_prefix(cnn, torch.randn(2, 3, 32, 32)) is None


def test_frozen_prefix_cache_gives_the_same_model_and_runs_the_prefix_once(prepared, monkeypatch) -> None:
    from autocls import trainer as trainer_module

    config, images, labels, splits, plain = _fit_uncached(prepared, freeze=0.5)
    stem_calls = []
    real_create = trainer_module.create_classifier

    def create_counting_stem(*args, **kwargs):
        model = real_create(*args, **kwargs)
        model.conv_stem.register_forward_pre_hook(lambda module, inputs: stem_calls.append(len(inputs[0])))
        return model

    monkeypatch.setattr(trainer_module, "create_classifier", create_counting_stem)
    trainer_module._FEATURES.clear()
    cached = Trainer(config, 3, CPU).fit(images, labels, *splits[0])
    assert cached.frozen_stages > 0
    np.testing.assert_allclose(cached.val_probs, plain.val_probs, atol=1e-5)
    assert [r.train_loss for r in cached.history] == pytest.approx([r.train_loss for r in plain.history], abs=1e-5)
    checks = 2 + 2 + 1  # the split is checked on 2 images (whole and split), the size probed on 1
    assert sum(stem_calls) == len(images) + checks  # the prefix ran over every image once
    Trainer(config, 3, CPU).fit(images, labels, *splits[1])  # the next fold reuses the feature maps
    assert sum(stem_calls) == len(images) + 2 * checks
    keys = cached.state_dict.keys()
    assert set(keys) == set(plain.state_dict.keys())  # the saved fold model is the whole model
