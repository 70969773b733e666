"""The storage's retries on a lost database connection, with injected faults (no server needed).

The real thing, PostgreSQL restarted under a two-worker search, is in tests/test_workers.py.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState
from sqlalchemy import exc as sqlalchemy_exc

from autocls.runtime.errors import StorageUnavailableError
from autocls.storage.rdb import (
    CLAIM_ATTR,
    ConnectionRetry,
    RetryingRDBStorage,
    is_connection_error,
    optuna_experimental_allowed,
)


def connection_error(what: str) -> sqlalchemy_exc.OperationalError:
    return sqlalchemy_exc.OperationalError("SELECT 1", {}, ConnectionError(what), connection_invalidated=True)


class Clock:
    """A clock that the retries' sleeps move on: no test waits for a backoff."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Faults:
    """Stands in for a storage's session factory: the next ``refuse`` sessions fail to connect
    (the server is down), and the next ``lose`` commits go through but lose the connection before
    the answer comes back (the server went down mid-commit)."""

    def __init__(self, storage: RDBStorage) -> None:
        self.real = storage.scoped_session
        storage.scoped_session = self
        self.refuse = self.lose = 0

    def __call__(self) -> Any:
        if self.refuse > 0:
            self.refuse -= 1
            raise connection_error('connection to server at "127.0.0.1" failed: Connection refused')
        session = self.real()
        if self.lose > 0:
            self.lose -= 1
            commit = session.commit

            def commit_then_lose() -> None:
                del session.commit  # once: the session is the thread's, used again by the next call
                commit()
                raise connection_error("server closed the connection unexpectedly")

            session.commit = commit_then_lose
        return session

    def remove(self) -> None:
        self.real.remove()


def retrying_storage(tmp_path: Path, seconds: float = 300, **kwargs: Any) -> tuple[RetryingRDBStorage, Faults, Clock]:
    with optuna_experimental_allowed():
        storage = RetryingRDBStorage(f"sqlite:///{tmp_path / 'study.db'}", **kwargs)
    clock = Clock()
    storage.retry = ConnectionRetry("postgresql://me:***@db/autocls", seconds, clock=clock, sleep=clock.sleep)
    return storage, Faults(storage), clock


def test_a_call_that_cannot_connect_is_tried_again_with_one_warning_each_way(tmp_path: Path, caplog) -> None:
    storage, faults, clock = retrying_storage(tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    faults.refuse = 6
    with caplog.at_level(logging.WARNING, logger="autocls.storage.rdb"):
        assert [s.study_name for s in storage.get_all_studies()] == ["s"]
    assert len(clock.sleeps) == 6 and max(clock.sleeps) <= 5.0  # backoff, capped
    messages = [r.getMessage() for r in caplog.records if r.name == "autocls.storage.rdb"]
    assert len(messages) == 2, messages
    assert "unreachable" in messages[0] and "Connection refused" in messages[0] and "300 s" in messages[0]
    assert "reachable again" in messages[1]
    assert study.trials == []


def test_past_the_bound_one_line_says_what_happened_and_what_to_do(tmp_path: Path) -> None:
    storage, faults, clock = retrying_storage(tmp_path, seconds=30)
    optuna.create_study(storage=storage, study_name="s")
    faults.refuse = 10**6
    with pytest.raises(StorageUnavailableError) as raised:
        storage.get_all_studies()
    message = str(raised.value)
    assert "\n" not in message and "postgresql://me:***@db/autocls" in message
    assert "unreachable for 30 s" in message and "run the same command" in message
    assert "AUTOCLS_STORAGE_RETRY" in message
    assert 30 <= clock.now < 36
    assert not isinstance(raised.value, Exception)  # Optuna's catch=(Exception,) must not swallow it
    sleeps = len(clock.sleeps)
    with pytest.raises(StorageUnavailableError):
        storage.get_trial(0)  # the worker is stopping: no second wait
    assert len(clock.sleeps) == sleeps


def test_an_error_of_the_call_itself_is_not_retried(tmp_path: Path) -> None:
    storage, _faults, clock = retrying_storage(tmp_path)
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("no such study")
    assert clock.sleeps == []
    assert not is_connection_error(sqlalchemy_exc.IntegrityError("INSERT", {}, ValueError("duplicate")))
    internal = optuna.exceptions.StorageInternalError("commit failed")
    internal.__cause__ = connection_error("terminating connection due to administrator command")
    assert is_connection_error(internal)  # how Optuna wraps the driver's error


def test_retries_can_be_turned_off(tmp_path: Path) -> None:
    storage, faults, clock = retrying_storage(tmp_path, seconds=0)
    faults.refuse = 1
    with pytest.raises(sqlalchemy_exc.OperationalError):
        storage.get_all_studies()
    assert clock.sleeps == []


def test_a_new_trial_whose_commit_answer_was_lost_is_created_once(tmp_path: Path) -> None:
    storage, faults, _clock = retrying_storage(tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    faults.lose = 1
    trial = study.ask()  # Optuna's own retry would commit a second trial and leave the first RUNNING
    study.enqueue_trial({"x": 1.0})
    faults.lose = 1
    study.enqueue_trial({"x": 2.0})
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "RUNNING"), (1, "WAITING"), (2, "WAITING")]
    assert trial.number == 0 and trials[2].system_attrs["fixed_params"] == {"x": 2.0}
    assert len({t.system_attrs[CLAIM_ATTR] for t in trials}) == 3


