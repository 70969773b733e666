from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autocls.data.discover import discover
from autocls.data.images import ImageStore, build_store
from autocls.runtime.control import derive_seed
from autocls.runtime.errors import NonFiniteLossError
from autocls.train.backbones import create_classifier, split_frozen_prefix
from autocls.train.callbacks import TrainingObserver, monitor_split
from autocls.train.config import AUGMENTATIONS, OPTIMIZER_NAMES, SCHEDULER_NAMES, TrainConfig
from autocls.train.cv import FoldData, cross_validate, stratified_folds
from autocls.train.optim import ANNEALING_SCHEDULERS, create_optimizer, create_scheduler
from autocls.train.trainer import Trainer

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
    result = cross_validate(config, FoldData(store, data.labels, splits, 3), CPU, observer=Recorder(), keep_models=True)
    assert len(result.folds) == 3 and events[0] == "start 0/3" and events[-1] == "end 2"
    assert not np.isnan(result.oof_probs).any()
    np.testing.assert_allclose(result.oof_probs.sum(axis=1), 1.0, atol=1e-5)
    assert result.mean_score > 0.6  # colour-coded classes are easy
    assert all(f.state_dict is not None for f in result.folds)
    for fold in result.folds:  # cosine anneals to its end: every fold trains all epochs and keeps the last
        assert len(fold.history) == 8 and fold.best_epoch == 7


@pytest.mark.parametrize("scheduler", ["constant", "plateau"])
def test_early_stopping_stops_after_patience(prepared, scheduler: str) -> None:
    data, store = prepared
    splits = stratified_folds(data.labels, 2, seed=0)
    config = TrainConfig(**{**BASE.to_dict(), "epochs": 30, "patience": 1, "lr": 1e-9, "scheduler": scheduler})
    result = cross_validate(config, FoldData(store, data.labels, splits[:1], 3), CPU)  # the loss never improves
    assert len(result.folds[0].history) == 2  # the first epoch, then one without improvement
    assert result.folds[0].history[0].monitor_loss is not None


@pytest.mark.parametrize("scheduler", sorted(ANNEALING_SCHEDULERS))
def test_annealing_schedule_runs_to_its_end_and_keeps_its_last_weights(prepared, scheduler: str) -> None:
    data, store = prepared
    train_idx, val_idx = stratified_folds(data.labels, 2, seed=0)[0]
    # patience 1 at a tiny lr stopped these after 2 epochs and kept the first
    config = TrainConfig(**{**BASE.to_dict(), "epochs": 5, "patience": 1, "lr": 1e-9, "scheduler": scheduler})
    result = Trainer(config, 3, CPU).fit(store, torch.as_tensor(data.labels), train_idx, val_idx)
    assert len(result.history) == 5 and result.best_epoch == 4
    assert all(r.monitor_loss is None for r in result.history)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_kept_weights_do_not_depend_on_the_validation_labels(prepared, scheduler: str) -> None:
    """The score a fold reports must be an honest estimate: its validation labels choose nothing."""
    data, store = prepared
    train_idx, val_idx = stratified_folds(data.labels, 2, seed=0)[0]
    config = TrainConfig(**{**BASE.to_dict(), "epochs": 6, "patience": 1, "lr": 0.05, "scheduler": scheduler})
    true = torch.as_tensor(data.labels)
    wrong = true.clone()
    wrong[val_idx] = (wrong[val_idx] + 1) % 3  # every validation label wrong, training labels as they are
    runs = [Trainer(config, 3, CPU).fit(store, labels, train_idx, val_idx) for labels in (true, wrong)]
    assert runs[0].best_epoch == runs[1].best_epoch
    assert len(runs[0].history) == len(runs[1].history)
    for name, value in runs[0].state_dict.items():
        torch.testing.assert_close(runs[1].state_dict[name], value, msg=name)
    assert runs[0].best.val_score != runs[1].best.val_score  # the validation labels were used to score


def test_monitor_split_holds_out_a_stratified_tenth_of_the_training_fold() -> None:
    labels = np.repeat(np.arange(4), 25)
    train_idx = np.arange(100)
    fit, monitor = monitor_split(train_idx, labels, seed=3)
    assert len(monitor) == 10 and len(fit) == 90 and not set(fit) & set(monitor)
    assert set(labels[monitor]) == {0, 1, 2, 3}
    tiny_fit, tiny_monitor = monitor_split(np.arange(3), np.array([0, 1, 2]), seed=0)
    assert list(tiny_fit) == list(tiny_monitor) == [0, 1, 2]  # nothing to spare: monitor the training images


