"""``--workers``: a set-up child, then one search process per worker on a shared study.

Each child is ``python -m autocls.study.workers``; its index, device and share of the cores come in
its environment (:func:`worker_envs`) and are passed to the driver as arguments.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import replace

import optuna
import torch
from optuna.trial import TrialState

from autocls.runtime.control import resolve_device, stop_on_ctrl_c
from autocls.runtime.errors import AutoclsError, run_guarded
from autocls.runtime.logs import setup_logging
from autocls.runtime.threads import available_cpus, configure_threads
from autocls.storage.artifacts import study_artifacts
from autocls.storage.rdb import allows_several_processes, open_storage
from autocls.storage.trials import study_trial_store
from autocls.storage.workdir import Workdir
from autocls.study.driver import run_search
from autocls.study.progress import Reporter
from autocls.study.recovery import recover_dead_local_trials
from autocls.study.setup import SearchRequest, create_or_continue
from autocls.study.studydata import PreparedData, check_same_data, record_data
from autocls.study.trainingtime import TrainingTimeModel

REQUEST_ENV = "AUTOCLS_SEARCH_REQUEST"  # a --workers child's settings: the parent's SearchRequest as JSON
DEVICE_ENV = "AUTOCLS_DEVICE"  # the device a --workers child trains on, as the parent assigned it
SET_UP = "--set-up"  # the child that creates (or continues) the study before the workers start
WORKER_ENV = "AUTOCLS_WORKER"  # a --workers child's index, which seeds its sampler; 0 probes the portfolio


def run_workers(request: SearchRequest, workers: int, quiet: bool = False) -> int:
    """Set the study up, then run ``workers`` search processes on it and wait for them all.

    Each child gets the parent's whole :class:`SearchRequest` (as JSON in its environment, which
    also keeps a storage URL's password out of ``ps``), so no setting can be forgotten on the way,
    and its own device (:func:`worker_envs`).

    The set-up runs in a child too, with the first worker's environment: it measures training speeds
    (to size the warm start to ``--timeout``) and latencies (``--max-latency-ms``) on the device, and
    a CUDA context, once created, lives as long as its process: this one would have held GPU 0's
    memory while waiting out the whole search. This process never touches a GPU; the set-up measures
    on a worker's GPU with a worker's share of the cores, so the workers reuse what it measured.
    """
    workdir = Workdir(request.workdir)
    url = request.storage or workdir.storage_url()
    if not allows_several_processes(url):
        raise AutoclsError(
            f"--workers {workers} needs a storage several processes can share, not SQLite: "
            f"--storage journal:{workdir.journal} (this machine) or postgresql://... (any machine)."
        )
    resolve_device(request.device)  # a device that is not there is one line here, before any process starts
    name = request.study_name or request.data.name
    child = replace(request, study_name=name, storage=url)
    base = {**os.environ, REQUEST_ENV: child.to_json()}
    # counts the GPUs without creating a CUDA context
    gpus = torch.cuda.device_count() if request.device != "cpu" and torch.cuda.is_available() else 0
    envs = worker_envs(workers, cores=available_cpus(), gpus=gpus, base=base, device=request.device)
    set_up = [sys.executable, "-m", "autocls.study.workers", SET_UP, *(["--quiet"] if quiet else [])]
    code = subprocess.run(set_up, env=envs[0]).returncode
    if code != 0:
        return code  # the set-up child has said why, in one line
    children = [subprocess.Popen([sys.executable, "-m", "autocls.study.workers"], env=env) for env in envs]
    codes = [c.wait() for c in children]
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    Reporter(quiet=quiet).best_trials_table(study, study.metric_names[0] if study.metric_names else "score")
    failed = [c for c in codes if c not in (0, 1)]
    if failed:
        print(f"autocls: {len(failed)} of {workers} workers exited with errors ({failed}).", file=sys.stderr)
    return 0 if not failed else 1


def worker_envs(
    workers: int, *, cores: int, gpus: int, base: dict[str, str], device: str = "auto"
) -> list[dict[str, str]]:
    """Each worker's environment: its share of the cores, its sampler seed, and its device.

    A worker given one GPU sees only that one (``CUDA_VISIBLE_DEVICES``), where it is ``cuda``
    (:data:`DEVICE_ENV`); the ``cuda:K`` of the parent's numbering would be an invalid ordinal
    there. ``auto`` or ``cuda`` with several GPUs: one GPU per worker, round robin over
    ``CUDA_VISIBLE_DEVICES`` when set, so each trial has a GPU to itself. ``cuda:K``: every worker
    on the K-th visible GPU, the one the user chose. One GPU, or ``cpu``: every worker on it.
    """
    visible = base.get("CUDA_VISIBLE_DEVICES")
    # CUDA stops at the first entry it cannot use, and torch counts the GPUs before it
    gpu_ids = ([g.strip() for g in visible.split(",")] if visible else [str(g) for g in range(gpus)])[:gpus]
    chosen = int(device[5:]) if device.startswith("cuda:") and gpus else None
    if chosen is not None and chosen >= len(gpu_ids):
        raise AutoclsError(
            f"The 'device' setting must name one of the {gpus} GPUs torch sees (cuda:0 to cuda:{gpus - 1}). "
            f"Got {device!r}."
        )
    envs = []
    for i in range(workers):
        # each worker seeds its sampler differently, or all would propose the same first trials
        env = {**base, "AUTOCLS_THREADS": str(max(1, cores // workers)), WORKER_ENV: str(i)}
        env[DEVICE_ENV] = "cuda" if gpus and device != "cpu" else device
        if chosen is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu_ids[chosen]
        elif gpus > 1 and device != "cpu":
            env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i % len(gpu_ids)]
        envs.append(env)
    return envs


def worker_request(environ: Mapping[str, str]) -> SearchRequest:
    """A ``--workers`` child's request: the parent's, on the device the parent assigned it."""
    request = SearchRequest.from_json(environ[REQUEST_ENV])
    return replace(request, device=environ.get(DEVICE_ENV, request.device))


def set_up_study(request: SearchRequest) -> None:
    """Create or continue the study (measuring on this process's device), check that the data is
    the study's, and recover this host's dead trials: once, before the workers start, which would
    race for the same trials."""
    workdir = Workdir(request.workdir)
    timing = TrainingTimeModel(resolve_device(request.device), workdir.speeds)
    study, setup = create_or_continue(open_storage(request.storage), request.study_name, request, timing=timing)
    # the store and the number of kept trials recorded once, here, before the workers read them
    artifacts = study_artifacts(study, request.artifacts, workdir, record=True)
    study_trial_store(study, artifacts, workdir, keep=request.keep_trials, record=True)
    # decoded here, once, into the cache the workers then map; a changed dataset is one line here,
    # not one per worker
    discovered = request.data.discover()
    data = PreparedData.load(setup, setup.search_space.max_resolution, workdir.cache, discovered, source=request.data)
    index_file = workdir.data_index(study.study_name)
    check_same_data(study, discovered, data, index_file)
    record_data(study, data, index_file)
    recover_dead_local_trials(study)


def worker_main() -> int:
    """A ``--workers`` child: the parent's request, searched quietly (or, with ``--set-up``, the
    study set up); exit codes as ``autocls search``."""
    set_up = SET_UP in sys.argv[1:]
    setup_logging(quiet=not set_up or "--quiet" in sys.argv[1:])

    def search() -> int:
        request = worker_request(os.environ)
        configure_threads()
        if set_up:
            set_up_study(request)
            return 0
        with stop_on_ctrl_c():
            study = run_search(
                request, resolve_device(request.device), Reporter(quiet=True), worker=int(os.environ[WORKER_ENV])
            )
        return 0 if any(t.state == TrialState.COMPLETE for t in study.trials) else 1

    return run_guarded(search)


if __name__ == "__main__":
    sys.exit(worker_main())
