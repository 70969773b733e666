"""Which process runs a trial, and recovery of trials whose process died.

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
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from autocls.storage import records

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
