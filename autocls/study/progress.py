"""Console output: a live progress line per trial/fold/epoch, a line per finished trial, result tables.

Everything the user sees goes through a :class:`Reporter`; ``Reporter(quiet=True)`` prints only
warnings and errors, for scripts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autocls.storage.records import TrialRecord
from autocls.train.callbacks import TrainingObserver
from autocls.train.history import EpochRecord, FoldResult

SHOWN_PARAMS = ("backbone", "resolution", "freeze", "optimizer", "lr", "scheduler", "augmentation", "batch_size")


@contextmanager
def optuna_logs_quiet() -> Iterator[None]:
    """Optuna's own log lines off for the block, the caller's verbosity back afterwards: autocls
    reports every trial itself, and Optuna would call a skipped configuration a failed trial."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def summarise_params(params: dict[str, Any]) -> str:
    shown = [f"{k}={format_value(params[k])}" for k in SHOWN_PARAMS if k in params]
    return " ".join(shown)


def _model_cost(cost: dict[str, float] | None) -> tuple[str, str]:
    if not cost:
        return "", ""
    return f"{cost['latency_ms']:.1f}", f"{int(cost['parameters']) / 1e6:.1f}M"


class Reporter(TrainingObserver):
    """Shows training progress live and prints finished trials; silent but for warnings when quiet."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None
        self._title = ""

    def print(self, *objects: Any) -> None:
        if not self.quiet:
            self.console.print(*objects)

    @contextmanager
    def live(self, title: str) -> Iterator[None]:
        """Show a transient progress line while the block runs."""
        self._title = title
        if self.quiet:
            yield
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        with self._progress:
            self._task = self._progress.add_task(title, total=None)
            try:
                yield
            finally:
                self._progress = None

    def set_title(self, title: str) -> None:
        self._title = title
        self._update(title, total=None, completed=0)

    def _update(self, description: str, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description, **kwargs)

    def on_fold_start(self, fold: int, folds: int, epochs: int) -> None:
        self._folds = folds
        self._update(f"{self._title} · fold {fold + 1}/{folds}", total=epochs, completed=0)

    def on_epoch_end(self, fold: int, record: EpochRecord) -> None:
        self._update(
            f"{self._title} · fold {fold + 1}/{self._folds} · epoch {record.epoch + 1} · "
            f"val_loss {record.val_loss:.3f} · val_score {record.val_score:.3f}",
            completed=record.epoch + 1,
        )

    def on_fold_restart(self, fold: int, reason: str) -> None:
        self.print(f"fold {fold + 1}: {reason}")

    def on_fold_end(self, result: FoldResult) -> None:
        best = result.best
        self.print(
            f"  {self._title} fold {result.fold + 1}: score {best.val_score:.4f} "
            f"(epoch {result.best_epoch + 1}/{len(result.history)}, {result.seconds:.0f}s)"
        )

    def trial_finished(self, trial: optuna.trial.FrozenTrial) -> None:
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        state = trial.state.name
        record = TrialRecord.read(trial)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            outcome = f"[green]{state}[/] cv score {trial.value:.4f}"
        elif record.skipped is not None:
            outcome = f"[yellow]SKIPPED[/] {record.skipped}"
        elif trial.state == optuna.trial.TrialState.PRUNED:
            outcome = f"[yellow]{state}[/] at step {trial.last_step}"
        else:
            outcome = f"[red]{state}[/] {record.fail_reason or ''}"
        config = record.config or trial.params
        self.print(f"trial {trial.number} {outcome} in {seconds:.0f}s · {summarise_params(config)}")

    def best_trials_table(self, study: optuna.Study, metric: str = "accuracy", top: int = 5) -> None:
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            self.print("no trial has completed yet.")
            return
        records = {t.number: TrialRecord.read(t) for t in study.trials}
        skipped = [r for r in records.values() if r.skipped is not None]  # recorded FAIL, not trained
        counts = {s.name: sum(1 for t in study.trials if t.state == s) for s in optuna.trial.TrialState}
        table = Table(
            title=f"study {study.study_name}: best of {counts['COMPLETE']} complete, "
            f"{counts['PRUNED']} pruned, {counts['FAIL'] - len(skipped)} failed trials"
            + (f"; {len(skipped)} configurations skipped ({_skip_reasons(skipped)})" if skipped else "")
        )
        limited = any(r.model_cost for r in records.values())  # a study with deployment limits
        columns = ("trial", f"cv {metric}", "folds", "time") + (("ms/image", "parameters") if limited else ())
        for column in (*columns, "configuration"):
            table.add_column(column, overflow="fold")
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        for trial in sorted(done, key=lambda t: t.value, reverse=maximize)[:top]:
            record = records[trial.number]
            folds = " ".join(f"{f['score']:.3f}" for f in record.folds)
            seconds = trial.duration.total_seconds() if trial.duration else 0.0
            table.add_row(
                str(trial.number),
                f"{trial.value:.4f}",
                folds,
                f"{seconds:.0f}s",
                *(_model_cost(record.model_cost) if limited else ()),
                summarise_params(record.config or trial.params),
            )
        self.print(table)


def _skip_reasons(skipped: list[TrialRecord]) -> str:
    """Why configurations were skipped, counted: ``3 too long for the time left, 1 over a limit``."""
    counts = Counter(record.skip_kind for record in skipped)
    return ", ".join(f"{count} {name}" for name, count in counts.items())