def test_a_queued_trial_taken_by_a_lost_commit_is_run_by_the_worker_that_took_it(tmp_path: Path) -> None:
    storage, faults, _clock = retrying_storage(tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 1.0})
    waiting = study.trials[0]._trial_id
    faults.lose = 1  # what ``ask`` does with a queued trial: WAITING to RUNNING commits, the answer is lost
    assert storage.set_trial_state_values(waiting, TrialState.RUNNING)  # not "another worker took it"
    assert storage.set_trial_state_values(waiting, TrialState.RUNNING) is False  # which another call still hears
    assert [t.state.name for t in study.trials] == ["RUNNING"]


def test_finishing_a_trial_whose_commit_answer_was_lost_succeeds(tmp_path: Path) -> None:
    storage, faults, _clock = retrying_storage(tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    faults.lose = 1  # the retry meets an already finished trial, with the same state and value
    assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.5)]
    other = study.ask()
    study.tell(other, 0.7)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # a real second finish is still refused
        storage.set_trial_state_values(other._trial_id, TrialState.COMPLETE, [0.9])


def test_an_outage_during_a_trial_does_not_fail_it(tmp_path: Path) -> None:
    storage, faults, _clock = retrying_storage(tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")

    def objective(trial: optuna.Trial) -> float:
        faults.refuse, faults.lose = 3, 1  # the database restarts while the trial trains
        trial.report(0.1, 0)
        trial.set_user_attr("epochs", 1)
        return 0.5

    study.optimize(objective, n_trials=2, catch=(Exception,))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[0].intermediate_values == {0: 0.1} and study.trials[0].user_attrs == {"epochs": 1}


def test_a_worker_that_gives_up_leaves_its_trial_running_for_recovery_not_failed(tmp_path: Path) -> None:
    storage, faults, _clock = retrying_storage(tmp_path, seconds=30)
    study = optuna.create_study(storage=storage, study_name="s")

    def objective(trial: optuna.Trial) -> float:
        faults.refuse = 10**6  # the database is gone for good
        trial.report(0.1, 0)
        return 0.5

    with pytest.raises(StorageUnavailableError):
        study.optimize(objective, n_trials=1, catch=(Exception,))
    faults.refuse = 0
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["RUNNING"]  # the next run on this host queues it again


def test_a_heartbeat_the_database_missed_never_stops_the_heartbeat_thread(tmp_path: Path) -> None:
    storage, faults, clock = retrying_storage(tmp_path, seconds=30, heartbeat_interval=60)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    faults.refuse = 2
    storage.record_heartbeat(trial._trial_id)  # waited out
    assert len(clock.sleeps) == 2
    faults.refuse = 10**6
    storage.record_heartbeat(trial._trial_id)  # past the bound: no exception into Optuna's thread
    faults.refuse = 0
    with pytest.raises(StorageUnavailableError):  # the trial's own next call stops the worker
        trial.report(0.1, 0)


def test_every_storage_call_is_retried_and_the_storage_still_pickles(tmp_path: Path) -> None:
    storage, _faults, _clock = retrying_storage(tmp_path)
    calls = BaseStorage.__abstractmethods__ | {"record_heartbeat", "_get_stale_trial_ids"}
    plain = {name for name in calls if getattr(RetryingRDBStorage, name) is getattr(RDBStorage, name)}
    assert plain == set()  # a call Optuna adds must be added to the retried ones
    copied = pickle.loads(pickle.dumps(storage))
    assert copied.retry.seconds == 300 and copied.get_all_studies() == []


def test_the_password_never_reaches_the_warnings_or_the_error(caplog) -> None:
    clock = Clock()
    retry = ConnectionRetry("postgresql://me:***@db/autocls", 10, password="hunter2", clock=clock, sleep=clock.sleep)

    def attempt(_retried: bool) -> None:
        raise connection_error("password hunter2 was refused")  # a driver that quotes too much

    with (
        caplog.at_level(logging.WARNING, logger="autocls.storage.rdb"),
        pytest.raises(StorageUnavailableError) as raised,
    ):
        retry.call(attempt)
    assert "hunter2" not in str(raised.value) + caplog.text and "password *** was refused" in str(raised.value)


def test_the_run_folder_keeps_every_file_where_earlier_versions_put_it(tmp_path: Path) -> None:
    """Run folders written before :class:`Workdir` existed must still be found: the layout is fixed."""
    from autocls.storage.workdir import Workdir

    workdir = Workdir(str(tmp_path / "runs"))  # a str, as the API may pass it
    root = tmp_path / "runs"
    assert workdir.database == root / "autocls.db" and workdir.journal == root / "autocls.journal"
    assert (workdir.cache, workdir.speeds) == (root / "cache", root / "cache" / "speeds.json")
    assert workdir.artifacts == root / "artifacts"
    assert workdir.data_index("s") == root / "s" / "files.json"
    assert workdir.model("s") == root / "s" / "model" and workdir.legacy_trials("s") == root / "s" / "trials"
    assert workdir.dataframe_csv(None) == root / "dataframe" / "labels.csv"
    assert not root.exists()  # naming a path creates nothing
    assert workdir.storage_url() == f"sqlite:///{(root / 'autocls.db').resolve()}" and root.is_dir()
