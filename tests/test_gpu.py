"""The GPU-only lines' logic, on a CPU: faked device capabilities and memory figures, injected
out-of-memory errors, workers' environments. What only a GPU can show (speeds, bytes coming back,
bit-for-bit repeat runs) is said where the code is; docs/gpu.md lists what has never run on one."""

from __future__ import annotations

import gc
import os
import subprocess
import types
import warnings
import weakref
from pathlib import Path

import pytest
import torch

from autocls.data.discover import DataSpec, discover
from autocls.data.images import ImageStore, build_store
from autocls.runtime.errors import AutoclsError, NonFiniteLossError
from autocls.study.setup import SearchRequest
from autocls.train.config import TrainConfig
from autocls.train.cv import fit_fold, stratified_folds
from autocls.train.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
GIB = 2**30
BASE = TrainConfig(backbone="test_efficientnet", pretrained=False, resolution=16, batch_size=32, epochs=1, lr=0.01)


@pytest.fixture
def prepared(image_folder: Path):
    return build_store(discover(image_folder), 16)


# -- 1. one worker per GPU ------------------------------------------------------------------------
def test_a_worker_given_one_gpu_trains_on_cuda_and_an_explicit_index_is_mapped_or_refused(image_folder: Path) -> None:
    from autocls.study.workers import DEVICE_ENV, REQUEST_ENV, worker_envs, worker_request

    def request_env(device: str, **extra: str) -> dict[str, str]:
        return {REQUEST_ENV: SearchRequest(DataSpec.of(image_folder), device=device).to_json(), **extra}

    # cuda:1 with --workers: every worker sees GPU 1 alone, where it is cuda (cuda:1 was an invalid ordinal)
    envs = worker_envs(3, cores=6, gpus=2, base=request_env("cuda:1"), device="cuda:1")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["1", "1", "1"]
    assert {worker_request(e).device for e in envs} == {"cuda"}
    # cuda:0 is the user's choice too (it was dropped for a round robin), in CUDA_VISIBLE_DEVICES' numbering
    chosen = worker_envs(2, cores=2, gpus=2, base=request_env("cuda:0", CUDA_VISIBLE_DEVICES="3,5"), device="cuda:0")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in chosen] == ["3", "3"]
    # auto or cuda with several GPUs: one each; with one GPU: that one, as cuda
    spread = worker_envs(2, cores=2, gpus=2, base=request_env("auto"), device="auto")
    assert [(e["CUDA_VISIBLE_DEVICES"], e[DEVICE_ENV]) for e in spread] == [("0", "cuda"), ("1", "cuda")]
    single = worker_envs(2, cores=2, gpus=1, base=request_env("cuda:0"), device="cuda:0")
    assert [worker_request(e).device for e in single] == ["cuda", "cuda"]
    cpu = worker_envs(2, cores=2, gpus=2, base=request_env("cpu"), device="cpu")
    assert all("CUDA_VISIBLE_DEVICES" not in e and worker_request(e).device == "cpu" for e in cpu)
    with pytest.raises(
        AutoclsError, match=r"must name one of the 2 GPUs torch sees \(cuda:0 to cuda:1\)\. Got 'cuda:2'"
    ):
        worker_envs(2, cores=2, gpus=2, base={}, device="cuda:2")


def test_a_gpu_index_torch_does_not_see_is_one_line(monkeypatch) -> None:
    from autocls.runtime.control import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(AutoclsError, match="must name one of the 2 GPUs") as err:
        resolve_device("cuda:2")
    assert "\n" not in str(err.value)
    with pytest.raises(AutoclsError, match="must be auto, cpu, cuda or cuda:N"):
        resolve_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AutoclsError, match="asks for cuda:0, but torch sees no CUDA GPU"):
        resolve_device("cuda:0")


