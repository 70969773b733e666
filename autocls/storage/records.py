"""What a trial records in the study: one schema, written and read here only.

Optuna keeps a trial's parameters and value; autocls adds, as user attributes, the configuration
the parameters made, the per-epoch history of every fold, fold scores, why a trial failed or was
skipped, and the training-time model's estimate. :class:`TrialRecorder` writes them while the trial runs
(the dashboard shows them live); :class:`TrialRecord` reads a finished or running trial back. The
progress table, the training-time model, the kept fold models, refit and the stop rules all read through
:class:`TrialRecord`, so an attribute cannot be renamed in one place and silently missed in another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from autocls.train.config import TrainConfig
from autocls.train.history import EpochRecord, FoldResult

SCHEMA_VERSION = 1
# user-attribute names; a trial written by an older autocls without "schema" reads as version 1
SCHEMA = "schema"
CONFIG, SEED = "config", "seed"
HISTORY, FOLDS = "history", "folds"
FROZEN_STAGES, OOF_SCORE = "frozen_stages", "oof_score"
DATA_FINGERPRINT, FOLDS_HASH, VERSIONS = "data_fingerprint", "folds_hash", "versions"
ESTIMATE = "estimated_epoch_seconds"  # the training-time model's per-epoch estimate when the trial started
MODEL_COST = "model_cost"  # {"latency_ms", "parameters"} of the trial's fold models together, under limits
SKIPPED = "skipped"  # why a configuration was not trained (too long for the time left, or over a limit)
LIMIT_SKIP = "limit: "  # starts the skipped reason of a configuration over the deployment limits
WEIGHTS_SKIP = "no weights: "  # starts the skipped reason of a pretrained configuration whose weights are missing
TIME_SKIP_KIND = "too long for the time left"  # a skipped reason without one of the prefixes below
SKIP_KINDS = {LIMIT_SKIP: "over a limit", WEIGHTS_SKIP: "without pretrained weights"}
FAIL_REASON, STOPPED_BY = "fail_reason", "stopped_by"
WORKER = "worker"  # {"host", "pid", "started"}: a later run on this host recovers the trial if it died
FOLD_MODELS = "fold_models"  # where the search kept the trial's fold models (autocls.storage.trials)
RETRY_OF = "retry_of"  # on a re-enqueued trial: the number of the trial it repeats
SHORTENED_FOLDS = "shortened_folds"  # {fold from 1: why}: folds that trained fewer epochs, to end by the deadline
SHRUNK_FROM = "shrunk_from"  # on a smaller version of a configuration that did not fit the time left
MEMBER_OF = "member_of"  # on the best trial's configuration queued again, smaller, for the budget's last minutes
PORTFOLIO = "portfolio"  # on a warm-start recipe enqueued when the study was created
PORTFOLIO_PLAN = "portfolio_plan"  # on the study: the recipes (not yet sized) and the budget, until probed
PORTFOLIO_PROBES = "portfolio_probes"  # on the study: what the portfolio's probes measured, which recipes went on
STOPPED_BY_TIMEOUT = "timeout"


def fold_summaries(folds: list[FoldResult]) -> list[dict[str, float | int]]:
    """JSON-ready per-fold scores (plain floats: Optuna's user attributes must be JSON)."""
    return [
        {
            "fold": f.fold,
            "score": round(float(f.best.val_score), 6),
            "val_loss": round(float(f.best.val_loss), 6),
            "best_epoch": f.best_epoch,
            "epochs_run": len(f.history),
            "seconds": round(f.seconds, 2),
            "batch_size": f.batch_size,
        }
        for f in folds
    ]


def epoch_summary(record: EpochRecord) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in asdict(record).items() if v is not None}


