"""What the stages of a refit pass one another: the context every stage reads, the candidates,
the selection and the test-time views (:mod:`autocls.final.refit` runs the stages)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna
import torch
from torch import nn

from autocls.storage.trials import TrialStore
from autocls.storage.workdir import Workdir
from autocls.study.progress import Reporter
from autocls.study.setup import StudySetup
from autocls.study.studydata import PreparedData
from autocls.study.trainingtime import TrainingTimeModel
from autocls.train.backbones import create_classifier
from autocls.train.config import TrainConfig
from autocls.train.cv import CVResult
from autocls.train.metrics import Metric, get_metric


@dataclass
class Candidate:
    """A trial's fold models and out-of-fold predictions, ready to be a member."""

    trial: optuna.trial.FrozenTrial
    config: TrainConfig
    cv: CVResult
    reused: bool
    _models: list[nn.Module] | None = None

    def models(self, num_classes: int) -> list[nn.Module]:
        """The fold models, built from their weights once (TTA scoring and the saved model share them)."""
        if self._models is None:
            self._models = []
            for fold in self.cv.folds:
                model = create_classifier(self.config, num_classes, load_weights=False)
                model.load_state_dict(fold.state_dict)
                self._models.append(model)
        return self._models


@dataclass
class RefitContext:
    """What every stage of a refit reads: the study, its setup and prepared data, where models run,
    where progress goes, the store of kept fold models, the run folder (its decode cache and
    measured speeds), and the most test-time views asked for."""

    study: optuna.Study
    setup: StudySetup
    data: PreparedData
    device: torch.device
    reporter: Reporter
    store: TrialStore | None
    workdir: Workdir | None
    max_views: int

    @property
    def metric(self) -> Metric:
        return get_metric(self.setup.metric)

    @property
    def sign(self) -> float:
        """Selection and the choice of views maximise ``sign * metric``."""
        return 1.0 if self.metric.greater_is_better else -1.0

    def score(self, labels: np.ndarray, probs: np.ndarray) -> float:
        """The study's metric, higher is better."""
        return self.sign * self.metric(labels, probs)

    @property
    def multilabel(self) -> bool:
        return self.data.images.multilabel

    def cost_model(self) -> TrainingTimeModel:
        return TrainingTimeModel(self.device, self.workdir.speeds if self.workdir else None)


@dataclass
class Selected:
    """The selection stage's outcome: the members with their weights, the images every candidate
    predicts out of fold (``covered``) and their labels, the blend's out-of-fold probabilities, what
    selection maximised (``criterion``) and the deployment-limits check for member sets."""

    candidates: list[Candidate]
    members: list[tuple[Candidate, float]]
    covered: np.ndarray
    labels: np.ndarray
    oof: np.ndarray
    criterion: str
    criterion_selected: float
    criterion_best_trial: float
    score_selected: float
    score_best_trial: float
    within: Callable[..., bool]
    chosen: frozenset[int]  # the members' indices among the candidates

    @property
    def lead(self) -> Candidate:
        """The member of most weight (the first of them on a tie), as the manifest's lead member."""
        return max(self.members, key=lambda m: m[1])[0]


@dataclass
class Views:
    """The test-time views kept, the out-of-fold probabilities with them, and the study's metric
    (higher is better) after each step of their choice."""

    tta: list[str]
    oof: np.ndarray
    scores: dict[str, float]
