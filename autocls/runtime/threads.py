"""How many threads torch may use: the CPUs this process may run on, less those other programs keep busy.

The BLAS libraries loaded beside torch (the OpenBLAS or MKL of numpy and scipy, which scikit-learn
calls) keep thread pools of their own, one thread per core by default: :func:`configure_threads`
caps them at the same count with threadpoolctl, so ``--workers`` processes do not each start a
pool as large as the machine.

Oversubscribed cores are far worse than idle ones. OpenMP threads spin and wait for each other at
every parallel region, so a thread that shares its core with another program holds up all the
others: one fold that took 5.8 s alone with 2 threads on 2 cores took 29.2 s beside a busy loop on
each core, and 14.5 s with 1 thread (``bench/contention.py``). :class:`CpuShare` measures the CPU
time other programs take on our cores from ``/proc/stat`` and leaves them those cores.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from threadpoolctl import threadpool_info, threadpool_limits

THREADS_VARIABLE = "AUTOCLS_THREADS"
PROBE_SECONDS = 0.2  # the first look at the load, before a search starts: short, and long enough for 20 ticks
MIN_WINDOW_SECONDS = 1.0  # a shorter window between two looks is too noisy to act on


def available_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2 CPU quota (a
    container limited to 2 CPUs on a 64-core host still sees 64 in ``os.cpu_count()``)."""
    cpus = len(_affinity()) or os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity mask is the limit
    return cpus


def _affinity() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()


class CpuShare:
    """Keeps torch's intra-op thread count at the CPUs that other programs leave free.

    Between two calls of :meth:`adjust`, the busy time of our CPUs (``/proc/stat``) less this
    process's own CPU time is what other programs took; each whole CPU they took (rounded) is one
    thread fewer, never fewer than one, and the threads come back when the other programs stop.

    The share is measured only where it means something: the process is pinned to its CPUs by its
    affinity mask. Under a cgroup quota the CPUs are shared with the whole host, whose load says
    nothing about ours, and the quota alone sets the count (as it does where ``/proc/stat`` is
    missing).
    """

    def __init__(
        self,
        usable: int,
        cpus: set[int],
        *,
        stat_path: Path = Path("/proc/stat"),
        clock: Callable[[], float] = time.monotonic,
        own_cpu_seconds: Callable[[], float] = lambda: sum(os.times()[:2]),
    ) -> None:
        self.usable = usable
        self.cpus = cpus
        self.stat_path = stat_path
        self.clock = clock
        self.own_cpu_seconds = own_cpu_seconds
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.enabled = usable > 1 and len(cpus) == usable and self._busy_seconds() is not None
        self.last = self._sample() if self.enabled else None

    def _busy_seconds(self) -> float | None:
        """Seconds our CPUs spent on any program (user, nice, system, irq, softirq) since boot."""
        try:
            lines = self.stat_path.read_text().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.cpus:
                user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
                busy += user + nice + system + irq + softirq
        return busy / self.tick

    def _sample(self) -> tuple[float, float, float]:
        return self.clock(), self._busy_seconds() or 0.0, self.own_cpu_seconds()

    def others(self, min_window: float = MIN_WINDOW_SECONDS) -> float | None:
        """CPUs other programs kept busy since the last look, or ``None`` when the window is shorter
        than ``min_window`` (the last look then stays the start of the next window)."""
        if self.last is None:
            return None
        now = self._sample()
        wall = now[0] - self.last[0]
        if wall <= 0 or wall < min_window:
            return None
        busy, own = now[1] - self.last[1], now[2] - self.last[2]
        self.last = now
        return max(0.0, (busy - own) / wall)

    def threads_for(self, others: float) -> int:
        return max(1, min(self.usable, self.usable - round(others)))

    def adjust(self, min_window: float = MIN_WINDOW_SECONDS) -> int:
        """Set torch's thread count for the load seen since the last call; returns the count."""
        others = self.others(min_window) if self.enabled else None
        if others is not None:
            threads = self.threads_for(others)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        return torch.get_num_threads()

    def probe(self, seconds: float = PROBE_SECONDS) -> int:
        """A first look at the load, for ``seconds``, before any training (which then re-adjusts)."""
        if self.enabled:
            self.last = self._sample()
            time.sleep(seconds)
            self.adjust(min_window=0.0)
        return torch.get_num_threads()


_SHARE: CpuShare | None = None


def configure_threads() -> None:
    """One intra-op thread per CPU this process may use and no other program keeps busy
    (``$AUTOCLS_THREADS`` fixes the count instead): images are decoded up front, so no loader
    process competes. The BLAS pools loaded by then are capped at the same count (see the module
    docstring); a BLAS library loaded later keeps its own default."""
    global _SHARE
    fixed = os.environ.get(THREADS_VARIABLE)
    if fixed:
        _SHARE = None
        torch.set_num_threads(int(fixed))
        _cap_blas(int(fixed))
        return
    usable = available_cpus()
    torch.set_num_threads(usable)
    _cap_blas(usable)
    _SHARE = CpuShare(usable, _affinity())
    _SHARE.probe()


def _cap_blas(threads: int) -> None:
    """At most ``threads`` threads in each BLAS pool this process has loaded (OpenBLAS, MKL, BLIS).

    The cap is fixed, not moved with the load as torch's count is: BLAS work here is short (scikit-
    learn's metrics, calibration), and each change walks every loaded library.
    """
    threadpool_limits(limits=threads, user_api="blas")


def adjust_threads() -> None:
    """Re-fit the thread count to the load since the last call; the trainer calls it after every epoch."""
    if _SHARE is not None:
        _SHARE.adjust()


@contextlib.contextmanager
def autocls_threads():
    """:func:`configure_threads` for the length of a call, then the caller's thread count and BLAS
    pools again: the Python API must leave the caller's process as it found it."""
    global _SHARE
    before = torch.get_num_threads()
    blas_before = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    configure_threads()
    try:
        yield
    finally:
        _SHARE = None
        torch.set_num_threads(before)
        threadpool_limits(limits=blas_before)  # each pool, by its library's file, back to its own count
