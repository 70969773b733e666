"""Refit: the chosen trial's fold models (kept by the search, or trained again) saved as an :class:`Ensemble`.

The only part of the model stage that reads a study; loading and predicting need none of it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from autocls.backbones import create_classifier
from autocls.config import TrainConfig
from autocls.cv import CVResult, cross_validate, folds_hash
from autocls.ensemble import FORMAT_VERSION, OOF_FILE, Ensemble, check_model_destination
from autocls.errors import AutoclsError
from autocls.prepare import PreparedData
from autocls.progress import Reporter
from autocls.records import TrialRecord, fold_summaries
from autocls.runtime import resolve_device
from autocls.studysetup import StudySetup, library_versions
from autocls.trialstore import TrialStore

logger = logging.getLogger(__name__)


@dataclass
class RefitResult:
    ensemble: Ensemble
    cv: CVResult
    directory: Path


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    """Trial ``number``, or the best completed trial."""
    if number is None:
        try:
            return study.best_trial
        except ValueError:
            raise AutoclsError(f"study {study.study_name!r} has no completed trial yet; run autocls search.") from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise AutoclsError(f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1}).")
    trial = trials[number]
    if TrialRecord.read(trial).config is None:
        raise AutoclsError(f"trial {number} has no recorded configuration (state {trial.state.name}).")
    return trial


def refit(
    study: optuna.Study,
    out: str | Path,
    trial_number: int | None = None,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
    store: TrialStore | None = None,
    retrain: bool = False,
    cache_dir: Path | None = None,
    overwrite: bool = False,
) -> RefitResult:
    """Save the chosen trial's averaged fold ensemble to ``out`` (replacing a model there only with
    ``overwrite``).

    The fold models the search kept for this trial (in ``store``) are reused as they are, unless
    ``retrain`` is set, none were kept, or the data or folds are no longer those the trial was
    computed on (its recorded data fingerprint and folds hash): then every fold model is trained
    again with the trial's configuration, folds and seed, on the data as it is now.
    """
    reporter = reporter or Reporter(quiet=True)
    check_model_destination(Path(out), overwrite)  # before any training, not after it
    device = device or resolve_device("auto")
    setup = StudySetup.from_study(study)
    trial = pick_trial(study, trial_number)
    record = TrialRecord.read(trial)
    config = record.train_config
    seed = record.seed if record.seed is not None else setup.seed
    data = PreparedData.load(setup, setup.search_space.max_resolution, cache_dir)
    num_classes = len(data.images.class_names)
    kept = not retrain and store is not None and store.has(trial.number)
    same_data = record.data_fingerprint == data.images.fingerprint() and record.folds_hash == folds_hash(data.splits)
    if kept and not same_data:
        reporter.print(
            f"refit trial {trial.number}: the data changed since the search ({len(data.images)} images now); "
            "its kept fold models and scores belong to the old data, so they are retrained on the current data"
        )
    reused = kept and same_data
    if reused:
        reporter.print(f"refit trial {trial.number}: reusing the {setup.folds} fold models kept by the search")
        cv = store.load(trial, data.images.labels, num_classes, setup.metric)
    else:
        reporter.print(f"refit trial {trial.number} of study {study.study_name!r}: training {setup.folds} fold models")
        cv = _retrain(config, data, setup, device, seed, reporter, trial.number)
    models = []
    for fold in cv.folds:
        model = create_classifier(config, cv.num_classes, load_weights=False)
        model.load_state_dict(fold.state_dict)
        models.append(model)
    probe = models[0]
    manifest = {
        "format_version": FORMAT_VERSION,
        "study": study.study_name,
        "trial": trial.number,
        "config": config.to_dict(),
        "class_names": list(data.images.class_names),
        "preprocessing": {
            "decode_size": data.store.base_size,
            "resolution": config.resolution,
            "resize": "shorter side to decode_size, centre crop, then bilinear (antialiased) to resolution",
            "mean": list(probe.pretrained_cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
            "std": list(probe.pretrained_cfg.get("std", IMAGENET_DEFAULT_STD)),
        },
        "folds": fold_summaries(cv.folds),
        "metric": setup.metric,
        "cv_score": cv.mean_score,
        "oof_score": cv.oof_score(),
        "oof_accuracy": cv.oof_score("accuracy"),
        "search_cv_score": trial.value,
        "fold_models": "reused from the search" if reused else "retrained",
        "seed": seed,
        "data": {**asdict(setup.data), "images": len(data.images), "fingerprint": data.images.fingerprint()},
        "history": [[asdict(record) for record in fold.history] for fold in cv.folds],
        "versions": library_versions(),
    }
    ensemble = Ensemble(models, manifest, device)
    oof = ensemble.to_frame([str(p) for p in data.images.paths], np.nan_to_num(cv.oof_probs))
    oof.insert(1, "true_label", [data.images.class_names[i] for i in data.images.labels])
    picked = cv.oof_probs[np.arange(len(cv.labels)), cv.labels]
    oof.insert(4, "loss", -np.log(np.clip(np.nan_to_num(picked, nan=1.0), 1e-7, 1.0)))
    directory = ensemble.save(out, extra={OOF_FILE: oof.to_csv(index=False)}, overwrite=overwrite)
    return RefitResult(ensemble, cv, directory)


def _retrain(
    config: TrainConfig,
    data: PreparedData,
    setup: StudySetup,
    device: torch.device,
    seed: int,
    reporter: Reporter,
    number: int,
) -> CVResult:
    with reporter.live(f"refit trial {number}"):
        return cross_validate(
            config,
            data.store,
            data.images.labels,
            data.splits,
            len(data.images.class_names),
            device,
            setup.weights_dir,
            seed,
            reporter,
            keep_models=True,
            metric=setup.metric,
        )