@dataclass(frozen=True)
class TrialRecord:
    """What autocls recorded on one trial (fields are ``None`` or empty where nothing was recorded)."""

    number: int
    state: optuna.trial.TrialState
    value: float | None
    params: dict[str, Any]
    config: dict[str, Any] | None = None
    seed: int | None = None
    history: list[list[dict[str, float]]] = field(default_factory=list)
    folds: list[dict[str, float | int]] = field(default_factory=list)
    frozen_stages: int = 0
    oof_score: float | None = None
    data_fingerprint: str | None = None
    folds_hash: str | None = None
    estimated_epoch_seconds: float | None = None
    model_cost: dict[str, float] | None = None
    skipped: str | None = None
    fail_reason: str | None = None
    stopped_by: str | None = None
    worker: dict[str, Any] | None = None
    retry_of: int | None = None
    fold_models: str | None = None
    schema: int = SCHEMA_VERSION

    @property
    def skip_kind(self) -> str | None:
        """Why the configuration was skipped, in a few words (:data:`SKIP_KINDS`, else
        :data:`TIME_SKIP_KIND`); ``None`` if it was not."""
        if self.skipped is None:
            return None
        return next((kind for prefix, kind in SKIP_KINDS.items() if self.skipped.startswith(prefix)), TIME_SKIP_KIND)

    @classmethod
    def read(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        return cls(
            number=trial.number,
            state=trial.state,
            value=trial.value if trial.values else None,
            params=dict(trial.params),
            config=attrs.get(CONFIG),
            seed=attrs.get(SEED),
            history=attrs.get(HISTORY, []),
            folds=attrs.get(FOLDS, []),
            frozen_stages=int(attrs.get(FROZEN_STAGES, 0)),
            oof_score=attrs.get(OOF_SCORE),
            data_fingerprint=attrs.get(DATA_FINGERPRINT),
            folds_hash=attrs.get(FOLDS_HASH),
            estimated_epoch_seconds=attrs.get(ESTIMATE),
            model_cost=attrs.get(MODEL_COST),
            skipped=attrs.get(SKIPPED),
            fail_reason=attrs.get(FAIL_REASON),
            stopped_by=attrs.get(STOPPED_BY),
            worker=attrs.get(WORKER),
            retry_of=attrs.get(RETRY_OF),
            fold_models=attrs.get(FOLD_MODELS),
            schema=int(attrs.get(SCHEMA, 1)),
        )

    @property
    def train_config(self) -> TrainConfig | None:
        return TrainConfig.from_dict(self.config) if self.config is not None else None

    @property
    def epoch_seconds(self) -> list[float]:
        return [epoch["seconds"] for fold in self.history for epoch in fold]

    @property
    def stopped_by_timeout(self) -> bool:
        return self.stopped_by == STOPPED_BY_TIMEOUT


class TrialRecorder:
    """Writes a running trial's record, piece by piece, as the trial learns it."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def _set(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.trial.set_user_attr(key, value)

    def started(self, worker: dict[str, Any]) -> None:
        self._set(**{SCHEMA: SCHEMA_VERSION, WORKER: worker})

    def configured(
        self, config: TrainConfig, *, seed: int, data_fingerprint: str, folds_hash: str, versions: dict[str, str]
    ) -> None:
        """The configuration a trial's parameters made, its seed, and what reproduces it: the data's
        content fingerprint, the folds' hash and the library versions."""
        self._set(
            **{
                CONFIG: config.to_dict(),
                SEED: seed,
                DATA_FINGERPRINT: data_fingerprint,
                FOLDS_HASH: folds_hash,
                VERSIONS: versions,
            }
        )

    def model_cost(self, latency_ms: float, parameters: int) -> None:
        self._set(**{MODEL_COST: {"latency_ms": round(latency_ms, 3), "parameters": parameters}})

    def estimated(self, epoch_seconds: float) -> None:
        self._set(**{ESTIMATE: round(epoch_seconds, 4)})

    def progress(self, history: list[list[dict[str, float]]]) -> None:
        self._set(**{HISTORY: history})

    def folds_done(self, folds: list[FoldResult]) -> None:
        self._set(**{FOLDS: fold_summaries(folds)})

    def finished(self, frozen_stages: int, oof_score: float) -> None:
        self._set(**{FROZEN_STAGES: frozen_stages, OOF_SCORE: round(oof_score, 6)})

    def kept(self, where: str) -> None:
        """The trial's fold models are being written to ``where`` (a store's URL and the trial's key)."""
        self._set(**{FOLD_MODELS: where})

    def cut_short(self, note: str) -> None:
        self._set(cut_short=note)

    def shortened(self, folds: dict[str, str]) -> None:
        """Folds (numbered from 1) that trained fewer epochs than configured, and why."""
        self._set(**{SHORTENED_FOLDS: folds})

    def skipped(self, reason: str) -> None:
        self._set(**{SKIPPED: reason})

    def failed(self, reason: str, timeout: bool = False) -> None:
        self._set(**{FAIL_REASON: reason})
        if timeout:
            self._set(**{STOPPED_BY: STOPPED_BY_TIMEOUT})


# what a trial queued again (smaller, or to repeat it) still is: a warm-start recipe stays one, and a
# member for the last minutes stays unpruned
KEPT_WHEN_QUEUED_AGAIN = (PORTFOLIO, MEMBER_OF)


def shrunk_attrs(trial: optuna.trial.FrozenTrial | optuna.Trial) -> dict[str, Any]:
    """User attributes of a smaller version of ``trial`` enqueued because ``trial`` did not fit."""
    keep = {k: v for k, v in trial.user_attrs.items() if k in KEPT_WHEN_QUEUED_AGAIN}
    return {**keep, SHRUNK_FROM: trial.number}


def member_attrs(best: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """User attributes of the ``best`` trial's configuration queued again as an ensemble member."""
    return {MEMBER_OF: best.number}


def retry_attrs(trial: optuna.trial.FrozenTrial | optuna.Trial) -> dict[str, Any]:
    """User attributes of a trial enqueued again to repeat ``trial`` (what it was stays: see above)."""
    keep = {k: v for k, v in trial.user_attrs.items() if k in KEPT_WHEN_QUEUED_AGAIN}
    return {**keep, RETRY_OF: trial.number}
