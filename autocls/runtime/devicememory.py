"""A GPU's memory as autocls manages it: the out-of-memory retry at half the batch, free memory, and
where a decoded image store is placed.

Training, evaluation, the frozen-feature cache and the speed probe all size their work by a batch;
when the device runs out of memory the work starts over at half that batch, down to
:data:`MIN_BATCH`, and only then fails (:func:`retry_halving`). Between two attempts the failed
attempt's memory is handed back, which works only once Python has let go of it: see
:func:`retry_halving`. CPU runs never see :class:`torch.OutOfMemoryError`; the tests inject one.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

import torch

MIN_BATCH = 8  # an out-of-memory retry halves the batch down to this (BatchNorm wants a few images)

T = TypeVar("T")


def retry_halving(
    attempt: Callable[[int], T],
    batch: int,
    device: torch.device,
    on_retry: Callable[[int, int], None] | None = None,
    *,
    floor: int | None = None,
) -> tuple[T, int]:
    """``attempt(batch)``; on running out of device memory, ``on_retry(batch, smaller)`` and again
    with half the batch, down to ``floor`` (:data:`MIN_BATCH` by default). Returns the result and the batch that fitted.

    The memory is released after the ``except`` block, not in it: inside the handler the exception's
    traceback still holds the failed attempt's frames, and with them its model, optimizer state and
    activations, so ``empty_cache()`` there found nothing to return and the retry ran out of memory
    again beside the dead attempt. Leaving the handler drops the traceback (only a GPU shows the
    bytes coming back; the tests check that the attempt's model is gone when the release runs).
    """
    floor = MIN_BATCH if floor is None else floor
    while True:
        try:
            return attempt(batch), batch
        except torch.OutOfMemoryError:
            smaller = batch // 2
            if smaller < floor:
                raise
        release_device_memory(device)
        if on_retry is not None:
            on_retry(batch, smaller)
        batch = smaller


def release_device_memory(device: torch.device) -> None:
    """Return a finished or failed attempt's cached blocks to the GPU (nothing to do on CPU).

    Call it where nothing refers to that attempt's tensors any more (see :func:`retry_halving`):
    the garbage collector frees what only reference cycles still hold, then PyTorch's allocator
    hands its now unused cached blocks back to the driver."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def free_device_memory(device: torch.device) -> int:
    """Bytes of ``device``'s memory that a new tensor can take: what the driver reports free plus
    what PyTorch holds cached but unused (reserved less allocated). ``mem_get_info`` alone counts
    the caching allocator's blocks as used, so after a first trial the free figure depended on what
    earlier trials had left in the cache, and later resolutions stayed in host memory."""
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(0, cached))


# A fold's decoded uint8 images live on the GPU when they take at most this share of its free
# memory (the rest is the model's, its activations' and the optimizer's): batches are then gathered
# on the device, with no copy from the host per step. Larger stores stay in host memory.
DEVICE_STORE_SHARE = 0.5


def images_fit_on_device(nbytes: int, device_free: int) -> bool:
    return nbytes <= DEVICE_STORE_SHARE * device_free


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` name one device. ``torch.device("cuda")`` (what ``--device cuda``
    and ``auto`` give) has no index while a tensor's device always has one, so ``cuda:0 != cuda``
    even where GPU 0 is the current one: compare the indices as CUDA resolves them."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def place_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The uint8 store where batches are taken from fastest for ``device``; on CPU, as it is."""
    if device.type == "cuda" and images_fit_on_device(images.nbytes, free_device_memory(device)):
        return images.to(device)
    return images