# -- 2. precision from the device's capability ----------------------------------------------------
@pytest.mark.parametrize(
    ("capability", "dtype"),
    [
        ((7, 5), torch.float16),
        ((7, 0), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
        ((6, 1), None),
    ],
)
def test_training_precision_follows_the_gpus_tensor_cores_not_bf16_emulation(monkeypatch, capability, dtype) -> None:
    """A T4 (7.5) says yes to is_bf16_supported() (it can create a bf16 tensor) but has fp16 tensor
    cores only: it trains in fp16 (with a gradient scaler), never in emulated bf16."""
    from autocls.train.feeding import autocast, training_dtype

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert training_dtype(CUDA) == (dtype or torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available, disabling autocast": no GPU here
        assert autocast(CUDA, training=True).fast_dtype == (dtype or torch.float32)
        assert autocast(CUDA).fast_dtype == torch.float32  # evaluation: fp32 on every GPU
    assert training_dtype(CPU) == torch.float32 and not autocast(CPU, training=True)._enabled


def test_training_evaluation_and_both_probes_take_their_precision_from_one_place(prepared, monkeypatch) -> None:
    import autocls.study.trainingtime as cost_module
    import autocls.train.trainer as trainer_module
    from autocls.train import feeding as preprocess

    seen: list[tuple[str, bool]] = []
    real_autocast = preprocess.autocast

    def spy(module):
        def autocast(device, *, training=False):
            seen.append((module, training))
            return real_autocast(device, training=training)

        return autocast

    monkeypatch.setattr(cost_module, "autocast", spy("cost"))
    monkeypatch.setattr(trainer_module, "autocast", spy("trainer"))
    monkeypatch.setattr(preprocess, "autocast", spy("trainer"))  # evaluation: feeding.predict_in_batches
    monkeypatch.setattr(cost_module, "PROBE_SECONDS", 0.0)
    monkeypatch.setattr(cost_module, "LATENCY_SECONDS", 0.0)
    cost = cost_module.TrainingTimeModel(CPU)
    cost.images_per_second(BASE)
    cost.latency_ms(BASE)
    assert set(seen) == {("cost", True), ("cost", False)}  # the speed probe trains, the latency probe predicts
    seen.clear()
    data, store = prepared
    train_idx, val_idx = stratified_folds(data.labels, 2, seed=0)[0]
    config = TrainConfig(**{**BASE.to_dict(), "batch_size": 8})
    Trainer(config, 3, CPU).fit(store, torch.as_tensor(data.labels), train_idx, val_idx)
    assert set(seen) == {("trainer", True), ("trainer", False)}


# -- 4. the speed probe's out-of-memory retry -----------------------------------------------------
def test_a_speed_probe_that_runs_out_of_memory_measures_at_the_batch_training_would_take(monkeypatch) -> None:
    """Training would halve its batch and fit; the probe, outside that retry, failed the trial."""
    import autocls.study.trainingtime as cost_module

    real_create, batches = cost_module.create_classifier, []

    def create(config, classes):
        model = real_create(config, classes)

        def device_of_8_images(module, args):
            if module.training:
                batches.append(len(args[0]))
                if len(args[0]) > 8:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        model.register_forward_pre_hook(device_of_8_images)
        return model

    monkeypatch.setattr(cost_module, "create_classifier", create)
    monkeypatch.setattr(cost_module, "PROBE_SECONDS", 0.0)
    cost = cost_module.TrainingTimeModel(CPU)
    assert cost.images_per_second(BASE) > 0  # the probe's batch is 32 on a CPU too
    assert sorted(set(batches), reverse=True) == [32, 16, 8] and batches[-1] == 8
    config = TrainConfig(**{**BASE.to_dict(), "resolution": 24})
    monkeypatch.setattr("autocls.runtime.devicememory.MIN_BATCH", 16)  # not even the floor fits: the error stands
    with pytest.raises(torch.OutOfMemoryError):
        cost_module.TrainingTimeModel(CPU)._measure(config)


# -- 5. the fold's out-of-memory retry ------------------------------------------------------------
def test_the_retry_releases_the_failed_attempt_and_shrinks_evaluation_and_the_store_with_the_batch(
    prepared, monkeypatch
) -> None:
    """``release_device_memory`` ran inside the ``except`` block, whose traceback still held the
    failed attempt's model: nothing could be released. Evaluation (batch 256), the frozen-feature
    cache and the store placed on the device kept their size on every retry, so an out-of-memory
    error there came back each time."""
    from autocls.runtime import devicememory
    from autocls.train import trainer as trainer_module

    data, store = prepared
    models: list[weakref.ref] = []
    real_build = trainer_module.build_fold

    def build(*args, **kwargs):
        parts = real_build(*args, **kwargs)
        models.append(weakref.ref(parts.model))
        return parts

    released: list[list[bool]] = []

    def release(device):  # what the real one does first, then what it could free
        gc.collect()
        released.append([ref() is None for ref in models])

    real_step, real_evaluate = Trainer._train_step, Trainer.evaluate

    def step(self, model, optimizer, x, labels, *, class_weights):  # a device that trains batch 16 (12 images here)
        if self.config.batch_size > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, model, optimizer, x, labels, class_weights=class_weights)

    def evaluate(self, *args, **kwargs):  # ... and evaluates 64
        if self.eval_batch > 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real_evaluate(self, *args, **kwargs)

    placed: list[bool] = []
    real_on = ImageStore.on
    monkeypatch.setattr(
        ImageStore,
        "on",
        lambda self, size, device, place=True: placed.append(place) or real_on(self, size, device, place),
    )
    monkeypatch.setattr(trainer_module, "build_fold", build)
    monkeypatch.setattr(devicememory, "release_device_memory", release)
    monkeypatch.setattr(Trainer, "_train_step", step)
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    from autocls.train.callbacks import TrainingObserver

    train_idx, val_idx = stratified_folds(data.labels, 2, seed=0)[0]
    labels = torch.as_tensor(data.labels)
    result, trainer = fit_fold(
        Trainer(BASE, 3, CPU), store, labels, train_idx=train_idx, val_idx=val_idx, fold=0, observer=TrainingObserver()
    )
    # 32 (train OOM) -> 16 with eval 128 (eval OOM) -> 8 with eval 64: fits
    assert (trainer.config.batch_size, trainer.eval_batch, trainer.place_store) == (8, 64, False)
    assert result.batch_size == 8 and placed == [True, False, False]
    assert released == [[True], [True, True]]  # each failed attempt's model was gone when memory was released


def test_a_store_not_to_be_placed_drops_its_device_copy() -> None:
    store = ImageStore(torch.zeros((4, 3, 8, 8), dtype=torch.uint8))
    store._placed[(8, "cuda")] = torch.ones(1)  # a copy on the GPU, as a first attempt left it
    assert store.on(8, CUDA, place=False) is store.at(8) and not store._placed


# -- 6. free memory -------------------------------------------------------------------------------
def test_the_store_placement_counts_pytorchs_cached_blocks_as_free(monkeypatch) -> None:
    """After a first trial PyTorch keeps its blocks cached: mem_get_info calls them used."""
    from autocls.runtime.devicememory import free_device_memory, place_images

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 20 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * GIB)
    assert free_device_memory(CUDA) == 22 * GIB
    store = types.SimpleNamespace(nbytes=8 * GIB, to=lambda device: "on the GPU")  # no CUDA here
    assert place_images(store, CUDA) == "on the GPU"  # 8 GiB within half of 22, not of 4
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * GIB)
    assert place_images(store, CUDA) is store


