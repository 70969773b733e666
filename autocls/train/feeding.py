"""From decoded uint8 pixels to what a model takes: one definition for training, prediction and export.

Images are kept as uint8 ``(N, 3, H, W)`` batches (4x less memory than floats) and turned into
normalised floats on the device, batch by batch, channels-last on every device. On a GPU the
training forward pass runs in the lower precision the GPU has tensor cores for (:func:`training_dtype`:
bf16, else fp16 with a gradient scaler, else fp32); evaluation and prediction run in fp32
everywhere, and so does everything on a CPU (bf16 measured slower there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from autocls.data.multilabel import probabilities
from autocls.runtime.devicememory import same_device


class BatchFeeder:
    """Batches of ``images`` (rows chosen by index) on ``device``, each loaded one batch ahead.

    Where the images already are on ``device`` (a CPU run, or a store that fits in the GPU's
    memory: :func:`place_images`) a batch is a gather there. Where they stay in host memory while
    the model trains elsewhere (*staged*), batch k+1 is gathered into one of two reused host
    buffers and its copy to the device is queued before batch k is handed out, so it travels while
    batch k trains. On a GPU those buffers are page-locked and the copy runs on a side stream: only
    page-locked memory can be copied asynchronously, and only a second stream overlaps the copy
    with the kernels of the current step. Pinning and streams exist only with CUDA, so they are the
    GPU-only switches here; the loading order, the buffer reuse and the copies are the same code on
    any device (``staged=True`` runs them on CPU, as the tests do).
    """

    def __init__(self, images: torch.Tensor, device: torch.device, batch: int, staged: bool | None = None) -> None:
        self.images, self.device, self.batch = images, device, batch
        self.staged = not same_device(images.device, device) if staged is None else staged
        gpu = self.staged and device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if gpu else None
        rows = (batch, *images.shape[1:])
        count = 2 if self.staged else 0  # one being copied while the other is filled
        self.buffers = [torch.empty(rows, dtype=images.dtype, pin_memory=gpu) for _ in range(count)]
        self.copied: list[torch.cuda.Event | None] = [None] * count

    def __call__(self, indices: torch.Tensor) -> Iterator[torch.Tensor]:
        """The rows of ``indices`` in order, ``batch`` at a time (the last batch may be smaller)."""
        chunks = indices.split(self.batch)
        ahead = self._load(chunks[0], 0) if chunks else None
        for i in range(len(chunks)):
            current = ahead
            if i + 1 < len(chunks):
                ahead = self._load(chunks[i + 1], (i + 1) % 2)
            yield self._ready(current, i % 2)

    def _load(self, rows: torch.Tensor, slot: int) -> torch.Tensor:
        if not self.staged:
            return self.images[rows.to(self.images.device)]
        event = self.copied[slot]
        if event is not None:
            event.synchronize()  # the buffer's previous copy has left it
        buffer = self.buffers[slot][: len(rows)]
        torch.index_select(self.images, 0, rows, out=buffer)
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            batch = buffer.to(self.device, non_blocking=True, copy=True)
            if self.stream is not None:
                self.copied[slot] = self.stream.record_event()
        return batch

    def _ready(self, batch: torch.Tensor, slot: int) -> torch.Tensor:
        """``batch``, safe to use on the current stream: the current stream waits for its copy only
        (the event of its slot; waiting for the whole side stream would wait for the next batch's
        copy too, and nothing would overlap), and the side stream's allocator does not reuse its
        memory while the current stream needs it."""
        event = self.copied[slot] if self.stream is not None else None
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            batch.record_stream(current)
        return batch


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any device) to floats normalised with ``(1, 3, 1, 1)`` ``mean``/``std`` (0-1 scale)."""
    return (images.float() / 255.0 - mean) / std


def norm_tensors(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(values, device=device).view(1, 3, 1, 1) for values in (mean, std))


