"""Study storage: SQLite by default, PostgreSQL or an Optuna journal file for several workers.

* ``sqlite:///path.db`` (the default, ``WORKDIR/autocls.db``): one process at a time.
* ``postgresql://user:password@host/db``: many workers on many machines (``autocls[postgres]``).
* ``journal:PATH`` or a path ending in ``.journal``: Optuna's journal file, several processes on
  one machine without a server.

RDB storages run Optuna's heartbeat: a worker that dies mid-trial (SIGKILL, a pre-empted machine)
leaves a RUNNING trial whose heartbeat stops; after the grace period the next worker fails it and
enqueues its configuration again (``RetryHeartbeatStaleTrialCallback``). Storage URLs are shown
only through :func:`redact`, so a password never reaches output, logs, trial attributes or manifests.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.exc import SQLAlchemyError

from autocls.errors import AutoclsError


@contextlib.contextmanager
def optuna_experimental_allowed() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning inside the block only. Heartbeats and their retry
    callback, TPE's ``group``, metric names and artifacts are marked experimental and are what autocls
    needs; a filter installed at import would change the warnings of the program that imports autocls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


HEARTBEAT_SECONDS = int(os.environ.get("AUTOCLS_HEARTBEAT", "10"))
# A dead local worker is noticed quickly; remote workers on a shared database get more slack.
GRACE_SECONDS = {"sqlite": 3 * HEARTBEAT_SECONDS, "default": 12 * HEARTBEAT_SECONDS}
MAX_RETRIES = 2
CREATE_ATTEMPTS = 5
JOURNAL_PREFIX = "journal:"


def default_path(workdir: Path) -> Path:
    """The file of the default storage (SQLite) of searches run in ``workdir``."""
    return workdir / "autocls.db"


def default_url(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{default_path(workdir).resolve()}"


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


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``, with heartbeats and retries of dead workers' trials where possible."""
    if is_journal(url):
        path = Path(url.removeprefix(JOURNAL_PREFIX)).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kind = url.split(":", 1)[0].split("+", 1)[0]
    if kind not in ("sqlite", "postgresql", "postgres", "mysql"):
        raise AutoclsError(
            f"unknown storage {redact(url)}: use sqlite:///PATH, postgresql://USER@HOST/DB or journal:PATH."
        )
    engine_kwargs = {"connect_args": {"timeout": 60}} if kind == "sqlite" else {"pool_pre_ping": True}
    try:

        def create() -> RDBStorage:
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS.get(kind, GRACE_SECONDS["default"]),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
            )

        for attempt in range(CREATE_ATTEMPTS - 1):
            try:
                return create()
            except SQLAlchemyError:
                # two first runs on a new database both create its tables: the loser sees "table
                # already exists" or a lock; the tables are there a moment later
                time.sleep(0.2 * (attempt + 1))
        return create()  # the last attempt: its error, if any, is reported below
    except ImportError as err:
        extra = " (pip install 'autocls[postgres]')" if kind.startswith("postgres") else ""
        raise AutoclsError(f"storage {redact(url)} needs a database driver{extra}: {err}") from None
    except Exception as err:
        hint = " (is it a SQLite database? move the file away or use another --workdir)" if kind == "sqlite" else ""
        raise AutoclsError(f"cannot open storage {redact(url)}: {err.__class__.__name__}{hint}") from None