# -- 3. measurements keyed by the GPU's model ------------------------------------------------------
def test_gpu_speeds_are_keyed_by_the_gpus_model_not_by_cpu_threads(tmp_path: Path, monkeypatch) -> None:
    from autocls.study.trainingtime import TrainingTimeModel

    measured: list[str] = []
    gpu = {"name": "Tesla T4"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu["name"])
    monkeypatch.setattr(TrainingTimeModel, "_measure", lambda self, config: measured.append(gpu["name"]) or 100.0)
    cache = tmp_path / "speeds.json"
    TrainingTimeModel(CUDA, cache).images_per_second(BASE)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # a --workers child has fewer threads than its parent: no matter
        TrainingTimeModel(CUDA, cache).images_per_second(BASE)
    finally:
        torch.set_num_threads(threads)
    gpu["name"] = "NVIDIA A100-SXM4-80GB"  # the workdir moved to another GPU model: measured again
    TrainingTimeModel(CUDA, cache).images_per_second(BASE)
    assert measured == ["Tesla T4", "NVIDIA A100-SXM4-80GB"]
    assert any("cuda/Tesla T4/" in key for key in TrainingTimeModel(CUDA, cache).speeds)


def test_the_workers_parent_leaves_the_study_set_up_and_the_gpu_to_a_child(
    image_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    """The set-up probes speeds on the device; done in the parent, its CUDA context held GPU 0's
    memory through the whole search. A child with worker 0's environment does it instead."""
    from autocls.study import workers

    def set_up_here(*args, **kwargs):
        raise AssertionError("the parent set the study up itself")

    calls = []
    monkeypatch.setattr(workers, "create_or_continue", set_up_here)
    monkeypatch.setattr(workers, "TrainingTimeModel", set_up_here)
    monkeypatch.setattr(
        subprocess, "run", lambda argv, env: calls.append((argv, env)) or types.SimpleNamespace(returncode=2)
    )
    monkeypatch.setattr(subprocess, "Popen", set_up_here)  # a failed set-up starts no worker
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    request = SearchRequest(
        DataSpec.of(image_folder), workdir=tmp_path, storage=f"journal:{tmp_path / 'j'}", device="cuda:1"
    )
    assert workers.run_workers(request, 2) == 2
    [(argv, env)] = calls
    assert workers.SET_UP in argv and env["AUTOCLS_WORKER"] == "0"
    assert (env["CUDA_VISIBLE_DEVICES"], env[workers.DEVICE_ENV]) == ("1", "cuda")


# -- 8. smaller -----------------------------------------------------------------------------------
def test_step_losses_are_read_in_groups_and_a_non_finite_one_names_its_step() -> None:
    from autocls.train.trainer import LOSS_READ_STEPS, StepLosses

    losses = StepLosses(epoch=0, lr=0.1)
    values = [float(torch.tensor(i / 3)) for i in range(LOSS_READ_STEPS + 3)]  # float32, as a loss is
    for value in values:
        losses.add(torch.tensor(value))
    assert len(losses.pending) == 3  # read once, after LOSS_READ_STEPS steps
    assert losses.total() == sum(values, 0.0)
    losses = StepLosses(epoch=1, lr=0.1)
    for value in [1.0, 2.0, float("nan"), 3.0]:
        losses.add(torch.tensor(value))
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2, step 3"):
        losses.total()


def test_determinism_is_asked_for_through_the_environment(monkeypatch) -> None:
    from autocls.runtime.control import DETERMINISTIC_ENV, ask_for_determinism, seed_everything

    monkeypatch.delenv(DETERMINISTIC_ENV, raising=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seed_everything(0)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    try:
        ask_for_determinism()
        seed_everything(0)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # before cuBLAS starts: set by the CLI
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        os.environ.pop(DETERMINISTIC_ENV, None)
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
