"""The decoded-image cache: every image decoded once, streamed in chunks into a file that is then
memory-mapped, so memory while decoding does not grow with the number of images.

An entry of ``cache_dir`` is keyed by the data's local fingerprint (paths, sizes, modification
times, labels) and the decode size, and made of three files:

* ``KEY.u8``: the decoded images, ``(K, 3, S, S)`` uint8 in C order, no header, memory-mapped by
  every later run (a restarted search, refit, another worker of this machine);
* ``KEY.json``: its :class:`CacheIndex` (shape, which files decoded, why the others did not, each
  decoded file's content hash), written last: an entry without it is not complete;
* while decoding, ``KEY.u8.part`` and ``KEY.progress.json``: the rows written so far. A decode cut
  short (the time budget, Ctrl-C, a killed process) continues from there on the next run.

Rows are decoded by a pool of worker **processes** that write straight into the file: Pillow holds
the GIL for a good part of each image (mode conversion, the crop, the copy out), so two threads
decode at about 0.8 of twice one thread's rate on two cores, and processes at about 0.95 of it
(``python bench/scale.py``). A lock file serialises processes that decode the same entry: the
second waits and then maps what the first wrote.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from autocls.data.pixels import decode_file
from autocls.runtime.atomic import write_atomically
from autocls.runtime.errors import AutoclsError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two processes decoding one entry then both decode
    fcntl = None

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when decoding or the entry layout changes, so old entries are not reused
CHUNK_IMAGES = 256  # rows a worker decodes per task: the unit of progress kept and of memory held
PROGRESS_SECONDS = 2.0  # how often a running decode records its progress for a later run


class DecodeInterrupted(AutoclsError):
    """The time budget ended during the decode; what was decoded is kept for the next run."""


@dataclass
class CacheIndex:
    """What a cache entry holds: the decoded rows' shape, which of the input files they are (in
    order), why the others were skipped, and each decoded file's content hash."""

    shape: tuple[int, int, int, int]
    kept: list[int]
    failed: list[tuple[int, str]]
    hashes: list[str]
    version: int = CACHE_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def read(cls, path: Path) -> CacheIndex | None:
        """The index at ``path``, or ``None`` where there is none, or one of another version."""
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            if fields.get("version") != CACHE_VERSION:
                return None
            index = cls(**fields)
        except (OSError, ValueError, TypeError):
            return None
        index.shape = tuple(index.shape)
        index.failed = [(int(i), str(reason)) for i, reason in index.failed]
        return index


@dataclass
class _Progress:
    """A decode under way: rows ``0 .. done-1`` of the partial file are written (a failed file's
    row stays empty), with the failures and hashes of those rows."""

    done: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    hashes: dict[int, str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, total: int) -> _Progress:
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            if fields.get("total") != total or fields.get("version") != CACHE_VERSION:
                return cls()
            return cls(
                int(fields["done"]),
                [(int(i), str(r)) for i, r in fields["failed"]],
                {int(i): str(h) for i, h in fields["hashes"].items()},
            )
        except (OSError, ValueError, TypeError, KeyError):
            return cls()

    def write(self, path: Path, total: int) -> None:
        fields = {"version": CACHE_VERSION, "total": total, "done": self.done, "failed": self.failed}
        write_atomically(path, json.dumps({**fields, "hashes": self.hashes}).encode())


@dataclass(frozen=True)
class CacheEntry:
    """The files of one entry (see the module docstring)."""

    directory: Path
    key: str

    @property
    def array(self) -> Path:
        return self.directory / f"{self.key}.u8"

    @property
    def index(self) -> Path:
        return self.directory / f"{self.key}.json"

    @property
    def partial(self) -> Path:
        return self.directory / f"{self.key}.u8.part"

    @property
    def progress(self) -> Path:
        return self.directory / f"{self.key}.progress.json"

    @property
    def lock(self) -> Path:
        return self.directory / f"{self.key}.lock"

    def read(self) -> tuple[np.memmap | np.ndarray, CacheIndex] | None:
        """The entry's images, memory-mapped, and its index; ``None`` while it is not complete."""
        index = CacheIndex.read(self.index)
        if index is None or not self.array.is_file():
            return None
        if math.prod(index.shape) != self.array.stat().st_size:
            return None  # written by a decode that was cut off mid-rename on another file system
        return map_rows(self.array, index.shape), index


