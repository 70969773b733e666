"""Reliability and scale-out: several workers on one study, a killed worker, Ctrl-C, secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from autocls.cli.main import main
from autocls.runtime.errors import AutoclsError
from autocls.storage.rdb import open_storage, redact
from tests.helpers import edit_space

# end-to-end: the CLI, subprocesses, a browser (-m 'not slow' skips them)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_leftover_connections")]

POSTGRES_URL = os.environ.get("AUTOCLS_TEST_POSTGRES_URL")
# a command that restarts that server, its data kept; given a number, it holds the server down that
# many seconds (.ci/run sets "bash scripts/postgres.sh restart")
POSTGRES_RESTART = os.environ.get("AUTOCLS_TEST_POSTGRES_RESTART")


def cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autocls.cli.main", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for(condition, seconds: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``condition`` (a storage query: nothing to wait on); on a timeout, what ``process`` (a
    search) said is in the failure, and a search that has exited fails at once, with its output."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and (process.poll() is not None or time.monotonic() >= deadline):
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"the search exited ({process.returncode}) or stalled; it said:\n{out[-2000:]}\n{err[-4000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def states(storage: str, name: str = "data") -> list[str]:
    try:
        return [t.state.name for t in optuna.load_study(study_name=name, storage=open_storage(storage)).trials]
    except (KeyError, AutoclsError):  # the database or the study is not created yet
        return []


def study_trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of study ``data``; none before the database or the study exists. The storage's
    connections are closed at once: the tests poll every 0.2 s."""
    opened = None
    try:
        opened = open_storage(storage)
        return optuna.load_study(study_name="data", storage=opened).trials
    except (KeyError, AutoclsError):  # the database or the study is not created yet
        return []
    finally:
        if (engine := getattr(opened, "engine", None)) is not None:
            engine.dispose()


def running_has_history(storage: str) -> bool:
    """A trial is running and has finished an epoch: it is inside training."""
    return any(t.state.name == "RUNNING" and t.user_attrs.get("history") for t in study_trials(storage))


def worker_pids(storage: str, running: bool = False) -> set[int]:
    """The processes that have started trials of the study (that run one now, with ``running``)."""
    trials = study_trials(storage)
    if running:
        trials = [t for t in trials if t.state.name == "RUNNING"]
    return {t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}


def run_two_workers(storage: str, image_folder: Path, tiny_space: Path, tmp_path: Path) -> str:
    args = ["search", str(image_folder), "--space", str(tiny_space), "--folds", "2", "--trials", "4"]
    process = cli(*args, "--workers", "2", "--workdir", str(tmp_path / "runs"), "--storage", storage)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    study = optuna.load_study(study_name="data", storage=open_storage(storage))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    numbers = [t.number for t in study.trials]
    assert len(finished) >= 4 and len(numbers) == len(set(numbers))  # none lost, none duplicated
    assert all(t.state.name != "RUNNING" for t in study.trials)
    return out + err


