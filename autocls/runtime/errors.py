"""User-facing errors.

Anything a user can fix (bad data, a missing weights file, an unknown study) raises
:class:`AutoclsError`; the CLI prints its message as one line and exits with status 2,
never a traceback (:func:`run_guarded`).
"""

from __future__ import annotations

import errno
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class AutoclsError(Exception):
    """An error caused by the user's input, with a message that says what to fix."""


class SettingError(AutoclsError):
    """A setting's value outside what it accepts, in the one message style of every setting, from the
    command line, a search space or the Python API (scikit-learn's): "The 'lr' parameter of bad.toml
    [fixed] must be a number > 0. Got -3 instead." ``expected`` is what the setting accepts
    (:meth:`autocls.train.config.Constraint.describe` for the settings in its table); ``where`` (a
    file and table, a class) is added by whoever knows it (:meth:`at`)."""

    def __init__(self, name: str, expected: str, value: Any, where: str | None = None) -> None:
        self.name, self.expected, self.value, self.where = name, expected, value, where
        place = f" of {where}" if where else ""
        super().__init__(f"The {name!r} parameter{place} must be {expected}. Got {value!r} instead.")

    def at(self, where: str) -> SettingError:
        return SettingError(self.name, self.expected, self.value, where)

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:  # to a --workers parent: its own arguments
        return SettingError, (self.name, self.expected, self.value, self.where)


class WeightsNotFoundError(AutoclsError):
    """Pretrained weights were asked for but cannot be found locally or on the hub."""


class NonFiniteLossError(AutoclsError):
    """Training diverged: the loss became NaN or infinite (a learning rate too high, usually)."""


class StorageUnavailableError(BaseException):
    """The study's database stayed unreachable past the retry bound (:mod:`autocls.storage.rdb`): the
    worker stops. A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception``
    on the way out (``study.optimize(catch=...)``, the objective's handlers) records FAIL for a
    trial whose only fault was the database; the CLI prints its message as one line, status 1."""


def run_guarded(
    command: Callable[[], int],
    debug: bool = False,
    interrupted: str = "interrupted; finished trials are saved, run the same command to continue.",
) -> int:
    """Run a command; every error it raises becomes one line on stderr and an exit code:
    2 for bad input, 1 for a failure at run time, 130 for Ctrl-C. An ``OSError`` about a file the
    user chose (a read-only folder, a file where a folder must be, a full disk) names the file and
    what to do; only an error no input should cause reaches the last resort ("unexpected error",
    with its class for a bug report)."""
    try:
        with warnings.catch_warnings():
            # Optuna's ExperimentalWarning (heartbeats, TPE's group option, artifacts), matched by its
            # text so that predict and export need not import Optuna to silence it
            # (an ExperimentalWarning derives from Warning, not UserWarning; its texts say "X is
            # experimental (supported from v...)" or "Argument ``x`` is an experimental feature")
            warnings.filterwarnings("ignore", message=r".*\bis (an )?experimental\b", category=Warning)
            return command()
    except AutoclsError as err:
        print(f"autocls: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autocls: {interrupted}", file=sys.stderr)
        return 130
    except StorageUnavailableError as err:  # the database stayed away past the retry bound
        print(f"autocls: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        problem = _FILE_PROBLEMS.get(err.errno) if err.errno is not None else None
        if problem is None:  # not a file the user named or can fix: the last resort below
            return _unexpected(err, debug)
        print(f"autocls: error: {problem.line(err.filename)}", file=sys.stderr)
        return problem.code
    except Exception as err:
        return _unexpected(err, debug)


@dataclass(frozen=True)
class _FileProblem:
    """What went wrong with a file the user chose, what to do about it, and the exit code."""

    what: str  # with {file}
    remedy: str
    code: int = 2  # the user's input (a folder given with --workdir or --out); 1: a failure at run time

    def line(self, filename: object) -> str:
        return f"{self.what.format(file=filename or 'a file')}; {self.remedy}."


_WRITABLE = "choose a folder you can write (--workdir, --out)"
# by errno: a read-only folder, a file where a folder must be, a full disk
_FILE_PROBLEMS = {
    errno.EACCES: _FileProblem("cannot write {file}: permission denied", _WRITABLE),
    errno.EPERM: _FileProblem("cannot write {file}: operation not permitted", _WRITABLE),
    errno.EROFS: _FileProblem("cannot write {file}: the file system is read-only", _WRITABLE),
    errno.EEXIST: _FileProblem(
        "cannot create the folder {file}: a file of that name is in the way",
        "move the file or choose another folder (--workdir, --out)",
    ),
    errno.ENOTDIR: _FileProblem(
        "cannot use {file}: a part of that path is a file, not a folder", "choose another path (--workdir, --out)"
    ),
    errno.ENOSPC: _FileProblem(
        "cannot write {file}: no space left on the device", "free some space or choose another folder", code=1
    ),
}


def _unexpected(err: Exception, debug: bool) -> int:
    """The last resort: an error no user input should cause (a bug), with its class for the report."""
    if debug:
        raise err
    print(
        f"autocls: unexpected error: {err.__class__.__name__}: {err} (rerun with --debug, and report it)",
        file=sys.stderr,
    )
    return 1
