"""The process around training: which device, Ctrl-C as a request to stop, and seeds."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading

import numpy as np
import torch

from autocls.runtime.errors import AutoclsError, SettingError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device; a GPU that torch does not see is one
    line here, not "invalid device ordinal" in every trial. Creates no CUDA context."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise SettingError("device", "auto, cpu, cuda or cuda:N", name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AutoclsError(f"The 'device' setting asks for {name}, but torch sees no CUDA GPU; use cpu or auto.")
    if name.startswith("cuda:") and int(name[5:]) >= (count := torch.cuda.device_count()):
        raise AutoclsError(
            f"The 'device' setting must name one of the {count} GPUs torch sees (cuda:0 to cuda:{count - 1}). "
            f"Got {name!r}."
        )
    return torch.device(name)


STOP_REQUESTED = threading.Event()


@contextlib.contextmanager
def stop_on_ctrl_c():
    """Within the block, Ctrl-C is a request the trainer honours after the current batch; a second
    Ctrl-C interrupts at once. A KeyboardInterrupt raised at an arbitrary point can land in a garbage
    collector callback (SQLAlchemy's), where Python prints and swallows it: the search then went on.

    The request is cleared and the caller's SIGINT handler restored on the way out, so a later search
    in the same process (a notebook, the Python API) does not stop at once.
    """
    STOP_REQUESTED.clear()
    # signal handlers can be set from the main thread only; an ignored (nohup) or custom SIGINT
    # handler is the caller's choice and stays
    ours = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )

    def handler(signum: int, frame: object) -> None:
        if STOP_REQUESTED.is_set():
            raise KeyboardInterrupt
        STOP_REQUESTED.set()

    previous = signal.signal(signal.SIGINT, handler) if ours else None
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)
        STOP_REQUESTED.clear()


def check_stop() -> None:
    if STOP_REQUESTED.is_set():
        raise KeyboardInterrupt


def derive_seed(*entropy: int) -> int:
    """A 32-bit seed for a tuple of integers, e.g. (study seed, trial number) or (trial seed, fold).

    numpy's ``SeedSequence`` hashes the whole tuple, so distinct tuples get unrelated seeds; a sum
    (``seed + trial + fold``) gave trial 1 fold 0 and trial 0 fold 1 the same seed.
    """
    return int(np.random.SeedSequence([int(e) % 2**64 for e in entropy]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (model init, torchvision augmentation), numpy (timm's Mixup) and ``random``, and
    choose deterministic GPU algorithms where asked (:func:`ask_for_determinism`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    apply_determinism()


# On a GPU, cuDNN picks convolution algorithms that may sum in another order each run, and some
# backward kernels add with atomics: a fold trained twice differs in the last bits after the first
# step, and then more. `--deterministic` (search and refit) asks for deterministic algorithms, so
# that `refit --retrain` trains the search's fold models again, on the same GPU model, driver,
# CUDA/cuDNN and torch versions, and the same batch (an out-of-memory retry changes it). A CPU run
# is deterministic already; this changes nothing there. The set-up is inherited through the
# environment, so that --workers children have it too.
DETERMINISTIC_ENV = "AUTOCLS_DETERMINISTIC"


def ask_for_determinism() -> None:
    """Ask for deterministic GPU algorithms in this process and the ones it starts. cuBLAS reads its
    workspace setting when it starts, so call this before anything runs on a GPU."""
    os.environ[DETERMINISTIC_ENV] = "1"
    # cuBLAS's deterministic mode: fixed workspaces (8 of 4 MiB per stream)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def apply_determinism() -> None:
    """Deterministic cuDNN and torch algorithms where :data:`DETERMINISTIC_ENV` is 1; otherwise
    nothing changes. An operation with no deterministic CUDA implementation runs as it is, with
    a warning that names it (``warn_only``): failing every trial for it would be worse. Only a GPU
    shows that two runs agree; nothing here has run on one."""
    if os.environ.get(DETERMINISTIC_ENV) != "1":
        return  # PyTorch's defaults, or what the caller set up itself
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # API users who set only the variable
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False  # autotuning may choose another algorithm each run
    torch.use_deterministic_algorithms(True, warn_only=True)
