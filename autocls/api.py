"""The Python API, mirroring the CLI: ``search``, ``refit``, and a scikit-learn style estimator.

    import autocls
    study = autocls.search("data/train", trials=10, space="fast")
    ensemble = autocls.refit(study)
    table = ensemble.predict(["new/cat.jpg", "new/dog.jpg"])

``data`` may be a class-folder tree, a CSV of file,label rows, or a pandas DataFrame whose first two
columns are the image path and the label. Multi-label data: a DataFrame whose label column holds
lists (or sets) of labels, or whose columns after the path are one 0/1 column per label.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from autocls.data.discover import DataSpec
from autocls.data.multilabel import DELIMITER
from autocls.final.refit import refit as _refit
from autocls.final.testtime import MAX_VIEWS
from autocls.model.ensemble import Ensemble
from autocls.runtime.control import resolve_device, stop_on_ctrl_c
from autocls.runtime.errors import AutoclsError
from autocls.runtime.threads import autocls_threads
from autocls.storage.artifacts import study_artifacts
from autocls.storage.rdb import optuna_experimental_allowed
from autocls.storage.trials import study_trial_store
from autocls.storage.workdir import DEFAULT_WORKDIR, Workdir
from autocls.study.driver import run_search
from autocls.study.progress import Reporter, optuna_logs_quiet
from autocls.study.setup import SearchRequest, StudySetup
from autocls.study.space import SearchSpace
from autocls.study.studydata import relocated

DataLike = str | Path | pd.DataFrame


def _data_spec(data: DataLike, workdir: Path, study_name: str | None, label_delimiter: str | None = None) -> DataSpec:
    if not isinstance(data, pd.DataFrame):
        return DataSpec.of(data, label_delimiter=label_delimiter)
    if data.shape[1] < 2:
        raise AutoclsError(
            f"a DataFrame of (path, label) needs two columns, got {list(data.columns)}; "
            "give the image paths first and the labels (or one 0/1 column per label) after them."
        )
    files = [str(Path(p).expanduser().resolve()) for p in data.iloc[:, 0]]
    csv = Workdir(workdir).dataframe_csv(study_name)  # kept with the study, so refit finds the images again
    csv.parent.mkdir(parents=True, exist_ok=True)
    indicators = data.iloc[:, 1:]
    if data.shape[1] > 2 and all(indicators[c].isin([0, 1, True, False]).all() for c in indicators.columns):
        frame = pd.DataFrame({"file": files, **{str(c): indicators[c].astype(int) for c in indicators.columns}})
        frame.to_csv(csv, index=False)
        return DataSpec.of(csv, file_column="file")  # one 0/1 column per label
    labels = data.iloc[:, 1]
    if labels.map(lambda v: isinstance(v, list | tuple | set | frozenset)).any():
        delimiter = label_delimiter or DELIMITER
        cells = labels.map(lambda v: delimiter.join(sorted(map(str, v))) if not isinstance(v, str) else v)
        pd.DataFrame({"file": files, "label": cells}).to_csv(csv, index=False)
        return DataSpec.of(csv, file_column="file", label_column="label", label_delimiter=delimiter)
    pd.DataFrame({"file": files, "label": labels.astype(str)}).to_csv(csv, index=False)
    return DataSpec.of(csv, file_column="file", label_column="label", label_delimiter=label_delimiter)


def search(
    data: DataLike,
    *,
    trials: int = 20,
    folds: int | None = None,
    space: str | SearchSpace | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    metric: str | None = None,
    seed: int | None = None,
    label_delimiter: str | None = None,
    workdir: str | Path = DEFAULT_WORKDIR,
    device: str = "auto",
    weights: str | None = None,
    sampler: str = "tpe",
    pruning: bool = True,
    warm_start: bool = True,
    max_latency_ms: float | None = None,
    max_params: int | None = None,
    keep_trials: int | None = None,
    artifacts: str | None = None,
    quiet: bool = True,
) -> optuna.Study:
    """Run (or continue) a search like ``autocls search`` and return the Optuna study.

    ``space`` is a built-in name, a ``.toml`` path or a loaded :class:`~autocls.study.space.SearchSpace`.
    ``max_latency_ms`` and ``max_params`` limit the delivered model (:mod:`autocls.study.limits`).
    ``artifacts`` is the study's artifact store (a folder or ``s3://BUCKET/PREFIX``, as ``--artifacts``)
    and ``keep_trials`` how many best trials keep their fold models there.
    Ctrl-C stops after the current batch (finished trials are kept); torch's thread count, the
    SIGINT handler and the warning filters are the caller's again on return.
    """
    workdir = Path(workdir)
    request = SearchRequest(
        data=_data_spec(data, workdir, study_name, label_delimiter),
        workdir=workdir,
        storage=storage,
        study_name=study_name,
        space=space,
        trials=trials,
        timeout=timeout,
        folds=folds,
        seed=seed,
        metric=metric,
        weights=weights,
        sampler=sampler,
        pruning=pruning,
        warm_start=warm_start,
        max_latency_ms=max_latency_ms,
        max_params=max_params,
        keep_trials=keep_trials,
        artifacts=artifacts,
    )
    with autocls_threads(), stop_on_ctrl_c(), optuna_experimental_allowed(), optuna_logs_quiet():
        return run_search(request, resolve_device(device), Reporter(quiet=quiet))


def refit(
    study: optuna.Study,
    trial: int | None = None,
    out: str | Path | None = None,
    *,
    workdir: str | Path = DEFAULT_WORKDIR,
    retrain: bool = False,
    device: str = "auto",
    quiet: bool = True,
    overwrite: bool = False,
    best: bool = False,
    views: int = MAX_VIEWS,
    data: str | Path | None = None,
    artifacts: str | None = None,
) -> Ensemble:
    """Save the model ``autocls refit`` saves and return it: the recommended one by default (an
    ensemble selected across the kept trials when it beats the best trial), the best trial's fold
    ensemble with ``best``, or that of ``trial``; with at most ``views`` test-time views (0: none).
    ``data``: where the study's images are on this machine, when not where the search found them.
    The kept fold models are read from ``artifacts`` (as ``--artifacts``), else the study's store."""
    run_folder = Workdir(workdir)
    overwrite = overwrite or out is None  # the default folder is autocls's own: refit replaces it
    out = Path(out) if out else run_folder.model(study.study_name)
    reporter = Reporter(quiet=quiet)
    with autocls_threads(), optuna_experimental_allowed():
        store = study_trial_store(study, study_artifacts(study, artifacts, run_folder), run_folder)
        result = _refit(
            study,
            out,
            trial_number=trial,
            device=resolve_device(device),
            reporter=reporter,
            store=store,
            retrain=retrain,
            workdir=run_folder,
            overwrite=overwrite,
            best=best,
            max_views=views,
            data_source=relocated(StudySetup.from_study(study).data, data) if data else None,
        )
    return result.ensemble