def pretrained_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std a timm model was pretrained with (its ``pretrained_cfg``;
    ImageNet's where the configuration names none): what its inputs are normalised with."""
    cfg = model.pretrained_cfg
    return tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(cfg.get("std", IMAGENET_DEFAULT_STD))


def model_norm(model: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pretrained_mean_std` as ``(1, 3, 1, 1)`` tensors on ``device``."""
    return norm_tensors(*pretrained_mean_std(model), device)


class Preprocess:
    """uint8 batch -> normalised float batch on ``device``, channels-last."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> None:
        self.mean, self.std, self.device = mean.to(device), std.to(device), device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = normalise(images.to(self.device, non_blocking=True), self.mean, self.std)
        return to_device_layout(x)

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        """An augmented float batch in [0, 1], already on the device, normalised."""
        return to_device_layout((x - self.mean) / self.std)


# Channels-last (NHWC) for 4-d batches and models on every device: on a GPU for tensor-core
# convolutions; on a CPU because oneDNN's convolutions run faster on it. `python
# bench/memory_format.py` on this 2-core machine (fp32, batch 64, 64 px), training images/s
# default -> channels-last: EfficientNet-Lite0 117 -> 222 (x1.90), Lite1 99 -> 186, Lite2 86 -> 162,
# MobileNetV3 189 -> 252, ResNet-18 154 -> 165; inference x1.08-1.62.
def to_device_layout(x: torch.Tensor) -> torch.Tensor:
    """Channels-last for 4-d batches (see above), as is elsewhere."""
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def model_to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in the channels-last memory format (see above)."""
    return model.to(device, memory_format=torch.channels_last)


def training_dtype(device: torch.device) -> torch.dtype:
    """What a training forward pass on ``device`` computes in: the one choice that training, the
    frozen-feature cache and the speed probe share.

    bf16 where the GPU has bf16 tensor cores (compute capability 8.0 on: A100, H100, RTX 30xx on);
    fp16, with a gradient scaler (:func:`grad_scaler`), on Volta and Turing (7.x: V100, T4, RTX
    20xx), which have fp16 tensor cores only; fp32 on older GPUs and on CPUs. The capability is the
    device's own: ``torch.cuda.is_bf16_supported()`` says yes on a T4 because a bf16 tensor can be
    created there, and its convolutions then run emulated, slower than fp16 (only a GPU shows the
    speeds; the tests fake the capability). ROCm GPUs do bf16."""
    if device.type != "cuda":
        return torch.float32
    if torch.version.hip:
        return torch.bfloat16
    major, _minor = torch.cuda.get_device_capability(device)
    if major >= 8:  # what is_bf16_supported(including_emulation=False) asks, but of `device`, not the current GPU
        return torch.bfloat16
    return torch.float16 if major >= 7 else torch.float32


def autocast(device: torch.device, *, training: bool = False) -> torch.autocast:
    """The precision of a forward pass on ``device``: :func:`training_dtype` for training
    (``training=True``); fp32 for evaluation and prediction on every device.

    Evaluation in fp32 keeps out-of-fold predictions, and the calibration, thresholds and ensemble
    weights fitted on them, the same on a GPU as on a CPU up to float rounding: bf16 logits carry 8
    bits of mantissa (probabilities off by up to ~1e-2). It costs a forward pass at fp32 speed: on
    bf16 GPUs about 1.5-2x the bf16 pass (cuDNN still uses TF32 for fp32 convolutions, PyTorch's
    default), on a T4 several times; evaluation is a forward pass over a fold's validation images
    per epoch, a small part of a trial. On a CPU nothing changes: it was fp32 already."""
    dtype = training_dtype(device) if training else torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled where training runs in fp16 (whose small gradients underflow to 0
    unless the loss is scaled up first); elsewhere it passes the loss and the step through as they are."""
    return torch.amp.GradScaler(device.type, enabled=training_dtype(device) == torch.float16)


@torch.inference_mode()
def predict_in_batches(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    *,
    multilabel: bool,
    batch: int,
    rows: torch.Tensor | None = None,
    views: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Probabilities of ``images``' ``rows`` (all by default), ``batch`` images at a time: softmax
    (one sigmoid per label where ``multilabel``) of every model in ``models`` (already on ``device``,
    in eval mode) on every view of each prepared batch (``views``: the batch and its test-time
    views; the batch alone by default), averaged; on the host. The one batched inference of
    evaluation, refit's test-time views and prediction; fp32 everywhere (see :func:`autocast`).
    ``rows`` must not be empty."""
    rows = torch.arange(len(images)) if rows is None else rows
    out = []
    for chunk in BatchFeeder(images, device, batch)(rows):
        x = prepare(chunk)
        with autocast(device):
            probs = [probabilities(model(v), multilabel) for v in (views(x) if views else [x]) for model in models]
        out.append(torch.stack(probs).mean(0).cpu())
    return torch.cat(out)
