"""User-facing errors.

Anything a user can fix (bad data, a missing weights file, an unknown study) raises
:class:`AutoclsError`; the CLI prints its message as one line and exits with status 2,
never a traceback (:func:`run_guarded`).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable


class AutoclsError(Exception):
    """An error caused by the user's input, with a message that says what to fix."""


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
    2 for bad input, 1 for a failure at run time, 130 for Ctrl-C."""
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
    except PermissionError as err:  # a read-only work folder or --out
        print(
            f"autocls: error: cannot write {err.filename or 'a file'}: permission denied; "
            "choose a folder you can write (--workdir, --out).",
            file=sys.stderr,
        )
        return 2
    except Exception as err:
        if debug:
            raise
        print(f"autocls: unexpected error: {err.__class__.__name__}: {err} (rerun with --debug)", file=sys.stderr)
        return 1