def map_rows(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """``path`` as a copy-on-write uint8 map: pages are read from disk when touched (the page cache
    keeps what fits) and nothing is written back. An empty file cannot be mapped: an empty array."""
    if math.prod(shape) == 0:
        return np.zeros(shape, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="c", shape=shape)


@contextlib.contextmanager
def holding(lock_path: Path, deadline: float | None, waiting: Callable[[], None]) -> Iterator[None]:
    """Hold ``lock_path`` exclusively; ``waiting()`` is called once if another process holds it.
    Waiting past ``deadline`` (monotonic) raises :class:`DecodeInterrupted`."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        if fcntl is None:
            yield
            return
        told = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    waiting()
                    told = True
                if deadline is not None and time.monotonic() > deadline:
                    raise DecodeInterrupted(
                        "the time budget ended while another process was decoding the images; run again."
                    ) from None
                time.sleep(0.5)  # another process's decode: minutes, not microseconds
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _decode_rows(partial: str, shape: tuple[int, ...], start: int, paths: list[str]) -> tuple[dict, list]:
    """Worker task: decode ``paths`` into rows ``start ..`` of the partial file.

    Returns ``({row: hash}, [(row, reason)])``. Runs in a worker process, which imports only
    :mod:`autocls.data.pixels` and numpy."""
    size = shape[-1]
    rows = np.memmap(partial, dtype=np.uint8, mode="r+", shape=shape)
    hashes, failed = {}, []
    for offset, path in enumerate(paths):
        decoded = decode_file(path, size)
        if decoded.pixels is None:
            failed.append((start + offset, decoded.error))
            continue
        rows[start + offset] = decoded.pixels.transpose(2, 0, 1)
        hashes[start + offset] = decoded.content
    rows.flush()
    del rows
    return hashes, failed


def worker_count() -> int:
    """Decode processes: one per CPU this process may use (``AUTOCLS_DECODE_WORKERS`` to set)."""
    if "AUTOCLS_DECODE_WORKERS" in os.environ:
        return max(1, int(os.environ["AUTOCLS_DECODE_WORKERS"]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class DecodeClock:
    """When the decode must end and who is told how long it will take."""

    deadline: float | None = None  # monotonic seconds; None: no time budget
    estimate: Callable[[float, int], None] | None = None  # (seconds left to decode, images left), once


def decode_to_cache(
    paths: Sequence[Path], size: int, entry: CacheEntry, clock: DecodeClock | None = None
) -> tuple[np.ndarray, CacheIndex]:
    """The entry for ``paths`` decoded at ``size``: read when complete, else decoded into it (or
    continued from a decode cut short) and then read."""
    clock = clock or DecodeClock()
    found = entry.read()
    if found is not None:
        return found

    def waiting() -> None:
        logger.info("another process is decoding these images into %s; waiting for it", entry.directory)

    with holding(entry.lock, clock.deadline, waiting):
        found = entry.read()  # the process we waited for wrote it
        if found is not None:
            return found
        _decode_under_lock(paths, size, entry, clock)
    found = entry.read()
    assert found is not None, "a finished decode left no readable entry"
    return found


def _decode_under_lock(paths: Sequence[Path], size: int, entry: CacheEntry, clock: DecodeClock) -> None:
    total = len(paths)
    shape = (total, 3, size, size)
    nbytes = math.prod(shape)
    progress = _Progress.read(entry.progress, total) if entry.partial.is_file() else _Progress()
    if progress.done == 0 or entry.partial.stat().st_size != nbytes:
        progress = _Progress()
        allocate(entry.partial, nbytes)
    elif progress.done < total:
        logger.info("continuing the decode of %d images from image %d", total, progress.done)
    if progress.done < total:
        _decode_chunks([str(p) for p in paths], shape, entry, progress=progress, clock=clock)
    _finish(entry, shape, progress)


def _decode_chunks(
    paths: list[str], shape: tuple[int, ...], entry: CacheEntry, *, progress: _Progress, clock: DecodeClock
) -> None:
    """Decode rows ``progress.done ..`` in chunks on a process pool, recording progress as chunks
    finish in order; at the deadline, stop with what is done recorded."""
    total, workers = len(paths), worker_count()
    starts = iter(range(progress.done, total, CHUNK_IMAGES))
    window = 2 * workers  # chunks in flight: every worker busy, and few to wait for at the deadline
    began, first_done, recorded = time.monotonic(), progress.done, time.monotonic()
    queue: deque[tuple[int, Future]] = deque()
    with _main_module_hidden(), _decode_pool(workers) as pool:

        def fill() -> None:
            while len(queue) < window and (start := next(starts, None)) is not None:
                chunk = paths[start : start + CHUNK_IMAGES]
                queue.append((start, _submit(pool, entry.partial, shape, start=start, paths=chunk)))

        try:
            fill()
            while queue:
                start, future = queue.popleft()
                hashes, failed = future.result()
                progress.hashes.update(hashes)
                progress.failed.extend(failed)
                progress.done = min(total, start + CHUNK_IMAGES)
                now = time.monotonic()
                # the first round of chunks (one per worker) gives the rate; the decode time is said once
                if clock.estimate is not None and (progress.done - first_done >= workers * CHUNK_IMAGES or not queue):
                    rate = (progress.done - first_done) / max(now - began, 1e-6)
                    clock.estimate((total - progress.done) / rate, total - progress.done)
                    clock.estimate = None
                if now - recorded > PROGRESS_SECONDS:
                    progress.write(entry.progress, total)
                    recorded = now
                if clock.deadline is not None and now > clock.deadline and progress.done < total:
                    raise DecodeInterrupted(
                        f"the time budget ended while decoding: {progress.done:,} of {total:,} images decoded, "
                        f"kept in {entry.directory} for the next run; run again, or give a longer --timeout."
                    )
                fill()
        except BrokenProcessPool:
            raise AutoclsError(
                f"a decode process died (out of memory, or killed) after {progress.done:,} of {total:,} images; "
                f"they are kept in {entry.directory}: run again to continue (AUTOCLS_DECODE_WORKERS=1 decodes "
                "in one process)."
            ) from None
        finally:
            # the deadline, Ctrl-C or a failure: the chunks finished in order are kept for the next
            # run; chunks in flight are not recorded, and a later run decodes them again
            for _, future in queue:
                future.cancel()
            with contextlib.suppress(OSError):
                if progress.done < total:
                    progress.write(entry.progress, total)


@contextlib.contextmanager
def _decode_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """``workers`` decode processes (none for one: the chunks are decoded here). Spawned, not
    forked: the parent holds torch's thread pools, which a forked child must not inherit. A worker
    that dies makes the pool raise, where :mod:`multiprocessing.pool` would wait for its chunk forever."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _exit_with_parent(parent: int) -> None:
    """Worker start-up: end this worker when the process that started it is gone (killed: a pool's
    workers otherwise wait for work forever, each holding its share of the pipe)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)  # a few idle seconds at most after a kill; nothing to wake us sooner
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While decode processes may start, hide the ``__main__`` module from multiprocessing: a
    spawned child otherwise imports it again (a user's script without a ``__main__`` guard would run
    its search again in each child, and ``python -m autocls.study.workers`` would bring torch into each),
    while the decode's children need only :mod:`autocls.data.pixels`."""
    main = sys.modules["__main__"]
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    try:
        main.__spec__ = None
        if hasattr(main, "__file__"):
            del main.__file__
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def _submit(pool: ProcessPoolExecutor | None, partial: Path, shape: tuple, *, start: int, paths: list[str]) -> Future:
    if pool is not None:
        return pool.submit(_decode_rows, str(partial), shape, start, paths)
    done: Future = Future()  # one CPU: decoded here, no process to start
    done.set_result(_decode_rows(str(partial), shape, start, paths))
    return done


def allocate(path: Path, nbytes: int) -> None:
    """Create ``path`` with ``nbytes`` of disk reserved. A memory-mapped write into a sparse file on
    a full disk kills the process (SIGBUS), with no message; reserved first, a full disk is one line."""
    with open(path, "wb") as f:
        try:
            if nbytes and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), 0, nbytes)
            else:
                f.truncate(nbytes)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: sparse
                    f.truncate(nbytes)
                    return
                raise
            free = shutil.disk_usage(path.parent).free
            path.unlink(missing_ok=True)
            raise AutoclsError(
                f"not enough disk space for the decoded images in {path.parent}: they need {nbytes / 2**30:.1f} GiB, "
                f"{free / 2**30:.1f} GiB are free; free some, or give another --workdir."
            ) from None


