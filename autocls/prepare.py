"""Data for a study: discovered, decoded, split into the study's folds, and checked to be the data
its trials were computed on."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from autocls.atomic import write_atomically
from autocls.cv import stratified_folds
from autocls.data import LabelledImages, check_folds, describe_changes, file_index
from autocls.errors import AutoclsError
from autocls.images import ImageStore, build_store
from autocls.studysetup import StudySetup, study_names

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """Discovered, decoded and split data, ready for the trainer."""

    images: LabelledImages
    store: ImageStore
    splits: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def load(
        cls, setup: StudySetup, size: int, cache_dir: Path | None = None, discovered: LabelledImages | None = None
    ) -> PreparedData:
        data = discovered or setup.data.discover()
        check_folds(data, setup.folds)
        what = "labels" if data.multilabel else "classes"
        logger.info("found %d images in %d %s under %s", len(data), len(data.class_names), what, setup.data.source)
        data, store = build_store(data, size, cache_dir)
        check_folds(data, setup.folds)  # again: skipped unreadable files may leave a class short
        return cls(data, store, stratified_folds(data.labels, setup.folds, setup.seed))


DATA_ATTR = "dataset"  # study user attribute: images, classes and the fingerprint of the files searched


DATA_INDEX_FILE = "files.json"  # beside the study's fold models: each file's size, time and class


class DataChangedError(AutoclsError):
    """The files under a study's data source are not those its trials were computed on."""


def check_same_data(study: optuna.Study, discovered: LabelledImages, index_file: Path) -> None:
    """Refuse to continue ``study`` on files other than those its finished trials saw.

    Trials of one study are compared with each other, ranked, pruned against each other and
    ensembled: mixing trials of other data makes all of that silently wrong.
    """
    recorded = study.user_attrs.get(DATA_ATTR, {}).get("files_fingerprint")
    if recorded is None or recorded == discovered.fingerprint():
        return
    try:
        before = json.loads(index_file.read_text(encoding="utf-8"))["files"]
        changes = describe_changes(before, file_index(discovered))
    except (OSError, ValueError, KeyError):
        changes = "the files' names, sizes, times or classes differ"
    names = set(study_names(study._storage))
    fresh = next(f"{study.study_name}-{n}" for n in range(2, 10_000) if f"{study.study_name}-{n}" not in names)
    raise DataChangedError(
        f"the data of study {study.study_name!r} changed since it was searched ({changes}), and its "
        f"trials were computed on the old files; search the new data in a new study: --study {fresh}."
    )


def record_data(study: optuna.Study, discovered: LabelledImages, data: PreparedData, index_file: Path) -> None:
    """Record what the study searches, once: the files' fingerprint on the study, their index on disk."""
    if "files_fingerprint" in study.user_attrs.get(DATA_ATTR, {}):
        return
    index = {"fingerprint": discovered.fingerprint(), "files": file_index(discovered)}
    write_atomically(index_file, json.dumps(index).encode())
    study.set_user_attr(
        DATA_ATTR,
        {
            "images": len(data.images),
            "classes": list(data.images.class_names),
            "files_fingerprint": index["fingerprint"],
        },
    )
