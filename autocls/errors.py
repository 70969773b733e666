"""User-facing errors.

Anything a user can fix (bad data, a missing weights file, an unknown study) raises
:class:`AutoclsError`; the CLI prints its message as one line and exits with status 2,
never a traceback.
"""


class AutoclsError(Exception):
    """An error caused by the user's input, with a message that says what to fix."""


class WeightsNotFoundError(AutoclsError):
    """Pretrained weights were asked for but cannot be found locally or on the hub."""


class NonFiniteLossError(AutoclsError):
    """Training diverged: the loss became NaN or infinite (a learning rate too high, usually)."""


class StorageUnavailableError(BaseException):
    """The study's database stayed unreachable past the retry bound (:mod:`autocls.storage`): the
    worker stops. A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception``
    on the way out (``study.optimize(catch=...)``, the objective's handlers) records FAIL for a
    trial whose only fault was the database; the CLI prints its message as one line, status 1."""
