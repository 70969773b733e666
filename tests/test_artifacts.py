"""The study's artifact store (a folder or S3) and the kept trials' fold models in it, on synthetic folds."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from autocls.runtime.errors import AutoclsError
from autocls.storage.artifacts import (
    ARTIFACTS_ATTR,
    AtomicFileSystemArtifactStore,
    Location,
    open_store,
    read_bytes,
    study_artifacts,
)
from autocls.storage.records import TrialRecorder, epoch_summary
from autocls.storage.trials import KEEP_ATTR, Place, TrialStore, study_keep, study_trial_store
from autocls.storage.workdir import Workdir
from autocls.train.cv import CVResult
from autocls.train.history import EpochRecord, FoldResult
from tests.conftest import S3_SECRET, S3Bucket

LABELS = np.array([0, 1, 0, 1], dtype=np.int64)


def _cv(seed: float) -> CVResult:
    """Two folds of a 2-class problem; each fold model a distinct weight, so a mix-up shows."""
    folds = []
    for fold, val in enumerate((np.array([0, 1]), np.array([2, 3]))):
        history = [EpochRecord(0, 1.0, 0.9, 0.5 + seed / 10, 0.01, 1.0)]
        probs = np.full((2, 2), 0.5, np.float32) + np.float32(seed / 100)
        folds.append(FoldResult(fold, history, 0, val, probs, 0, {"w": torch.full((3,), seed + fold)}))
    return CVResult(folds, LABELS, 2)


def _run_trial(study: optuna.Study, store: TrialStore | None, value: float) -> optuna.trial.FrozenTrial:
    """A trial as the objective runs it: its record, its fold models saved while it runs, then told."""
    trial = study.ask()
    cv = _cv(value)
    recorder = TrialRecorder(trial)
    recorder.progress([[epoch_summary(r) for r in f.history] for f in cv.folds])
    recorder.folds_done(cv.folds)
    if store is not None:
        store.save(trial, cv)
    study.tell(trial, value)
    return study.trials[trial.number]


@pytest.fixture(params=["folder", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "folder":
        return str(tmp_path / "shared")
    return request.getfixturevalue("s3_bucket").url


def _study(tmp_path: Path, name: str = "data") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'db.sqlite'}", direction="maximize")


def test_fold_models_round_trip_under_keys_any_machine_finds(store_url: str, tmp_path: Path) -> None:
    study = _study(tmp_path)
    here = study_artifacts(study, store_url, Workdir(tmp_path / "machine1"), record=True)
    saved = _run_trial(study, study_trial_store(study, here, Workdir(tmp_path / "machine1"), record=True), 0.8)
    # another machine: its own workdir, no flag; the study says where the store is
    loaded = optuna.load_study(study_name="data", storage=study._storage)
    there = study_artifacts(loaded, None, Workdir(tmp_path / "machine2"))
    assert there.url == Location.parse(store_url).url and there.key == f"autocls/data.{study._study_id}"
    store = study_trial_store(loaded, there, Workdir(tmp_path / "machine2"))
    cv = store.load(saved, LABELS, 2, "accuracy")
    assert cv is not None and [f.fold for f in cv.folds] == [0, 1]
    assert torch.equal(cv.folds[1].state_dict["w"], torch.full((3,), 1.8))
    np.testing.assert_array_equal(cv.folds[1].val_indices, [2, 3])
    key = f"{there.key}/trials/{saved.number}"
    for name in ("fold0.safetensors", "fold1.safetensors", "folds.safetensors"):
        read_bytes(there.store, f"{key}/{name}")  # the layout of the module's docstring
    assert saved.user_attrs["fold_models"] == f"{there.url}/{key}/"
    assert not (tmp_path / "machine2" / "artifacts").exists()  # nothing of the study's in the machine's own folder


def test_a_trial_is_not_there_until_its_index_is_written(store_url: str, tmp_path: Path) -> None:
    """The fold models go first, ``folds.safetensors`` last: a reader never loads a half-written trial."""
    study = _study(tmp_path)
    artifacts = study_artifacts(study, store_url, Workdir(tmp_path), record=True)
    store = study_trial_store(study, artifacts, Workdir(tmp_path))
    writes = []
    original = store.places[0].store.write
    store.places[0].store.write = lambda key, body: (writes.append(key), original(key, body))[1]  # type: ignore[method-assign]
    trial = study.ask()
    store.save(trial, _cv(0.5))
    assert [k.rsplit("/", 1)[1] for k in writes] == ["fold0.safetensors", "fold1.safetensors", "folds.safetensors"]
    store.places[0].store.remove(writes[-1])
    assert not store.has(trial.number)


def test_a_folder_store_never_shows_part_of_an_object(tmp_path: Path) -> None:
    """Optuna's folder store writes in place; a write that fails half-way must leave nothing at the key."""

    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # the first 4 bytes, then the writer dies
            if getattr(self, "sent", False):
                raise OSError("disk gone")
            self.sent = True
            buffer[:4] = b"half"
            return 4

    store = open_store(Location.parse(str(tmp_path / "store")), create=True)
    (tmp_path / "store" / "trials" / "0").mkdir(parents=True)  # (Optuna's store needs the folder)
    store.write("trials/0/fold0.safetensors", io.BytesIO(b"whole"))
    with pytest.raises(OSError, match="disk gone"):
        store.write("trials/0/folds.safetensors", io.BufferedReader(Failing()))
    with pytest.raises(ArtifactNotFound):
        store.open_reader("trials/0/folds.safetensors")
    assert [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()] == ["fold0.safetensors"]


