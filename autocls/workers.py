"""Which process runs a trial: ``--workers`` child processes, and recovery of trials whose process died.

Optuna's heartbeat (RDB storages only) fails a stale trial once its grace period has passed, which a
quick re-run on the same machine outlives, and journal storage has no heartbeat at all. So every
trial records the host, process id and process start time of the worker that runs it, and a search
starting on a host fails the RUNNING trials whose process on that host is gone, at once, and
enqueues their parameters again, whatever the storage. Trials of other hosts are left to the
heartbeat, which sees them.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from autocls import records
from autocls.artifactstore import study_artifacts
from autocls.cost import CostModel
from autocls.errors import AutoclsError
from autocls.prepare import DATA_INDEX_FILE, check_same_data
from autocls.progress import Reporter
from autocls.runtime import resolve_device, stop_on_ctrl_c
from autocls.storage import allows_several_processes, default_url, open_storage
from autocls.studysetup import CACHE_DIR, SearchRequest, create_or_continue
from autocls.threads import available_cpus, configure_threads
from autocls.trialstore import study_trial_store

logger = logging.getLogger(__name__)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    return None if fields[0] == "Z" else fields[19]  # state, then field 22 of proc(5): starttime


def this_worker() -> dict[str, Any]:
    """The record of the current process that a running trial carries."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def is_alive(worker: dict[str, Any]) -> bool:
    """Whether the process a trial recorded (on this host) still runs: the pid exists, is not a
    zombie, and where Linux says when it started, it is the same process, not a reused pid."""
    pid = int(worker["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user holds the pid
    started = _process_start(pid)
    if Path("/proc").is_dir() and started is None:
        return False  # a zombie, or gone since the signal
    return worker.get("started") in (None, started)


def queue_again(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> None:
    """Enqueue ``trial``'s parameters as a new trial (marked ``retry_of``), for the next run to train."""
    study.enqueue_trial(trial.params, user_attrs=records.retry_attrs(trial))


def recover_dead_local_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of this host whose process is gone, and enqueue their parameters again.

    Returns the numbers of the trials recovered. Safe against another process doing the same: a trial
    already finished by someone else is left alone and not enqueued twice.
    """
    host = socket.gethostname()
    storage = study._storage
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = records.TrialRecord.read(trial).worker
        if not worker or worker.get("host") != host or is_alive(worker):
            continue
        try:
            # the reason first: a finished trial takes no more attributes
            storage.set_trial_user_attr(
                trial._trial_id,
                records.FAIL_REASON,
                f"its worker (process {worker['pid']} on {host}) died; queued again as a new trial",
            )
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process recovered it first
        queue_again(study, trial)
        recovered.append(trial.number)
    if recovered:
        logger.warning(
            "trials %s were left RUNNING by a process on this host that is gone: marked FAIL and queued again",
            ", ".join(map(str, recovered)),
        )
    return recovered


REQUEST_ENV = "AUTOCLS_SEARCH_REQUEST"  # a --workers child's settings: the parent's SearchRequest as JSON


def run_workers(request: SearchRequest, workers: int, quiet: bool = False) -> int:
    """Create the study here, then run ``workers`` search processes on it and wait for them all.

    Each child gets the parent's whole :class:`SearchRequest` (as JSON in its environment, which
    also keeps a storage URL's password out of ``ps``), so no setting can be forgotten on the way.
    """
    url = request.storage or default_url(request.workdir)
    if not allows_several_processes(url):
        raise AutoclsError(
            f"--workers {workers} needs a storage several processes can share, not SQLite: "
            f"--storage journal:{request.workdir / 'autocls.journal'} (this machine) or postgresql://... (any machine)."
        )
    cost = CostModel(resolve_device(request.device), request.workdir / CACHE_DIR / "speeds.json")
    study, setup = create_or_continue(open_storage(url), request.study_name or request.data.name, request, cost)
    check_same_data(study, setup.data.discover(), request.workdir / study.study_name / DATA_INDEX_FILE)
    recover_dead_local_trials(study)  # once, here: workers started together would race for the same trials
    # the store and the number of kept trials recorded once, here, before the workers read them
    artifacts = study_artifacts(study, request.artifacts, request.workdir, record=True)
    study_trial_store(study, artifacts, request.workdir, keep=request.keep_trials, record=True)
    child = replace(request, study_name=study.study_name, storage=url)
    base = {**os.environ, REQUEST_ENV: child.to_json()}
    gpus = torch.cuda.device_count() if request.device != "cpu" and torch.cuda.is_available() else 0
    envs = worker_envs(workers, available_cpus(), gpus, base)
    children = [subprocess.Popen([sys.executable, "-m", "autocls.workers"], env=env) for env in envs]
    codes = [c.wait() for c in children]
    Reporter(quiet=quiet).best_trials_table(study, study.metric_names[0] if study.metric_names else "score")
    failed = [c for c in codes if c not in (0, 1)]
    if failed:
        print(f"autocls: {len(failed)} of {workers} workers exited with errors ({failed}).", file=sys.stderr)
    return 0 if not failed else 1


def worker_envs(workers: int, cores: int, gpus: int, base: dict[str, str]) -> list[dict[str, str]]:
    """Each worker's environment: its share of the cores, its sampler seed and, with several GPUs,
    one GPU (round robin over ``CUDA_VISIBLE_DEVICES`` when set), so each trial has a GPU to itself."""
    visible = base.get("CUDA_VISIBLE_DEVICES")
    gpu_ids = [g.strip() for g in visible.split(",")] if visible else [str(g) for g in range(gpus)]
    envs = []
    for i in range(workers):
        # each worker seeds its sampler differently, or all would propose the same first trials
        env = {**base, "AUTOCLS_THREADS": str(max(1, cores // workers)), "AUTOCLS_WORKER": str(i)}
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i % len(gpu_ids)]
        envs.append(env)
    return envs


def worker_main() -> int:
    """A ``--workers`` child: the parent's request, searched quietly; exit codes as ``autocls search``."""
    from autocls.cli import run_guarded
    from autocls.progress import setup_logging
    from autocls.study import run_search

    setup_logging(quiet=True)

    def search() -> int:
        request = SearchRequest.from_json(os.environ[REQUEST_ENV])
        configure_threads()
        with stop_on_ctrl_c():
            study = run_search(request, resolve_device(request.device), Reporter(quiet=True))
        return 0 if any(t.state == TrialState.COMPLETE for t in study.trials) else 1

    return run_guarded(search)


if __name__ == "__main__":
    sys.exit(worker_main())