def _finish(entry: CacheEntry, shape: tuple[int, ...], progress: _Progress) -> None:
    """Move the decoded rows over the failed ones' (in place, in order), cut the file to the rows
    kept, and publish it: the array renamed into place, then its index."""
    total = shape[0]
    bad = {i for i, _ in progress.failed}
    kept = [i for i in range(total) if i not in bad]
    row = math.prod(shape[1:])
    if bad and kept:
        rows = np.memmap(entry.partial, dtype=np.uint8, mode="r+", shape=shape)
        target = 0
        for run in np.split(np.asarray(kept), np.flatnonzero(np.diff(kept) != 1) + 1):  # runs of kept rows
            source, length = int(run[0]), len(run)
            if target != source:  # target < source: moved in order, each row read before it is overwritten
                for at in range(0, length, CHUNK_IMAGES):
                    n = min(CHUNK_IMAGES, length - at)
                    rows[target + at : target + at + n] = rows[source + at : source + at + n]
            target += length
        rows.flush()
        del rows
    with open(entry.partial, "r+b") as f:
        f.truncate(len(kept) * row)
        f.flush()
        os.fsync(f.fileno())
    os.replace(entry.partial, entry.array)
    index = CacheIndex((len(kept), *shape[1:]), kept, sorted(progress.failed), [progress.hashes[i] for i in kept])
    write_atomically(entry.index, index.to_json())  # written last: the entry is complete
    with contextlib.suppress(OSError):
        entry.progress.unlink()


def resized_entry(base: CacheEntry, size: int) -> CacheEntry:
    """The entry of ``base``'s images resized to ``size`` (see :meth:`autocls.data.images.ImageStore.at`)."""
    return CacheEntry(base.directory, f"{base.key}-{size}")
