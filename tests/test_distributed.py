"""A search on several machines: workers with their own workdirs, one PostgreSQL study, one artifact store.

Each "machine" here is a process with its own ``--workdir``; the store is the loopback S3 server
(tests/conftest.py) or a shared folder. Refit and the dashboard run from a third workdir.
"""

from __future__ import annotations

import json
import shutil
import socket
import urllib.request
from pathlib import Path

import optuna
import pytest

from autocls.cli.main import main
from autocls.storage.rdb import open_storage
from tests.conftest import S3_SECRET
from tests.test_workers import POSTGRES_URL, cli, running_has_history, wait_for

# end-to-end: the CLI and subprocesses
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_leftover_connections")]

needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="needs AUTOCLS_TEST_POSTGRES_URL (scripts/postgres.sh)")


def fresh_postgres_study() -> str:
    if "data" in [s.study_name for s in optuna.get_all_study_summaries(POSTGRES_URL)]:
        optuna.delete_study(study_name="data", storage=POSTGRES_URL)
    return POSTGRES_URL


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:
        return None


@needs_postgres
@pytest.mark.parametrize("kind", ["s3", "shared folder"])
def test_refit_on_a_third_machine_reuses_every_kept_trial_of_two_workers(
    kind: str, image_folder: Path, tiny_space: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = fresh_postgres_study()
    store = request.getfixturevalue("s3_bucket").url if kind == "s3" else str(tmp_path / "shared")
    search = ["search", str(image_folder), "--space", str(tiny_space), "--folds", "2", "--storage", storage]
    search += ["--no-pruning", "--quiet"]
    first = cli(*search, "--trials", "2", "--artifacts", store, "--workdir", str(tmp_path / "machine1"))
    wait_for(lambda: running_has_history(storage))  # machine 1 created the study and trains its first trial
    # machine 2 joins without --artifacts: the store recorded on the study is its store too
    second = cli(*search, "--trials", "4", "--workdir", str(tmp_path / "machine2"))
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), outputs
    study = optuna.load_study(study_name="data", storage=open_storage(storage))
    ran_by = {t.number: t.user_attrs["worker"]["pid"] for t in study.trials if t.state.name == "COMPLETE"}
    on_first = {n for n, pid in ran_by.items() if pid == first.pid}
    on_second = {n for n, pid in ran_by.items() if pid == second.pid}
    assert on_first and on_second and len(ran_by) >= 4
    assert not (tmp_path / "machine1" / "data" / "trials").exists()  # nothing kept in a machine's own folders

    out = tmp_path / "model"
    refit = cli("refit", "--storage", storage, "--workdir", str(tmp_path / "machine3"), "--out", str(out))
    refit_out, refit_err = refit.communicate(timeout=600)
    assert refit.returncode == 0, refit_err
    manifest = json.loads((out / "manifest.json").read_text())
    # every completed trial is kept (5 by default) and was a candidate, from both machines; none trained
    assert sorted(manifest["selection"]["candidates"]) == sorted(ran_by)
    assert {m["fold_models"] for m in manifest["members"]} == {"reused from the search"}
    assert manifest["fold_models"] == "reused from the search"
    assert "training" not in refit_out + refit_err and "reusing the 2 fold models" in refit_err, refit_err
    outputs.append((refit_out, refit_err))

    if kind == "s3":  # the dashboard, from the third machine without --artifacts, serves both machines' figures
        port = free_port()
        dashboard = cli(
            *("dashboard", "--storage", storage, "--workdir", str(tmp_path / "machine3"), "--port", str(port)),
            env={"PYTHONUNBUFFERED": "1"},  # its lines reach the pipe before it is stopped
        )
        try:
            study_id = study._study_id
            for number in (min(on_first), min(on_second)):
                trial = study.trials[number]
                meta = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)[0]
                url = f"http://127.0.0.1:{port}/artifacts/{study_id}/{trial._trial_id}/{meta.artifact_id}"
                wait_for(lambda url=url: fetch(url) is not None, seconds=60)
                assert fetch(url).startswith(b"<svg")
        finally:
            dashboard.terminate()
            outputs.append(dashboard.communicate(timeout=60))
        assert store in outputs[-1][0]  # it says which store it reads
    password = storage.split(":")[2].split("@")[0]
    shown = repr(outputs) + repr(study.user_attrs) + repr([t.user_attrs for t in study.trials])
    assert S3_SECRET not in shown and password not in shown
    recorded = study.user_attrs["artifacts"]["url"]
    assert recorded == (store if kind == "s3" else str(Path(store).resolve()))


def test_a_study_searched_before_artifact_stores_refits_without_training(
    image_folder: Path, tiny_space: Path, tmp_path: Path, capsys
) -> None:
    """Today's main kept fold models in WORKDIR/STUDY/trials/N/ and recorded nothing on the study."""
    workdir = tmp_path / "runs"
    args = ["search", str(image_folder), "--space", str(tiny_space), "--folds", "2", "--workdir", str(workdir)]
    assert main([*args, "--trials", "2", "--no-pruning", "--quiet"]) == 0
    storage = f"sqlite:///{workdir / 'autocls.db'}"
    study = optuna.load_study(study_name="data", storage=storage)
    # as main left it: the old folder, and no store or number of kept trials on the study
    shutil.move(workdir / "artifacts" / "autocls" / f"data.{study._study_id}" / "trials", workdir / "data" / "trials")
    for name in ("artifacts", "keep_trials"):
        study.set_user_attr(name, None)
    capsys.readouterr()
    assert main(["refit", "--workdir", str(workdir), "--out", str(tmp_path / "model")]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert sorted(manifest["selection"]["candidates"]) == [0, 1]
    assert "training" not in printed and manifest["fold_models"] == "reused from the search"


@needs_postgres
def test_a_store_the_study_did_not_record_is_refused_in_one_line(
    image_folder: Path, tiny_space: Path, tmp_path: Path
) -> None:
    storage = fresh_postgres_study()
    search = ["search", str(image_folder), "--space", str(tiny_space), "--folds", "2", "--storage", storage]
    assert main([*search, "--trials", "1", "--artifacts", str(tmp_path / "shared"), "--quiet"]) == 0
    (tmp_path / "elsewhere").mkdir()
    env = {"AUTOCLS_ARTIFACTS": str(tmp_path / "elsewhere")}  # the environment, as the flag
    refit = cli("refit", "--storage", storage, "--workdir", str(tmp_path / "w2"), env=env)
    _out, err = refit.communicate(timeout=600)
    assert refit.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "recorded on the study" in err and str((tmp_path / "shared").resolve()) in err
