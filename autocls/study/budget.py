"""The time budget of a search: one deadline, checked before every fold and after every epoch."""

from __future__ import annotations

import time

from autocls.runtime.errors import AutoclsError


class BudgetExhausted(AutoclsError):
    """The time budget cannot hold more training."""


class TrialSkipped(AutoclsError):
    """A configuration that cannot finish in the time left, not trained. Recorded FAIL (with a
    ``skipped`` reason) rather than PRUNED: it must not count toward ``--trials``, and TPE, which
    ignores failed trials, must not learn that its region is bad: it was only too long for the time left."""


class Budget:
    """A wall-clock deadline for the whole command; ``None`` seconds means no deadline."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = time.monotonic() + seconds if seconds else None

    def left(self) -> float:
        return self.deadline - time.monotonic() if self.deadline else float("inf")

    def check(self, needed: float, what: str) -> None:
        if needed > self.left():
            raise BudgetExhausted(f"time budget: {self.left():.0f}s left, {what} needs about {needed:.0f}s")