def test_two_workers_share_a_journal_file(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    run_two_workers(f"journal:{tmp_path / 'autocls.journal'}", image_folder, tiny_space, tmp_path)


@pytest.mark.skipif(not POSTGRES_URL, reason="needs AUTOCLS_TEST_POSTGRES_URL (scripts/postgres.sh starts one)")
def test_two_workers_share_a_postgres_study_and_the_password_stays_hidden(
    image_folder: Path, tiny_space: Path, tmp_path: Path
) -> None:
    storage = POSTGRES_URL
    if "data" in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
        optuna.delete_study(study_name="data", storage=storage)
    output = run_two_workers(storage, image_folder, tiny_space, tmp_path)
    password = storage.split(":")[2].split("@")[0]
    assert password not in output
    study = optuna.load_study(study_name="data", storage=storage)
    assert password not in repr(study.user_attrs) + repr([t.user_attrs for t in study.trials])
    assert password not in redact(storage) and "***" in redact(storage)


@pytest.mark.skipif(
    not (POSTGRES_URL and POSTGRES_RESTART),
    reason="needs AUTOCLS_TEST_POSTGRES_URL and AUTOCLS_TEST_POSTGRES_RESTART, a command that restarts that "
    "server (.ci/run sets both: AUTOCLS_TEST_POSTGRES_RESTART='bash scripts/postgres.sh restart')",
)
def test_two_workers_wait_out_a_postgres_restart_and_lose_nothing(
    image_folder: Path, tiny_space: Path, tmp_path: Path
) -> None:
    """PostgreSQL restarted, and held down 5 s, while two workers train: each waits the database out
    (heartbeats every second, so both meet the outage), no trial is failed for it, the trials
    running at the restart complete, and the study reaches its target."""
    storage = storage_url("postgres", tmp_path)
    # trials of seconds, not a fraction of one: neither worker is done with the study before the restart
    edit_space(tiny_space, {"epochs = 2\n": "epochs = 20\n", "patience = 2\n": "patience = 20\n"})
    args = ["search", str(image_folder), "--space", str(tiny_space), "--folds", "2", "--trials", "6", "--workers", "2"]
    args += ["--workdir", str(tmp_path / "runs"), "--storage", storage]
    process = cli(*args, env={"AUTOCLS_HEARTBEAT": "1"})
    # both workers inside a trial (past opening the storage: one that cannot open it stops at once,
    # a wrong URL being likelier then than an outage), one of them training
    wait_for(lambda: len(worker_pids(storage, running=True)) == 2 and running_has_history(storage), process=process)
    running = [n for n, state in enumerate(states(storage)) if state == "RUNNING"]
    subprocess.run(f"{POSTGRES_RESTART} 5", shell=True, check=True, timeout=120)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0 and "autocls: error" not in err, err[-3000:]  # no worker gave up or failed
    said = " ".join(err.split())  # rich wraps log lines at the terminal's width
    lost, back = said.count("unreachable ("), said.count("reachable again")
    assert lost >= 2 and back == lost, err[-3000:]  # both workers met the outage, and saw the database back
    trials = optuna.load_study(study_name="data", storage=open_storage(storage)).trials
    by_number = {t.number: t for t in trials}
    assert [t.number for t in trials if t.state.name not in ("COMPLETE", "PRUNED")] == []  # none FAIL, none RUNNING
    assert all(by_number[n].state.name in ("COMPLETE", "PRUNED") for n in running)  # the interrupted ones finished
    assert len(trials) >= 6 and len(by_number) == len(trials)  # the target reached (a pruned trial is finished)


def test_sqlite_refuses_several_workers(image_folder: Path, tiny_space: Path, tmp_path: Path, capsys) -> None:
    code = main(["search", str(image_folder), "--space", str(tiny_space), "--workers", "2", "--workdir", str(tmp_path)])
    assert code == 2
    assert "journal:" in capsys.readouterr().err


def storage_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'runs' / 'autocls.db'}"
    if kind == "journal":
        return f"journal:{tmp_path / 'runs' / 'autocls.journal'}"
    if "data" in [s.study_name for s in optuna.get_all_study_summaries(POSTGRES_URL)]:
        optuna.delete_study(study_name="data", storage=POSTGRES_URL)
    return POSTGRES_URL


STORAGE_KINDS = [
    "sqlite",
    "journal",
    pytest.param("postgres", marks=pytest.mark.skipif(not POSTGRES_URL, reason="needs AUTOCLS_TEST_POSTGRES_URL")),
]


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_killed_searchs_trial_is_recovered_at_once_by_the_next_run(
    kind: str, image_folder: Path, tiny_space: Path, tmp_path: Path
) -> None:
    """SIGKILL during a trial, re-run at once: the dead process's trial is failed and run again, with
    no wait for a heartbeat's grace period (journal storage has no heartbeat at all)."""
    storage = storage_url(kind, tmp_path)
    # trial 0 trains 2 epochs a fold, trial 1 would train 400: it is killed while it runs
    edit_space(tiny_space, {"epochs = 2\n": "", "patience = 2\n": "patience = 400\n"})
    tiny_space.write_text(tiny_space.read_text() + "\n[params.epochs]\nchoices = [2, 400]\n")
    (tmp_path / "runs").mkdir()
    study = optuna.create_study(study_name="data", storage=open_storage(storage), direction="maximize")
    study.enqueue_trial({"epochs": 2})
    study.enqueue_trial({"epochs": 400})
    args = ["search", str(image_folder), "--space", str(tiny_space), "--folds", "2", "--storage", storage]
    args += ["--workdir", str(tmp_path / "runs")]
    assert main([*args, "--trials", "1", "--quiet"]) == 0
    doomed = cli(*args, "--trials", "2")
    wait_for(lambda: running_has_history(storage))
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    assert states(storage) == ["COMPLETE", "RUNNING"]  # the finished trial is safe
    assert main([*args, "--trials", "2", "--timeout", "20", "--quiet"]) == 0  # trial 0 is complete: a best trial
    study = optuna.load_study(study_name="data", storage=open_storage(storage))
    trials = study.trials
    assert [t.state.name for t in trials][:2] == ["COMPLETE", "FAIL"]  # the dead process's trial was failed...
    assert "died" in trials[1].user_attrs["fail_reason"]
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and retried[0].params == trials[1].params  # ...and its configuration run again
    assert "RUNNING" not in [t.state.name for t in trials]