def test_deletion_waits_for_the_grace_period_and_spares_running_and_best_trials(store_url: str, tmp_path: Path) -> None:
    now = [0.0]
    study = _study(tmp_path)
    artifacts = study_artifacts(study, store_url, Workdir(tmp_path), record=True)
    store = study_trial_store(study, artifacts, Workdir(tmp_path), keep=2, record=True)
    store = TrialStore(store.places, 2, grace_seconds=60, clock=lambda: now[0])
    trials = [_run_trial(study, store, value) for value in (0.5, 0.9, 0.7)]
    running = study.ask()  # saves its models while it runs: no worker may take them
    store.save(running, _cv(0.1))
    assert store.retain_best(study) == {1, 2}
    assert all(store.has(n) for n in (0, 1, 2, running.number))  # trial 0 is out, but only just seen out
    now[0] = 59.0
    store.retain_best(study)
    assert store.has(0)
    now[0] = 60.0
    store.retain_best(study)
    assert not store.has(0) and store.load(trials[0], LABELS, 2, "accuracy") is None
    assert all(store.has(n) for n in (1, 2, running.number))
    # another process (a second worker) counts from its own first sighting, never from this one's
    other = TrialStore(store.places, 2, grace_seconds=60, clock=lambda: now[0])
    _run_trial(study, store, 0.95)  # trial 4 pushes trial 2 out
    other.retain_best(study)
    now[0] = 100.0
    other.retain_best(study)
    assert store.has(2)  # 40 s since `other` first saw it out
    now[0] = 121.0
    other.retain_best(study)
    assert not store.has(2) and store.has(1) and store.has(running.number)


def test_keep_is_the_studys_not_the_workers(tmp_path: Path) -> None:
    study = _study(tmp_path)
    artifacts = study_artifacts(study, str(tmp_path / "shared"), Workdir(tmp_path), record=True)
    study_trial_store(study, artifacts, Workdir(tmp_path), keep=3, record=True)
    assert study.user_attrs[KEEP_ATTR] == 3
    # a worker started without --keep-trials keeps the study's number, not its default
    worker = study_trial_store(study, artifacts, Workdir(tmp_path / "other"), record=True, grace_seconds=0)
    for value in (0.5, 0.9, 0.7, 0.8):
        _run_trial(study, worker, value)
    assert worker.retain_best(study) == {1, 2, 3} and not worker.has(0)
    # a later --keep-trials is the study's from then on, for every worker already running
    study_trial_store(study, artifacts, Workdir(tmp_path), keep=1, record=True)
    assert study_keep(study) == 1 and worker.retain_best(study) == {1}
    assert worker.best(study) == [1] and not worker.is_candidate(study, 0.85)


