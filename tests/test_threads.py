"""The thread count: the CPUs this process may use, less those other programs keep busy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from autocls.runtime import threads
from autocls.runtime.threads import CpuShare, available_cpus, configure_threads


@pytest.fixture(autouse=True)
def _keep_thread_count() -> Iterator[None]:
    before = torch.get_num_threads()
    blas = _blas_pools()
    yield
    torch.set_num_threads(before)
    threadpool_limits(limits=blas)


def _blas_pools() -> list[dict]:
    """This process's BLAS pools as threadpoolctl describes them (numpy's and scipy's OpenBLAS here)."""
    import numpy  # noqa: F401  # the libraries must be loaded to be seen, as they are in a search worker
    import scipy.linalg  # noqa: F401

    return [pool for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.mark.parametrize(
    ("cpu_max", "expected"), [("max 100000\n", None), ("100000 100000\n", 1), ("150000 100000", 1)]
)
def test_thread_count_respects_a_cgroup_cpu_quota(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path / "cpu.max") == (affinity if expected is None else min(affinity, expected))
    assert available_cpus(tmp_path / "missing") == affinity


class FakeMachine:
    """A /proc/stat of four CPUs, a clock and this process's CPU time, all moved by the test."""

    def __init__(self, path: Path) -> None:
        self.path, self.now, self.own = path, 0.0, 0.0
        self.busy = [0, 0, 0, 0]  # ticks per CPU
        self.write()

    def write(self) -> None:
        lines = [f"cpu  {sum(self.busy)} 0 0 0 0 0 0 0 0 0"]
        # user nice system idle iowait irq softirq steal guest guest_nice: busy time split over three fields
        lines += [f"cpu{i} {b - 2 * (b // 4)} 0 {b // 4} 999 7 {b // 4} 0 5 0 0" for i, b in enumerate(self.busy)]
        self.path.write_text("\n".join([*lines, "intr 1 2 3", "ctxt 4"]) + "\n")

    def run(self, seconds: float, busy_cores: dict[int, float], own_cpu: float) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        self.now += seconds
        self.own += own_cpu
        for cpu, share in busy_cores.items():
            self.busy[cpu] += round(share * seconds * tick)
        self.write()

    def share(self, usable: int = 2, cpus: frozenset[int] = frozenset({0, 1})) -> CpuShare:
        return CpuShare(
            usable, set(cpus), stat_path=self.path, clock=lambda: self.now, own_cpu_seconds=lambda: self.own
        )


@pytest.mark.parametrize(
    ("others", "expected"), [(0.0, 4), (0.4, 4), (0.6, 3), (1.0, 3), (2.2, 2), (3.9, 1), (10.0, 1)]
)
def test_each_cpu_other_programs_keep_busy_is_one_thread_fewer(others: float, expected: int) -> None:
    assert CpuShare(4, {0, 1, 2, 3}, stat_path=Path("/missing")).threads_for(others) == expected


def test_threads_follow_the_load_of_other_programs_on_our_cpus(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path / "stat")
    share = machine.share()
    assert share.enabled
    torch.set_num_threads(2)
    # we ran on both CPUs for 10 s while another program took 1.3 of them; CPUs 2 and 3 are not ours
    machine.run(10, {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, own_cpu=7.0)
    assert share.adjust() == 1
    machine.run(10, {0: 1.0, 1: 0.05}, own_cpu=10.0)  # the other program has stopped
    assert share.adjust() == 2
    machine.run(10, {2: 1.0, 3: 1.0}, own_cpu=0.0)  # busy elsewhere only
    assert share.adjust() == 2


def test_a_short_window_changes_nothing_and_is_measured_with_the_next(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path / "stat")
    share = machine.share()
    torch.set_num_threads(2)
    machine.run(0.5, {0: 1.0, 1: 1.0}, own_cpu=0.0)
    assert share.adjust() == 2  # half a second: too short to act on
    machine.run(0.6, {0: 1.0, 1: 1.0}, own_cpu=0.0)
    assert share.adjust() == 1  # 1.1 s in all, two CPUs busy with another program


@pytest.mark.parametrize(("usable", "cpus"), [(1, {0}), (2, {0, 1, 2, 3})])
def test_no_adjustment_for_one_cpu_or_under_a_quota(tmp_path: Path, usable: int, cpus: set[int]) -> None:
    machine = FakeMachine(tmp_path / "stat")
    share = machine.share(usable, frozenset(cpus))
    assert not share.enabled
    torch.set_num_threads(usable)
    machine.run(10, {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, own_cpu=0.0)
    assert share.adjust() == usable


def test_no_adjustment_without_proc_stat(tmp_path: Path) -> None:
    assert not CpuShare(2, {0, 1}, stat_path=tmp_path / "missing").enabled


def test_a_fixed_thread_count_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOCLS_THREADS", "1")
    configure_threads()
    assert torch.get_num_threads() == 1 and threads._SHARE is None
    threads.adjust_threads()
    assert torch.get_num_threads() == 1


def test_the_api_gives_back_the_callers_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOCLS_THREADS", raising=False)
    torch.set_num_threads(1)
    with threads.autocls_threads():
        assert 1 <= torch.get_num_threads() <= available_cpus()
    assert torch.get_num_threads() == 1 and threads._SHARE is None


def test_a_workers_blas_pools_are_capped_at_its_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``--workers`` child gets ``AUTOCLS_THREADS`` (its share of the cores); numpy's and scipy's
    BLAS pools, which would each start a thread per core, get the same count as torch."""
    from autocls.study.workers import worker_envs

    threadpool_limits(limits=3, user_api="blas")  # a pool larger than the worker's share, as on a big machine
    assert {pool["num_threads"] for pool in _blas_pools()} == {3}
    env = worker_envs(workers=4, cores=8, gpus=0, base={})[0]
    monkeypatch.setenv("AUTOCLS_THREADS", env["AUTOCLS_THREADS"])
    configure_threads()
    pools = _blas_pools()
    assert len(pools) >= 2 and {pool["num_threads"] for pool in pools} == {2} == {torch.get_num_threads()}


def test_the_api_gives_back_the_callers_blas_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOCLS_THREADS", "1")
    threadpool_limits(limits=3, user_api="blas")
    with threads.autocls_threads():
        assert {pool["num_threads"] for pool in _blas_pools()} == {1}
    assert {pool["num_threads"] for pool in _blas_pools()} == {3}
