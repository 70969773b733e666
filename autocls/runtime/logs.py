"""Where log records go: autocls's to rich on stderr, the libraries' chatter silenced."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler


def setup_logging(quiet: bool = False, console: Console | None = None, *, optuna_errors_only: bool = True) -> None:
    """Route autocls's log records to rich on stderr; silence the libraries' chatter.

    ``optuna_errors_only`` imports Optuna to turn its log lines down to errors (trial failures are
    reported by autocls itself); commands that never touch a study pass ``False`` and stay free of
    Optuna (Optuna resets its level when first imported, so it cannot be set beforehand).
    """
    handler = RichHandler(console=console or Console(stderr=True), show_time=False, show_path=False)
    root = logging.getLogger("autocls")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    logging.getLogger("timm").setLevel(logging.WARNING)
    if optuna_errors_only:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