def _group_lrs(config: TrainConfig, updates: int, steps_per_epoch: int) -> list[list[tuple[float, float]]]:
    """(lr, lr_scale) of every param group after each update of a ``config`` schedule."""
    model = create_classifier(config, 3)
    optimizer = create_optimizer(model, config)
    scheduler = create_scheduler(optimizer, config, steps_per_epoch)
    seen = []
    for update in range(1, updates + 1):
        optimizer.step()
        scheduler.step_update(num_updates=update)
        if update % steps_per_epoch == 0:
            scheduler.step(update // steps_per_epoch, 1.0)  # a flat monitored loss: plateau decays
        seen.append([(g["lr"], g.get("lr_scale", 1.0)) for g in optimizer.param_groups])
    return seen


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_layer_decay_scales_each_group_once_under_every_scheduler(scheduler: str) -> None:
    common = {"backbone": "test_vit", "pretrained": False, "resolution": 16, "lr": 1e-3}
    common.update(epochs=6, warmup_epochs=1, patience=2, scheduler=scheduler)
    steps = 3
    plain = _group_lrs(TrainConfig(**common), 6 * steps, steps)
    decayed = _group_lrs(TrainConfig(**common, layer_decay=0.5), 6 * steps, steps)
    scales = {scale for groups in decayed for _, scale in groups}
    assert min(scales) < 0.1  # a deep group: decay applied twice would be visible
    for update, (reference, groups) in enumerate(zip(plain, decayed, strict=True)):
        schedule = reference[0][0]  # lr * schedule(t), no decay
        for lr, scale in groups:
            assert lr == pytest.approx(schedule * scale, rel=1e-6), (update, scale)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize(("epochs", "steps"), [(1, 1), (2, 1), (3, 1), (4, 1), (1, 4), (5, 2)])
def test_every_scheduler_handles_few_updates(scheduler: str, epochs: int, steps: int) -> None:
    config = TrainConfig(**{**BASE.to_dict(), "epochs": epochs, "scheduler": scheduler, "warmup_epochs": 1})
    for groups in _group_lrs(config, epochs * steps, steps):
        assert all(np.isfinite(lr) and lr > 0 for lr, _ in groups)


def test_a_small_dataset_trains_with_the_one_cycle_recipe(prepared) -> None:
    """24 images, 2 folds: one step an epoch; 4 epochs of one-cycle raised ZeroDivisionError."""
    data, store = prepared
    config = TrainConfig(**{**BASE.to_dict(), "epochs": 4, "scheduler": "onecycle", "batch_size": 64})
    result = cross_validate(config, FoldData(store, data.labels, stratified_folds(data.labels, 2, 0), 3), CPU)
    assert [len(f.history) for f in result.folds] == [4, 4]


def test_sam_ascent_pass_leaves_batchnorm_running_statistics_alone(prepared) -> None:
    data, store = prepared
    train_idx, _ = stratified_folds(data.labels, 2, seed=0)[0]
    config = TrainConfig(**{**BASE.to_dict(), "augmentation": "none"})
    batch = store.at(16)[torch.as_tensor(train_idx[:8])]
    labels = torch.as_tensor(data.labels)[torch.as_tensor(train_idx[:8])]
    stats = []
    for rho in (0.0, 0.05):
        trainer = Trainer(TrainConfig(**{**config.to_dict(), "sam_rho": rho}), 3, CPU)
        torch.manual_seed(0)
        model = create_classifier(trainer.config, 3)
        model.train()
        x = (batch.float() / 255 - 0.5) / 0.25
        trainer._train_step(model, create_optimizer(model, trainer.config), x, labels, class_weights=None)
        stats.append({k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k})
    assert stats[0]
    for name, value in stats[0].items():
        torch.testing.assert_close(stats[1][name], value, msg=name)


def test_seeds_of_trials_and_folds_never_collide() -> None:
    seeds = {derive_seed(derive_seed(0, trial), fold) for trial in range(300) for fold in range(10)}
    assert len(seeds) == 3000
    assert derive_seed(0, 1) != derive_seed(1, 0)
    # a study's recorded seeds reproduce its trials only while the derivation stays the same
    assert (derive_seed(5, 2), derive_seed(0, 0)) == (3226123765, 2968811710)


@pytest.mark.parametrize(
    "changes",
    [{"optimizer": o} for o in OPTIMIZER_NAMES]
    + [{"scheduler": s} for s in SCHEDULER_NAMES]
    + [{"augmentation": a} for a in AUGMENTATIONS]
    + [{"freeze": 1.0}, {"label_smoothing": 0.1, "dropout": 0.2}, {"backbone": "test_vit"}],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_every_choice_trains(prepared, changes: dict) -> None:
    data, store = prepared
    config = TrainConfig(**{**BASE.to_dict(), "epochs": 1, **changes})
    trainer = Trainer(config, 3, CPU)
    train_idx, val_idx = stratified_folds(data.labels, 2, seed=0)[0]
    result = trainer.fit(store, torch.as_tensor(data.labels), train_idx, val_idx)
    assert np.isfinite(result.best.train_loss)
    val_labels = data.labels[val_idx]
    assert result.best.val_score == pytest.approx(np.mean(result.val_probs.argmax(axis=1) == val_labels))
    np.testing.assert_allclose(result.val_probs.sum(axis=1), 1.0, rtol=1e-5)


def test_diverging_loss_is_reported(prepared) -> None:
    data, store = prepared
    config = TrainConfig(**{**BASE.to_dict(), "lr": 1e30, "optimizer": "sgd", "warmup_epochs": 0, "epochs": 3})
    with pytest.raises(NonFiniteLossError, match="loss became"):
        cross_validate(config, FoldData(store, data.labels, stratified_folds(data.labels, 2, 0), 3), CPU)


def test_same_config_and_seed_train_identically(prepared) -> None:
    data, store = prepared
    config = TrainConfig(**{**BASE.to_dict(), "augmentation": "randaugment", "mixup": 0.2, "random_erasing": 0.25})
    splits = stratified_folds(data.labels, 2, seed=0)
    runs = [cross_validate(config, FoldData(store, data.labels, splits, 3), CPU, seed=7) for _ in range(2)]
    assert [r.train_loss for r in runs[0].folds[0].history] == [r.train_loss for r in runs[1].folds[0].history]
    np.testing.assert_array_equal(runs[0].oof_probs, runs[1].oof_probs)


def _fit_uncached(prepared, freeze: float):
    """A pretrained, unaugmented lite0 trial with ``freeze`` of its stages frozen, fitted on fold 0
    without the frozen-feature cache: the reference the cached runs must reproduce."""
    data, store = prepared
    # SGD, not Adam: the cached and uncached paths differ by float-sum order (~1e-7), and Adam's
    # first steps, of nearly fixed size whatever a gradient's magnitude, turn that noise in the
    # near-zero gradients of a zero-initialised head into 1e-3 after two steps; SGD keeps it ~1e-7
    config = TrainConfig(
        backbone="tf_efficientnet_lite0",
        pretrained=True,
        freeze=freeze,
        augmentation="none",
        resolution=16,
        batch_size=8,
        epochs=3,
        optimizer="sgd",
        lr=0.05,
    )
    splits = stratified_folds(data.labels, 2, seed=0)
    labels = torch.as_tensor(data.labels)
    plain = Trainer(config, 3, CPU, feature_cache=False).fit(store, labels, *splits[0])
    return config, store, labels, splits, plain


# A model trained twice with different (mathematically equal) orders of float sums: agreement up to a
# few 1e-5 across CPUs, not bit for bit (1.8e-5 was seen on another machine against atol 1e-5).
SAME_MODEL = {"atol": 2e-4, "rtol": 1e-4}


def test_frozen_feature_cache_gives_the_same_model_and_skips_the_backbone(prepared, monkeypatch) -> None:
    config, store, labels, splits, plain = _fit_uncached(prepared, freeze=1.0)
    images = store.at(16)
    calls = []
    real_forward_features = __import__("timm").models.efficientnet.EfficientNet.forward_features
    monkeypatch.setattr(
        __import__("timm").models.efficientnet.EfficientNet,
        "forward_features",
        lambda self, x: calls.append(len(x)) or real_forward_features(self, x),
    )
    cached = Trainer(config, 3, CPU).fit(store, labels, *splits[0])
    np.testing.assert_allclose(cached.val_probs, plain.val_probs, **SAME_MODEL)
    train_losses = [r.train_loss for r in cached.history]
    assert train_losses == pytest.approx([r.train_loss for r in plain.history], abs=SAME_MODEL["atol"])
    assert sum(calls) == len(images)  # the backbone ran once over the images, not per step or epoch
    Trainer(config, 3, CPU).fit(store, labels, *splits[1])  # the next fold reuses the features
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
    from autocls.train import foldparts

    config, store, labels, splits, plain = _fit_uncached(prepared, freeze=0.5)
    images = store.at(16)
    stem_calls = []
    real_create = foldparts.create_classifier

    def create_counting_stem(*args, **kwargs):
        model = real_create(*args, **kwargs)
        model.conv_stem.register_forward_pre_hook(lambda module, inputs: stem_calls.append(len(inputs[0])))
        return model

    monkeypatch.setattr(foldparts, "create_classifier", create_counting_stem)
    cached = Trainer(config, 3, CPU).fit(store, labels, *splits[0])
    assert cached.frozen_stages > 0
    np.testing.assert_allclose(cached.val_probs, plain.val_probs, **SAME_MODEL)
    train_losses = [r.train_loss for r in cached.history]
    assert train_losses == pytest.approx([r.train_loss for r in plain.history], abs=SAME_MODEL["atol"])
    checks = 2 + 2 + 1  # the split is checked on 2 images (whole and split), the size probed on 1
    assert sum(stem_calls) == len(images) + checks  # the prefix ran over every image once
    Trainer(config, 3, CPU).fit(store, labels, *splits[1])  # the next fold reuses the feature maps
    assert sum(stem_calls) == len(images) + 2 * checks
    keys = cached.state_dict.keys()
    assert set(keys) == set(plain.state_dict.keys())  # the saved fold model is the whole model


def test_frozen_features_belong_to_their_image_store(prepared) -> None:
    """Features cached for one store are never served for other images of the same shape (they were
    keyed by ``id()`` of the image tensor, which Python reuses once a tensor is freed)."""
    config, store, labels, splits, _ = _fit_uncached(prepared, freeze=1.0)
    Trainer(config, 3, CPU).fit(store, labels, *splits[0])
    other_pixels = 255 - store.at(16)  # same shape, other images
    del store
    other = ImageStore(other_pixels.clone())
    del other_pixels
    cached = Trainer(config, 3, CPU).fit(other, labels, *splits[0])
    plain = Trainer(config, 3, CPU, feature_cache=False).fit(other, labels, *splits[0])
    np.testing.assert_allclose(cached.val_probs, plain.val_probs, **SAME_MODEL)
    calls = []
    assert other.features(("k",), lambda: calls.append(1) or torch.ones(1)) is other.features(("k",), torch.zeros)
    assert ImageStore(other.images).features(("k",), lambda: torch.zeros(1)).item() == 0.0 and calls == [1]


def test_out_of_memory_halves_the_batch_and_the_learning_rate_down_to_a_floor(prepared, monkeypatch) -> None:
    """An out-of-memory error (injected: CPU has none) restarts the fold at half the batch and half
    the lr; later folds start at the batch that fitted; below the floor the error stands."""
    from autocls.train import trainer as trainer_module
    from autocls.train.cv import MIN_BATCH

    data, store = prepared
    built, real_build, real_step = [], trainer_module.build_fold, Trainer._train_step
    monkeypatch.setattr(
        trainer_module, "build_fold", lambda cfg, *args, **kw: (built.append(cfg), real_build(cfg, *args, **kw))[1]
    )
    limit = {"images": 8}

    def step(self, model, optimizer, x, labels, *, class_weights):
        if len(x) > limit["images"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, model, optimizer, x, labels, class_weights=class_weights)

    monkeypatch.setattr(Trainer, "_train_step", step)

    class Restarts(TrainingObserver):
        def __init__(self) -> None:
            self.seen: list[tuple[int, str]] = []

        def on_fold_restart(self, fold: int, reason: str) -> None:
            self.seen.append((fold, reason))

    config = TrainConfig(**{**BASE.to_dict(), "batch_size": 32, "epochs": 1})
    splits = stratified_folds(data.labels, 2, seed=0)
    observer = Restarts()
    result = cross_validate(config, FoldData(store, data.labels, splits, 3), CPU, observer=observer)
    assert [f.batch_size for f in result.folds] == [8, 8]
    assert [(c.batch_size, c.lr) for c in built] == [(32, 0.01), (16, 0.005), (8, 0.0025), (8, 0.0025)]
    assert observer.seen == [
        (0, "out of memory at batch 32: again with batch 16"),
        (0, "out of memory at batch 16: again with batch 8"),
    ]
    limit["images"] = MIN_BATCH - 1  # not even the floor fits: the trial fails with the error
    with pytest.raises(torch.OutOfMemoryError):
        cross_validate(config, FoldData(store, data.labels, splits, 3), CPU)


def test_the_image_store_goes_to_a_gpu_only_within_its_share_of_free_memory() -> None:
    from autocls.runtime.devicememory import DEVICE_STORE_SHARE, images_fit_on_device

    gib = 2**30
    store = 50_000 * 3 * 224 * 224  # 50,000 images at 224 px: 7.5 GB
    assert images_fit_on_device(store, 80 * gib) and not images_fit_on_device(store, 12 * gib)
    assert images_fit_on_device(int(DEVICE_STORE_SHARE * gib), gib)
    images = ImageStore(torch.zeros((4, 3, 8, 8), dtype=torch.uint8))
    assert images.on(8, CPU) is images.at(8)  # on CPU the store is used where it is, never copied


@pytest.mark.parametrize("staged", [False, True])
def test_batch_feeder_hands_out_the_rows_in_order_one_batch_ahead(staged: bool, monkeypatch) -> None:
    from autocls.train.feeding import BatchFeeder

    images = torch.arange(11 * 3 * 2 * 2, dtype=torch.float32).view(11, 3, 2, 2)
    order = torch.tensor([4, 0, 9, 10, 2, 7, 1])
    feeder = BatchFeeder(images, CPU, batch=3, staged=staged)
    events: list[str] = []
    load = feeder._load
    monkeypatch.setattr(feeder, "_load", lambda rows, slot: events.append(f"load {rows.tolist()}") or load(rows, slot))
    held = []
    for batch in feeder(order):
        events.append(f"use {len(batch)}")
        held.append(batch)
    assert [b.shape[0] for b in held] == [3, 3, 1]
    for batch, rows in zip(held, order.split(3), strict=True):  # held batches survive the buffers' reuse
        torch.testing.assert_close(batch, images[rows])
    # batch k+1 is loaded (and on a GPU its copy queued) before batch k is handed out
    assert events == ["load [4, 0, 9]", "load [10, 2, 7]", "use 3", "load [1]", "use 3", "use 1"]
    assert (len(feeder.buffers), feeder.stream) == ((2, None) if staged else (0, None))  # no CUDA: nothing pinned


def test_a_store_on_the_gpu_is_not_staged_when_the_device_is_named_without_an_index(monkeypatch) -> None:
    """A store placed on the GPU reports ``cuda:0`` while ``--device cuda`` gives ``cuda``; the
    feeder took them for two devices and staged every batch through host buffers, which failed
    (index_select of a GPU tensor into a host buffer) in every GPU trial."""
    import types

    from autocls.runtime.devicememory import same_device
    from autocls.train.feeding import BatchFeeder

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cuda, cuda0, cuda1 = torch.device("cuda"), torch.device("cuda", 0), torch.device("cuda", 1)
    assert same_device(cuda0, cuda) and same_device(cuda, cuda0) and same_device(cuda1, cuda1)
    assert not same_device(cuda1, cuda) and not same_device(CPU, cuda) and same_device(CPU, CPU)
    on_gpu = types.SimpleNamespace(device=cuda0, shape=(6, 3, 8, 8), dtype=torch.uint8)  # no CUDA here
    feeder = BatchFeeder(on_gpu, cuda, batch=3)
    assert (feeder.staged, feeder.buffers, feeder.stream) == (False, [], None)
    assert BatchFeeder(torch.zeros(6, 3, 8, 8, dtype=torch.uint8), CPU, batch=3).staged is False


def test_a_staged_image_store_trains_the_same_model(prepared, monkeypatch) -> None:
    """A store left in host memory (a GPU whose memory it does not fit) goes through the feeder's
    buffers and copies; on CPU that path runs too and must train exactly the same model."""
    import functools

    import autocls.train.trainer as trainer_module
    from autocls.train.feeding import BatchFeeder

    data, store = prepared
    train_idx, val_idx = stratified_folds(data.labels, 2, seed=0)[0]
    config = TrainConfig(**{**BASE.to_dict(), "augmentation": "light", "epochs": 2})
    labels = torch.as_tensor(data.labels)
    direct = Trainer(config, 3, CPU).fit(store, labels, train_idx, val_idx)
    monkeypatch.setattr(trainer_module, "BatchFeeder", functools.partial(BatchFeeder, staged=True))
    staged = Trainer(config, 3, CPU).fit(store, labels, train_idx, val_idx)
    np.testing.assert_array_equal(direct.val_probs, staged.val_probs)
    assert [r.train_loss for r in direct.history] == [r.train_loss for r in staged.history]


def test_batches_and_models_are_channels_last_on_cpu_too() -> None:
    """oneDNN's CPU convolutions run faster on channels-last (bench/memory_format.py: x1.9 for
    EfficientNet-Lite0 training at 64 px): the trainer, prediction and the cost model all lay out so."""
    from autocls.train.backbones import create_classifier
    from autocls.train.config import TrainConfig
    from autocls.train.feeding import Preprocess, model_norm, model_to_device

    cpu = torch.device("cpu")
    model = model_to_device(create_classifier(TrainConfig("test_efficientnet", pretrained=False), 3), cpu)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = Preprocess(*model_norm(model, cpu), cpu)(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert model(x).shape == (2, 3)


def test_the_declared_timm_floor_has_the_mixup_keyword_the_trainer_passes() -> None:
    """On a GPU machine with timm 1.0.29 every trial failed (``Mixup`` has no ``multi_label``
    before 1.0.31) while pyproject allowed ``timm>=1.0.9``: the floor is the release that added it."""
    import inspect
    import tomllib

    import timm.data
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    timm_requirement = next(r for r in map(Requirement, pyproject["project"]["dependencies"]) if r.name == "timm")
    assert not timm_requirement.specifier.contains("1.0.30"), timm_requirement
    assert "multi_label" in inspect.signature(timm.data.Mixup).parameters
    assert "multi_label" in inspect.signature(timm.data.mixup.mixup_target).parameters


def test_frozen_features_of_a_cached_store_live_in_an_unlinked_file(prepared, image_folder: Path, tmp_path) -> None:
    """Beside the decode cache the feature maps go to a memory-mapped file (memory does not grow
    with the images), which leaves nothing on disk, and the trained model is the one without it."""
    from tests.test_imagecache import mapped_file

    config, _store, labels, splits, plain = _fit_uncached(prepared, freeze=0.5)
    cache = tmp_path / "cache"
    _, store = build_store(discover(image_folder), 16, cache)
    before = sorted(p.name for p in cache.iterdir())
    cached = Trainer(config, 3, CPU).fit(store, labels, *splits[0])
    np.testing.assert_allclose(cached.val_probs, plain.val_probs, **SAME_MODEL)
    (features,) = store._features.values()
    assert mapped_file(features).endswith("(deleted)") and ".features." in mapped_file(features)
    assert sorted(p.name for p in cache.iterdir()) == before


def test_a_fold_never_gathers_more_images_than_a_batch(prepared) -> None:
    """Validation and the early-stopping monitor take their images a batch at a time: gathering the
    whole validation fold at once copied a fifth of a memory-mapped store into memory."""
    import dataclasses

    data, store = prepared
    gathered: list[int] = []

    class Recording(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func in (torch.Tensor.__getitem__, torch.index_select) and isinstance(args[1], torch.Tensor):
                gathered.append(len(args[1]))
            return super().__torch_function__(func, types, args, kwargs or {})

    images = store.at(16).as_subclass(Recording)
    observed = ImageStore(images)
    config = dataclasses.replace(BASE, scheduler="plateau", patience=1, epochs=2, batch_size=4)
    splits = stratified_folds(data.labels, 3, seed=0)
    Trainer(config, 3, CPU, eval_batch=4).fit(observed, torch.as_tensor(data.labels), *splits[0])
    assert gathered and max(gathered) <= 4