def test_the_store_recorded_on_the_study_and_which_url_wins(tmp_path: Path, monkeypatch) -> None:
    study = _study(tmp_path)
    shared = tmp_path / "shared"
    # no flag, nothing recorded: the workdir's own folder, and nothing recorded but the key
    default = study_artifacts(study, None, Workdir(tmp_path / "w1"), record=True)
    assert default.default and default.url == str((tmp_path / "w1" / "artifacts").resolve())
    assert study.user_attrs[ARTIFACTS_ATTR] == {"url": None, "key": default.key}
    # the first search given a store records it, and later commands without the flag use it
    study_artifacts(study, str(shared), Workdir(tmp_path / "w1"), record=True)
    assert study.user_attrs[ARTIFACTS_ATTR]["url"] == str(shared.resolve())
    assert study_artifacts(study, None, Workdir(tmp_path / "w2")).url == str(shared.resolve())
    # the same folder mounted elsewhere holds the study's marker: accepted, and the record stays
    mounted = tmp_path / "mnt"
    shutil.copytree(shared, mounted)  # a second mount point of the same folder, as far as autocls can tell
    store = study_artifacts(study, f"file://{mounted}", Workdir(tmp_path / "w2"), record=True)
    assert store.url == str(mounted.resolve())
    assert study.user_attrs[ARTIFACTS_ATTR]["url"] == str(shared.resolve())
    # another store would split the study: one line that says what to do
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(AutoclsError, match="recorded on the study") as err:
        study_artifacts(study, str(elsewhere), Workdir(tmp_path / "w2"), record=True)
    assert "Drop --artifacts" in str(err.value) and "\n" not in str(err.value)
    # the recorded folder missing on this machine: not created there behind the user's back
    moved = _study(tmp_path, "moved")
    study_artifacts(moved, str(tmp_path / "gone"), Workdir(tmp_path), record=True)
    shutil.rmtree(tmp_path / "gone")
    with pytest.raises(AutoclsError, match="not on this machine"):
        study_artifacts(moved, None, Workdir(tmp_path), record=True)
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/x", "gs:// is not supported"),
        ("s3://", "is not a bucket name"),
        ("s3://Bad_Bucket/x", "is not a bucket name"),
        (f"s3://AKIA:{S3_SECRET}@bucket/x", "must not hold credentials"),
        ("   ", "is empty"),
    ],
)
def test_a_bad_url_is_one_line_that_shows_no_secret(url: str, message: str) -> None:
    with pytest.raises(AutoclsError, match=message) as err:
        Location.parse(url)
    assert S3_SECRET not in str(err.value) and "\n" not in str(err.value)


