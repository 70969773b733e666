"""Atomic file writes: a reader (or another worker) sees the old file or the new one, never a part.

Every file autocls writes where another process may read or write it at the same time (the decoded
image cache, the speed cache, a study's file index) goes through :func:`write_atomically`: the
content is written to a uniquely named temporary file beside the target, flushed, then renamed over
it. The unique name matters: workers that shared one temporary name wrote into each other's file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writes stay atomic, concurrent merges may lose one
    fcntl = None


def write_atomically(path: Path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` (bytes, or a function that writes to a binary file) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an advisory lock on ``path``'s lock file (``path.lock``) for a read-modify-write that
    several processes may do at once, so none of their updates is lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
