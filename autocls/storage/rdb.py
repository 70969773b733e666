"""Study storage: SQLite by default, PostgreSQL or an Optuna journal file for several workers.

* ``sqlite:///path.db`` (the default, ``WORKDIR/autocls.db``): one process at a time.
* ``postgresql://user:password@host/db``: many workers on many machines (``autocls[postgres]``).
* ``journal:PATH`` or a path ending in ``.journal``: Optuna's journal file, several processes on
  one machine without a server.

RDB storages run Optuna's heartbeat: a worker that dies mid-trial (SIGKILL, a pre-empted machine)
leaves a RUNNING trial whose heartbeat stops; after the grace period the next worker fails it and
enqueues its configuration again (``RetryHeartbeatStaleTrialCallback``). Storage URLs are shown
only through :func:`redact`, so a password never reaches output, logs, trial attributes or manifests.

A database server that goes away for a while
--------------------------------------------
A server storage (PostgreSQL, MySQL) is a :class:`RetryingRDBStorage`: a storage call that loses
its connection (a restart, a fail-over, a network cut) is tried again with backoff (0.5 s doubling
to 5 s) for up to :data:`RETRY_SECONDS` (300 s; ``AUTOCLS_STORAGE_RETRY=SECONDS``, 0 for none),
counted from when the worker first saw the database unreachable. It logs one warning when the
database is lost and one when it is back; the training in between goes on, so the running trial
completes as if nothing happened. Past the bound the call raises :class:`StorageUnavailableError`,
one line naming the storage and what to do, and the worker stops: its RUNNING trial is queued
again by the next search on its host at once, or by the other hosts' workers through the
heartbeat. A write whose answer was lost may have been committed, so retried writes are idempotent:

* a new trial (``create_new_trial``, which ``ask`` and ``enqueue_trial`` use) and a queued trial
  taken to run (WAITING to RUNNING) carry a claim, a unique id written in the same transaction
  (system attribute :data:`CLAIM_ATTR`); a retry first looks for its claim, so it neither creates
  a second trial nor leaves the first RUNNING with nobody training it;
* finishing a trial that the lost attempt already finished, with the same state and values, is a
  success, not ``UpdateFinishedTrialError``;
* every other write (attributes, parameters, intermediate values, heartbeats) is an upsert.

During an outage no worker can record its heartbeat, so the grace period on a server is at least
the retry bound plus two heartbeats and the longest backoff (325 s by default): a worker that waited
the database out has recorded its heartbeat again before anybody may take its trial for dead. The
heartbeat thread never dies of a storage error (Optuna's would stop beating, and the trial would be
failed as stale while it trains). The one exception that ends the worker is a ``BaseException``,
like ``KeyboardInterrupt``, so that ``study.optimize(catch=(Exception,))`` and the objective's own
handlers do not record FAIL for a trial whose only fault was the database. Opening a storage is
not retried (a wrong URL or password is one quick error; a search started while the database is
down fails at once), and libpq's connect timeout and TCP keepalives turn a host that stopped
answering into an error the retries see rather than a call that hangs. SQLite and journal storages
are local files and are not retried.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import random
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sqlalchemy_exc

from autocls.runtime.errors import AutoclsError, StorageUnavailableError

logger = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.contextmanager
def optuna_experimental_allowed() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning inside the block only. Heartbeats and their retry
    callback, TPE's ``group``, metric names and artifacts are marked experimental and are what autocls
    needs; a filter installed at import would change the warnings of the program that imports autocls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


HEARTBEAT_SECONDS = int(os.environ.get("AUTOCLS_HEARTBEAT", "10"))
RETRY_SECONDS = float(os.environ.get("AUTOCLS_STORAGE_RETRY", "300"))
FIRST_DELAY, MAX_DELAY = 0.5, 5.0  # backoff between tries of a storage call that lost its connection
# A dead local worker is noticed quickly; remote workers on a shared database get more slack, and
# never less than a database outage that their workers wait out (see the module docstring).
GRACE_SECONDS = {
    "sqlite": 3 * HEARTBEAT_SECONDS,
    "default": max(12 * HEARTBEAT_SECONDS, int(RETRY_SECONDS + 2 * HEARTBEAT_SECONDS + MAX_DELAY)),
}
MAX_RETRIES = 2
CREATE_ATTEMPTS = 5
JOURNAL_PREFIX = "journal:"
PG_CONNECT_ARGS = {"connect_timeout": 10, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
CLAIM_ATTR = "autocls:claim"  # system attribute: the call that created a trial or took it to run


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL_PREFIX) or url.endswith(".journal")


def allows_several_processes(url: str) -> bool:
    return not url.startswith("sqlite")


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    if is_journal(url) or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: hide everything between the scheme and the host
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"


def is_connection_error(err: BaseException) -> bool:
    """Whether ``err``, or an error it was raised from, says the database could not be reached or
    the connection was lost (a later try may succeed), rather than that the call itself was wrong.
    Optuna wraps the driver's error in ``StorageInternalError``; SQLAlchemy marks a dropped
    connection ``connection_invalidated`` and a refused one (server down, starting up, shutting
    down) ``OperationalError``."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy_exc.DBAPIError) and (
            current.connection_invalidated
            or isinstance(current, (sqlalchemy_exc.OperationalError, sqlalchemy_exc.InterfaceError))
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _describe(err: BaseException, password: str | None) -> str:
    """The driver's first line about ``err``, without the password (libpq names host and port only,
    but a driver may quote more)."""
    while not isinstance(err, sqlalchemy_exc.DBAPIError) and (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    origin = getattr(err, "orig", None) or err
    lines = str(origin).strip().splitlines()
    text = f"{origin.__class__.__name__}: {lines[0] if lines else ''}".strip()
    return text.replace(password, "***") if password else text


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        return None


class ConnectionRetry:
    """Tries a storage call again while its database is unreachable, with backoff, until ``seconds``
    after the process first saw it unreachable; one warning when lost, one when back.

    Shared by the threads of a process (the trial's and Optuna's heartbeat thread), so an outage is
    reported once and bounded once. Past the bound every call raises :class:`StorageUnavailableError`
    at once: the worker is stopping, and nothing it still tries on the way out should wait again.
    """

    def __init__(
        self,
        name: str,
        seconds: float = RETRY_SECONDS,
        *,
        password: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name  # the storage, as messages show it: redacted
        self.seconds = seconds
        self._password = password  # kept out of the driver's messages that the warnings quote
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._local = threading.local()
        self._down_since: float | None = None
        self._gave_up: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:  # a pickled storage (Optuna pickles them for processes)
        return (_unpickle_retry, (self.name, self.seconds, self._password))

    def call(self, attempt: Callable[[bool], T]) -> T:
        """``attempt(retried)`` until it returns or raises anything but a connection error;
        ``retried`` says an earlier try of this call lost its connection, perhaps after its write
        was committed. A storage call made inside another (``get_best_trial`` reads ``get_trial``)
        is tried once: the outer call retries the whole."""
        if getattr(self._local, "inside", False):
            return attempt(False)
        self._local.inside = True
        try:
            return self._call(attempt)
        finally:
            self._local.inside = False

    def _call(self, attempt: Callable[[bool], T]) -> T:
        delay, retried = FIRST_DELAY, False
        while True:
            if self._gave_up is not None:
                raise StorageUnavailableError(self._gave_up)
            try:
                result = attempt(retried)
            except Exception as err:
                if self.seconds <= 0 or not is_connection_error(err):
                    raise
                self._sleep(self._wait(err, delay))
                delay, retried = min(2 * delay, MAX_DELAY), True
                continue
            if self._down_since is not None:
                self._back()
            return result

    def _wait(self, err: Exception, delay: float) -> float:
        """The pause before the next try, or :class:`StorageUnavailableError` past the bound."""
        now = self._clock()
        with self._lock:
            if self._down_since is None:
                self._down_since = now
                logger.warning(
                    "storage %s unreachable (%s); retrying for up to %.0f s",
                    self.name,
                    _describe(err, self._password),
                    self.seconds,
                )
            left = self._down_since + self.seconds - now
            if left <= 0 or self._gave_up is not None:
                self._gave_up = self._gave_up or (
                    f"storage {self.name} unreachable for {now - self._down_since:.0f} s "
                    f"({_describe(err, self._password)}); stopped (a trial left running is queued again by "
                    "the next search): bring the database back and run the same command to continue "
                    "(AUTOCLS_STORAGE_RETRY=SECONDS waits longer)."
                )
                raise StorageUnavailableError(self._gave_up) from err
        # jitter: workers that lost the database together do not all knock at the same instant
        return min(left, delay * random.uniform(0.5, 1.0))

    def _back(self) -> None:
        with self._lock:
            if self._down_since is not None:
                logger.warning(
                    "storage %s reachable again after %.0f s; carrying on", self.name, self._clock() - self._down_since
                )
                self._down_since = None


def _unpickle_retry(name: str, seconds: float, password: str | None) -> ConnectionRetry:
    return ConnectionRetry(name, seconds, password=password)


def _retried(method: Callable[..., T]) -> Callable[..., T]:
    """``method`` of :class:`RetryingRDBStorage`, tried again on a lost connection: for reads and
    for writes that are upserts, where a second try of a committed write changes nothing."""

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> T:
        return self.retry.call(lambda _retried: method(self, *args, **kwargs))

    return call


class RetryingRDBStorage(RDBStorage):
    """An Optuna :class:`~optuna.storages.RDBStorage` whose calls wait out a database that went
    away for a while (see the module docstring). Opening it is not retried: a wrong URL, password
    or database is one quick error, not minutes of waiting."""

    def __init__(self, url: str, *, retry_seconds: float = RETRY_SECONDS, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.retry = ConnectionRetry(redact(url), retry_seconds, password=_password(url))

    def record_heartbeat(self, trial_id: int) -> None:
        # Optuna's heartbeat thread stops for good at its first exception, and the trial it stops
        # beating for is later failed as stale while it still trains: a beat may be missed, the
        # thread must go on
        try:
            self.retry.call(lambda _retried: RDBStorage.record_heartbeat(self, trial_id))
        except StorageUnavailableError:
            pass  # the trial's own next storage call stops the worker, with the message
        except Exception as err:
            logger.warning("trial heartbeat not recorded (%s)", _describe(err, self.retry._password))

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._create_new_trial(study_id, template_trial)._trial_id

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        from optuna.storages._rdb import models  # SQLAlchemy's ORM: imported by the storages that use it

        claim = uuid.uuid4().hex
        template = _claimed(template_trial, claim)

        def attempt(retried: bool) -> FrozenTrial:
            if retried:
                found = self._claimed_trial_id(study_id, claim)
                if found is not None:  # the lost attempt created it
                    return self.get_trial(found)
            # Optuna's transaction, without Optuna's own retries of a failed commit: those would
            # create a second trial where the first was committed and only the answer was lost
            with _create_scoped_session(self.scoped_session) as session:
                models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
                row = self._get_prepared_new_trial(study_id, template, session)
                trial = copy.deepcopy(template)
                trial.number, trial.datetime_start, trial._trial_id = row.number, row.datetime_start, row.trial_id
            return trial

        return self.retry.call(attempt)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state == TrialState.RUNNING and values is None:  # ``ask`` takes a queued trial
            claim = uuid.uuid4().hex

            def take(retried: bool) -> bool:
                if retried and self.get_trial_system_attrs(trial_id).get(CLAIM_ATTR) == claim:
                    return True  # the lost attempt took it
                return self._take_waiting(trial_id, claim)

            return self.retry.call(take)

        def finish(retried: bool) -> bool:
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if retried and _finished_as(self.get_trial(trial_id), state, values):
                    return True  # the lost attempt finished it
                raise

        return self.retry.call(finish)

    def _take_waiting(self, trial_id: int, claim: str) -> bool:
        """Optuna's WAITING to RUNNING, with ``claim`` written in the same transaction."""
        from optuna.storages._rdb import models

        try:
            with _create_scoped_session(self.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                self.check_trial_is_updatable(trial_id, trial.state)
                if trial.state != TrialState.WAITING:
                    return False  # another worker took it
                trial.state = TrialState.RUNNING
                trial.datetime_start = datetime.now()
                attr = models.TrialSystemAttributeModel
                self._set_trial_attr_without_commit(session, attr, trial_id, CLAIM_ATTR, claim)
        except sqlalchemy_exc.IntegrityError:
            return False
        return True

    def _claimed_trial_id(self, study_id: int, claim: str) -> int | None:
        from optuna.storages._rdb import models

        attr = models.TrialSystemAttributeModel
        with _create_scoped_session(self.scoped_session) as session:
            row = (
                session.query(attr.trial_id)
                .join(models.TrialModel, models.TrialModel.trial_id == attr.trial_id)
                .filter(models.TrialModel.study_id == study_id)
                .filter(attr.key == CLAIM_ATTR, attr.value_json == json.dumps(claim))
                .first()
            )
            return None if row is None else int(row[0])


# Every other call that reaches the database: reads, and writes that are upserts. The private ones
# are those Optuna's _CachedStorage calls directly.
for _name in (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
):
    setattr(RetryingRDBStorage, _name, _retried(getattr(RDBStorage, _name)))
del _name


def _claimed(template: FrozenTrial | None, claim: str) -> FrozenTrial:
    """``template`` (Optuna's fresh RUNNING trial when ``None``) carrying ``claim``."""
    if template is None:
        template = FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
    else:
        template = copy.deepcopy(template)
    template.system_attrs = {**template.system_attrs, CLAIM_ATTR: claim}
    return template


def _finished_as(trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> bool:
    return trial.state == state and (values is None or trial.values == list(values))


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``, with heartbeats and retries of dead workers' trials where
    possible, and on a database server, calls that wait out a lost connection."""
    if is_journal(url):
        path = Path(url.removeprefix(JOURNAL_PREFIX)).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kind = url.split(":", 1)[0].split("+", 1)[0]
    if kind not in ("sqlite", "postgresql", "postgres", "mysql"):
        raise AutoclsError(
            f"unknown storage {redact(url)}: use sqlite:///PATH, postgresql://USER@HOST/DB or journal:PATH."
        )
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if kind == "sqlite" else {"pool_pre_ping": True}
    if kind.startswith("postgres") and url.split(":", 1)[0].partition("+")[2] in ("", "psycopg", "psycopg2"):
        # libpq's: a connection attempt to a host that does not answer (a network cut, not a
        # restart) fails after 10 s instead of hanging, so the retries above see it; a connection
        # whose peer is gone is found dead by TCP keepalives within a minute
        engine_kwargs["connect_args"] = {**PG_CONNECT_ARGS}
    storage_class = RDBStorage if kind == "sqlite" else RetryingRDBStorage
    try:

        def create() -> RDBStorage:
            return storage_class(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS.get(kind, GRACE_SECONDS["default"]),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
            )

        for attempt in range(CREATE_ATTEMPTS - 1):
            try:
                return create()
            except sqlalchemy_exc.SQLAlchemyError:
                # two first runs on a new database both create its tables: the loser sees "table
                # already exists" or a lock; the tables are there a moment later
                time.sleep(0.2 * (attempt + 1))
        return create()  # the last attempt: its error, if any, is reported below
    except ImportError as err:
        extra = " (pip install 'autocls[postgres]')" if kind.startswith("postgres") else ""
        raise AutoclsError(f"storage {redact(url)} needs a database driver{extra}: {err}") from None
    except Exception as err:
        problem = _sqlite_problem(url) if kind == "sqlite" else None
        if problem is None:
            reason = _describe(err, _password(url)).partition(": ")[2] or "the database refused the connection"
            problem = f"{reason}; check the URL, and that the database is running and reachable from here"
        raise AutoclsError(f"cannot open storage {redact(url)}: {problem}.") from None


SQLITE_HEADER = b"SQLite format 3\0"  # the first 16 bytes of every SQLite database file


def _sqlite_problem(url: str) -> str | None:
    """Why SQLite could not open the file of ``url``, told from the file system, with what to do;
    ``None`` when the file system shows no reason (the driver's message is then reported)."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    path = Path(database).expanduser()
    folder = path.parent
    if not folder.exists():
        return f"the folder {folder} does not exist; create it, or give another --workdir or --storage"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder; give another --workdir or --storage"
    if path.is_dir():
        return f"{path} is a folder, not a database file; give another --workdir or --storage"
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as file:
            if file.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                return f"{path} is not a SQLite database; move the file away, or give another --workdir or --storage"
    if not os.access(folder, os.W_OK):  # SQLite writes the database, and a journal beside it
        return f"cannot write in {folder} (read-only, or not yours); choose a folder you can write (--workdir)"
    return None