def _save_then_retain(root: str, storage: str, rounds: int, lost: Any) -> None:
    """One worker: save each new trial's fold models, clean up as every worker does, complete it."""
    import numpy as np
    import torch

    from autocls.storage.trials import TrialStore
    from autocls.train.cv import CVResult
    from autocls.train.history import FoldResult

    store = TrialStore.in_folder(root, keep=1, grace_seconds=0)  # no grace: only the running-trial rule protects
    study = optuna.load_study(study_name="race", storage=open_storage(storage))
    for _ in range(rounds):
        trial = study.ask()
        fold = FoldResult(0, [], 0, np.arange(2), np.ones((2, 2), np.float32), 0, {"w": torch.ones(2)})
        store.save(trial, CVResult([fold], np.zeros(2, np.int64), 2))
        store.retain_best(study)
        if not store.has(trial.number):
            lost.put(trial.number)  # another worker deleted the models of a trial still running
        study.tell(trial, float(trial.number % 7))
        store.retain_best(study)


def test_four_workers_cleaning_up_never_delete_a_running_trials_models(tmp_path: Path) -> None:
    import multiprocessing

    storage = f"journal:{tmp_path / 'race.journal'}"
    optuna.create_study(study_name="race", storage=open_storage(storage), direction="maximize")
    context = multiprocessing.get_context("fork")
    lost = context.Queue()
    workers = [
        context.Process(target=_save_then_retain, args=(str(tmp_path / "trials"), storage, 6, lost)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    lost_numbers = []
    while not lost.empty():
        lost_numbers.append(lost.get())
    assert lost_numbers == []
    study = optuna.load_study(study_name="race", storage=open_storage(storage))
    assert len(study.trials) == 24
    kept = sorted(p.name for p in (tmp_path / "trials").iterdir())
    assert kept == [str(study.best_trial.number)]  # and the cleanup still did its job


def _measure_and_save(cache: str, key: str) -> None:
    from autocls.study.trainingtime import TrainingTimeModel

    for i in range(30):
        model = TrainingTimeModel(torch_cpu(), Path(cache))
        model.speeds[f"{key}/{i}"] = float(i)
        model._save()


def torch_cpu():
    import torch

    return torch.device("cpu")


def test_workers_writing_the_speed_cache_at_once_leave_a_whole_file(tmp_path: Path) -> None:
    import json
    import multiprocessing

    cache = tmp_path / "cache" / "speeds.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_measure_and_save, args=(str(cache), f"w{i}")) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    speeds = json.loads(cache.read_text())  # whole JSON, never two writers' bytes in one file
    assert len(speeds) == 4 * 30  # every worker's every measurement kept
    assert sorted(p.name for p in cache.parent.iterdir()) == ["speeds.json", "speeds.json.lock"]  # no partial file


def test_ctrl_c_leaves_no_running_trial(image_folder: Path, tiny_space: Path, tmp_path: Path) -> None:
    edit_space(tiny_space, {"epochs = 2": "epochs = 400", "patience = 2": "patience = 400"})
    storage = f"sqlite:///{tmp_path / 'runs' / 'autocls.db'}"
    args = [
        "search",
        str(image_folder),
        "--space",
        str(tiny_space),
        "--folds",
        "2",
        "--workdir",
        str(tmp_path / "runs"),
    ]
    # a terminal's Ctrl-C: SIGINT handled by default even where the test runner's shell ignores it
    process = cli(*args, "--trials", "2", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: running_has_history(storage))
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "run the same command to continue" in err
    assert states(storage) == ["FAIL", "WAITING"]  # the interrupted configuration is queued for the next run
    trials = optuna.load_study(study_name="data", storage=storage).trials
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted")
    assert trials[1].system_attrs["fixed_params"] == trials[0].params and trials[1].user_attrs["retry_of"] == 0


def _open_and_create(url: str) -> None:
    storage = open_storage(url)
    optuna.create_study(study_name="first", storage=storage, load_if_exists=True)


def test_first_runs_started_at_once_on_a_new_sqlite_database_all_start(tmp_path: Path) -> None:
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'autocls.db'}"
    context = multiprocessing.get_context("fork")
    starts = [context.Process(target=_open_and_create, args=(url,)) for _ in range(5)]
    for process in starts:
        process.start()
    for process in starts:
        process.join(timeout=120)
    assert [p.exitcode for p in starts] == [0] * 5
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["first"]