def _estimator_study_name(paths: list[str], labels: list[str]) -> str:
    """A study per training set: a fit on other images or labels searches its own study, and a
    repeated fit on the same files continues the earlier one (a persistent ``workdir``)."""
    digest = hashlib.sha256()
    for path, label in sorted(zip(paths, labels)):
        stat = Path(path).stat() if Path(path).is_file() else None
        record = f"{path}\0{label}\0{stat and stat.st_size}\0{stat and stat.st_mtime_ns}\n"
        digest.update(record.encode("utf-8", "surrogateescape"))
    return f"estimator-{digest.hexdigest()[:10]}"


class ImageClassifier(ClassifierMixin, BaseEstimator):
    """A scikit-learn estimator: ``fit`` runs a search and refits the best trial's fold ensemble.

    ``X`` is a sequence of image paths, ``y`` their labels. Parameters mirror ``autocls search``;
    the study lives in ``workdir`` (a temporary folder when not given, removed with the estimator).

    Multi-label: ``y`` a sequence of label lists (or sets); ``classes_`` are then the labels,
    ``predict`` returns the 0/1 indicator matrix at the model's thresholds (scikit-learn's
    multi-label convention) and ``predict_proba`` each label's probability.
    """

    def __init__(
        self,
        *,  # keywords only, as scikit-learn's estimators take their parameters
        space: str = "fast",
        trials: int = 10,
        folds: int = 5,
        timeout: float | None = None,
        metric: str | None = None,
        seed: int = 0,
        workdir: str | None = None,
        device: str = "auto",
    ) -> None:
        self.space = space
        self.trials = trials
        self.folds = folds
        self.timeout = timeout
        self.metric = metric
        self.seed = seed
        self.workdir = workdir
        self.device = device

    def fit(self, X: Any, y: Any) -> ImageClassifier:
        multilabel = any(isinstance(v, list | tuple | set | frozenset | np.ndarray) for v in y)
        paths = [str(Path(p).resolve()) for p in X]
        if multilabel:
            labels = [[v] if isinstance(v, str) else sorted(map(str, v)) for v in y]
        else:
            labels = [str(label) for label in y]
        if len(paths) != len(labels):
            raise AutoclsError(
                f"X has {len(paths)} images but y has {len(labels)} labels; give one label (or label list) per image."
            )
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="autocls-")
            workdir = Path(self._tmp.name)
        else:
            workdir = Path(self.workdir)
        frame = pd.DataFrame({"file": paths, "label": labels})  # lists of labels: multi-label
        self.study_ = search(
            frame,
            trials=self.trials,
            folds=self.folds,
            space=self.space,
            study_name=_estimator_study_name(paths, [str(label) for label in labels]),
            storage=Workdir(workdir).storage_url(),
            timeout=self.timeout,
            metric=self.metric,
            seed=self.seed,
            workdir=workdir,
            device=self.device,
        )
        self.ensemble_ = refit(self.study_, workdir=workdir, device=self.device)
        self.classes_ = np.array(self.ensemble_.class_names)
        self.setup_ = StudySetup.from_study(self.study_)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.ensemble_.predict_proba(list(X))

    def predict(self, X: Any) -> np.ndarray:
        probs = self.predict_proba(X)
        if self.ensemble_.multilabel:
            return self.ensemble_.decisions(probs)
        return self.classes_[probs.argmax(axis=1)]
