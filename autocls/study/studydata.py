"""Data for a study: discovered, decoded, split into the study's folds, and checked to be the data
its trials were computed on."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import optuna

from autocls.data.discover import (
    DataSpec,
    LabelledImages,
    check_folds,
    content_index,
    describe_changes,
    file_index,
    index_fingerprint,
)
from autocls.data.imagecache import DecodeClock
from autocls.data.images import ImageStore, build_store
from autocls.runtime.atomic import write_atomically
from autocls.runtime.errors import AutoclsError
from autocls.study.setup import SUCCESSOR_ATTR, StudySetup, study_names
from autocls.train.cv import FoldData, stratified_folds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """Discovered, decoded and split data, ready for the trainer; ``root`` is the folder its paths
    are known relative to (:meth:`autocls.data.discover.DataSpec.root`)."""

    images: LabelledImages
    store: ImageStore
    splits: list[tuple[np.ndarray, np.ndarray]]
    root: Path | None = None

    @classmethod
    def load(
        cls,
        setup: StudySetup,
        size: int,
        cache_dir: Path | None = None,
        discovered: LabelledImages | None = None,
        *,
        source: DataSpec | None = None,
        clock: DecodeClock | None = None,
    ) -> PreparedData:
        """The study's data as found at ``source`` (default: where the study recorded it), split
        into the study's folds. ``clock`` bounds the decode by the time budget."""
        source = source or setup.data
        data = discovered or source.discover()
        check_folds(data, setup.folds)
        what = "labels" if data.multilabel else "classes"
        logger.info("found %d images in %d %s under %s", len(data), len(data.class_names), what, source.source)
        data, store = build_store(data, size, cache_dir, clock)
        check_folds(data, setup.folds)  # again: skipped unreadable files may leave a class short
        return cls(data, store, stratified_folds(data.labels, setup.folds, setup.seed), source.root)

    @cached_property
    def content(self) -> dict[str, list]:
        """Each decoded image by its path under ``root``, its size, the hash of its bytes and its class."""
        assert self.store.content is not None, "a study's data is decoded with content hashes"
        return content_index(self.images, self.store.content, self.root or Path("/"))

    @cached_property
    def fingerprint(self) -> str:
        """What the study knows its data by: the images' contents, paths under the root and classes.
        The same files under another root or with other modification times give the same value; an
        unreadable file that was skipped is not part of it."""
        return index_fingerprint(self.content)

    def fold_data(self, folds: int | None = None) -> FoldData:
        """What :func:`autocls.train.cv.cross_validate` trains on: the first ``folds`` splits (all by default)."""
        splits = self.splits if folds is None else self.splits[:folds]
        return FoldData(self.store, self.images.labels, splits, len(self.images.class_names))

    def is_recorded_as(self, recorded: str | None) -> bool:
        """Whether a trial's recorded data fingerprint is this data's: by content, or (recorded
        before data was known by content) by the local paths and times of the decoded files."""
        return recorded is not None and recorded in (self.fingerprint, self.images.fingerprint())


def locate_data(study: optuna.Study, setup: StudySetup, given: DataSpec | None) -> DataSpec:
    """Where the study's images are on this machine: ``given`` (``--data``), else where the search
    recorded them; one line when they are not there."""
    if given is not None:
        return given
    if not Path(setup.data.source).exists():
        raise AutoclsError(
            f"the images of study {study.study_name!r} were searched at {setup.data.source}, which is not on "
            "this machine; give their path here with --data PATH (the same files under any folder)."
        )
    return setup.data


def relocated(spec: DataSpec, source: str | Path, labels_csv: str | Path | None = None) -> DataSpec:
    """``spec`` read from ``source`` (and ``labels_csv``) instead: its CSV columns and delimiter kept."""
    resolve = lambda p: str(Path(p).expanduser().resolve())  # noqa: E731
    labels = resolve(labels_csv) if labels_csv else None
    if labels is None and spec.labels_csv and Path(spec.source).is_dir():
        # the labels CSV recorded beside the old folder is looked for at the same place under the new one
        old = Path(spec.labels_csv)
        moved = Path(source) / old.relative_to(spec.source) if old.is_relative_to(spec.source) else old
        labels = resolve(moved)
    return replace(spec, source=resolve(source), labels_csv=labels)


DATA_ATTR = "dataset"  # study user attribute: images, classes and the fingerprint of the files searched
CONTENT_KEY = "content_fingerprint"  # in DATA_ATTR: :attr:`PreparedData.fingerprint`
OLD_KEY = "files_fingerprint"  # in DATA_ATTR, from before data was known by content: paths, sizes, times


class DataChangedError(AutoclsError):
    """The files under a study's data source are not those its trials were computed on."""


def check_same_data(study: optuna.Study, discovered: LabelledImages, data: PreparedData, index_file: Path) -> None:
    """Refuse to continue ``study`` on images other than those its finished trials saw.

    Trials of one study are compared with each other, ranked, pruned against each other and
    ensembled: mixing trials of other data makes all of that silently wrong. The images are compared
    by content (:attr:`PreparedData.fingerprint`); a study recorded before that is compared by its
    files' paths, sizes and times as it was then (``discovered``: every file found, read or not).
    """
    recorded = study.user_attrs.get(DATA_ATTR, {})
    if CONTENT_KEY in recorded:
        if recorded[CONTENT_KEY] == data.fingerprint:
            return
        try:
            before = json.loads(index_file.read_text(encoding="utf-8"))["content"]
            changes = describe_changes(before, data.content)
        except (OSError, ValueError, KeyError):
            changes = "the images' contents, paths under the data folder or classes differ"
    elif recorded.get(OLD_KEY) in (None, discovered.fingerprint()):
        return
    else:
        try:
            before = json.loads(index_file.read_text(encoding="utf-8"))["files"]
            changes = describe_changes(before, file_index(discovered))
        except (OSError, ValueError, KeyError):
            changes = "the files' names, sizes, times or classes differ"
    names = set(study_names(study._storage))
    fresh = next(f"{study.study_name}-{n}" for n in range(2, 10_000) if f"{study.study_name}-{n}" not in names)
    study.set_user_attr(SUCCESSOR_ATTR, fresh)  # the new study starts from what this one learnt
    raise DataChangedError(
        f"the data of study {study.study_name!r} changed since it was searched ({changes}), and its "
        f"trials were computed on the old images; search the new data in a new study: --study {fresh} "
        "(it starts from this study's best configurations)."
    )


def record_data(study: optuna.Study, data: PreparedData, index_file: Path) -> None:
    """Record what the study searches, once: the images' content fingerprint on the study, their
    index (for describing a later change) on disk. A study recorded before data was known by
    content, and found unchanged, gains its content fingerprint here."""
    recorded = study.user_attrs.get(DATA_ATTR, {})
    if CONTENT_KEY not in recorded or not index_file.is_file():
        # each machine keeps the index of what it checked, so a later change there is counted
        write_atomically(index_file, json.dumps({"fingerprint": data.fingerprint, "content": data.content}).encode())
    if CONTENT_KEY in recorded:
        return
    study.set_user_attr(
        DATA_ATTR,
        {
            **recorded,
            "images": len(data.images),
            "classes": list(data.images.class_names),
            CONTENT_KEY: data.fingerprint,
        },
    )
