"""The commands' parts that need no search, moved out of the end-to-end files marked slow so that
``-m 'not slow'`` runs them: the generated CLI reference, ``space show``, the estimator's study
names, and what ``--workers`` hands each child."""

from __future__ import annotations

from pathlib import Path

from autocls.cli.main import main


def test_space_show_prints_every_dimension(capsys) -> None:
    assert main(["space", "show", "fast"]) == 0
    out = capsys.readouterr().out
    for name in ("backbone", "freeze", "optimizer", "momentum", "scheduler", "augmentation", "batch_size"):
        assert name in out


def test_cli_reference_in_docs_is_generated_from_the_parser() -> None:
    from autocls.cli.docs import cli_reference

    docs = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    assert docs.read_text() == cli_reference(), "run: python -m autocls.cli.docs > docs/cli.md"


def test_estimator_fits_on_other_data_search_their_own_studies(image_folder: Path) -> None:
    from autocls.api import _estimator_study_name

    files = sorted(str(p) for p in image_folder.rglob("*.*"))
    labels = [Path(f).parent.name for f in files]
    name = _estimator_study_name(files, labels)
    assert name == _estimator_study_name(list(reversed(files)), list(reversed(labels)))  # same data, same study
    assert name != _estimator_study_name(files[:-1], labels[:-1])
    assert name != _estimator_study_name(files, [*labels[:-1], "class_0"])


def test_each_worker_gets_its_share_of_the_cores_and_one_gpu_of_several() -> None:
    from autocls.study.workers import worker_envs

    envs = worker_envs(4, cores=16, gpus=2, base={"PATH": "/bin"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1"]
    assert {e["AUTOCLS_THREADS"] for e in envs} == {"4"} and [e["AUTOCLS_WORKER"] for e in envs] == list("0123")
    chosen = worker_envs(2, cores=2, gpus=2, base={"CUDA_VISIBLE_DEVICES": "3,5"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in chosen] == ["3", "5"]  # the user's selection is respected
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in worker_envs(2, cores=2, gpus=1, base={}))


def test_a_worker_gets_every_setting_of_the_parents_request(image_folder: Path, tiny_space: Path) -> None:
    """--workers children get the parent's SearchRequest whole: a field left out of the hand-off fails here."""
    import dataclasses

    from autocls.data.discover import DataSpec
    from autocls.study.setup import SearchRequest
    from autocls.study.space import load_space

    defaults = SearchRequest(DataSpec.of(image_folder))
    asked = SearchRequest(
        data=DataSpec.of(image_folder, file_column="f", label_column="l"),
        workdir=Path("/tmp/w"),
        storage="journal:/tmp/w/j",
        study_name="s",
        space=str(tiny_space),
        trials=7,
        timeout=90.5,
        folds=3,
        seed=4,
        metric="balanced_accuracy",
        device="cpu",
        weights=str(image_folder),
        sampler="random",
        pruning=False,
        warm_start=False,
        keep_trials=2,
        artifacts="s3://bucket/prefix",
        max_latency_ms=12.5,
        max_params=1_000_000,
    )
    changed = {f.name for f in dataclasses.fields(SearchRequest) if getattr(asked, f.name) != getattr(defaults, f.name)}
    assert changed == {f.name for f in dataclasses.fields(SearchRequest)}  # every setting differs from its default
    assert SearchRequest.from_json(asked.to_json()) == asked
    loaded = dataclasses.replace(asked, space=load_space(str(tiny_space)))
    assert SearchRequest.from_json(loaded.to_json()).space.to_dict() == loaded.space.to_dict()