def test_s3_problems_are_one_line_each(s3_bucket: S3Bucket, monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(AutoclsError, match="does not exist") as err:
        open_store(Location.parse("s3://no-such-bucket-here/x"))
    assert S3_SECRET not in str(err.value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(AutoclsError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_store(Location.parse(s3_bucket.url))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing answers
    with pytest.raises(AutoclsError, match=r"cannot reach the S3 endpoint 127\.0\.0\.1:9") as err:
        open_store(Location.parse(s3_bucket.url))
    assert S3_SECRET not in str(err.value)
    monkeypatch.setitem(sys.modules, "boto3", None)  # not installed
    with pytest.raises(AutoclsError, match=r"pip install 'autocls\[s3\]'"):
        open_store(Location.parse(s3_bucket.url))


def test_a_prefix_keeps_the_study_inside_its_part_of_the_bucket(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    import boto3

    study = _study(tmp_path)
    artifacts = study_artifacts(study, s3_bucket.url, Workdir(tmp_path), record=True)
    _run_trial(study, study_trial_store(study, artifacts, Workdir(tmp_path)), 0.5)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket.bucket)["Contents"]]
    assert keys and all(k.startswith(f"runs/{artifacts.key}/") for k in keys)
    marker = json.loads(read_bytes(artifacts.store, f"{artifacts.key}/study.json"))
    assert marker == {"study": "data", "key": artifacts.key}


def test_a_study_searched_before_artifact_stores_still_reads_its_fold_models(tmp_path: Path) -> None:
    """Today's main kept fold models in WORKDIR/STUDY/trials/N/: read there, and cleaned up there."""
    study = _study(tmp_path)
    workdir = tmp_path / "runs"
    legacy = TrialStore.in_folder(workdir / "data" / "trials", keep=5)
    trials = [_run_trial(study, legacy, value) for value in (0.5, 0.9)]
    assert sorted(p.name for p in (workdir / "data" / "trials").iterdir()) == ["0", "1"]
    store = study_trial_store(
        study, study_artifacts(study, None, Workdir(workdir), record=True), Workdir(workdir), grace_seconds=0
    )
    cv = store.load(trials[1], LABELS, 2, "accuracy")
    assert cv is not None and torch.equal(cv.folds[0].state_dict["w"], torch.full((3,), 0.9))
    assert store.kept(study) == [1, 0]
    study.set_user_attr(KEEP_ATTR, 1)
    store.retain_best(study)
    assert sorted(p.name for p in (workdir / "data" / "trials").iterdir()) == ["1"]


def test_optunas_own_folder_store_reads_what_ours_writes(tmp_path: Path) -> None:
    """The folder store is Optuna's, writing aside first: the dashboard and Optuna read it as ever."""
    ours = AtomicFileSystemArtifactStore(tmp_path)
    ours.write("a/b", io.BytesIO(b"figure"))
    assert FileSystemArtifactStore(tmp_path).open_reader("a/b").read() == b"figure"
    assert Place(ours, "p/", "x").key(3, "fold0.safetensors") == "p/3/fold0.safetensors"


def test_a_bad_artifacts_flag_stops_the_search_before_anything_is_written(
    image_folder: Path, tmp_path: Path, capsys
) -> None:
    from autocls.cli.main import main

    code = main(["search", str(image_folder), "--workdir", str(tmp_path / "runs"), "--artifacts", "gs://bucket/x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "gs:// is not supported" in err
    assert not (tmp_path / "runs").exists()


def test_the_dashboard_reads_every_store_the_storages_studies_recorded(tmp_path: Path) -> None:
    from autocls.storage.artifacts import FirstFoundArtifactStore, dashboard_store

    shared, workdir = tmp_path / "shared", tmp_path / "runs"
    first = _study(tmp_path, "first")
    study_artifacts(first, str(shared), Workdir(workdir), record=True).store.write("figure-1", io.BytesIO(b"one"))
    second = _study(tmp_path, "second")  # searched without a store: the workdir's folder
    study_artifacts(second, None, Workdir(workdir), record=True).store.write("figure-2", io.BytesIO(b"two"))
    store, urls = dashboard_store(first._storage, None, Workdir(workdir))
    assert isinstance(store, FirstFoundArtifactStore)
    assert urls == [str(shared.resolve()), str((workdir / "artifacts").resolve())]
    assert read_bytes(store, "figure-1") == b"one" and read_bytes(store, "figure-2") == b"two"
    with pytest.raises(ArtifactNotFound):
        store.open_reader("figure-3")
    only, urls = dashboard_store(first._storage, str(shared), Workdir(workdir))  # --artifacts: that store alone
    assert urls == [str(shared.resolve())] and read_bytes(only, "figure-1") == b"one"
