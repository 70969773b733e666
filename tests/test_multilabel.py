"""Multi-label images: reading the labels, folds, thresholds, metrics, the trainer, and the CLI end to end."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from autocls.api import _data_spec
from autocls.cli.main import main
from autocls.data.discover import check_folds, discover
from autocls.data.images import ImageStore
from autocls.data.multilabel import choose_thresholds, decide, label_sets, parse_label_sets
from autocls.model.ensemble import Ensemble
from autocls.model.manifest import Manifest, Thresholds
from autocls.runtime.errors import AutoclsError
from autocls.train.config import TrainConfig
from autocls.train.cv import FoldData, cross_validate, stratified_folds
from autocls.train.metrics import default_metric, get_metric
from autocls.train.trainer import Trainer
from tests.helpers import TINY_SPACE, class_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from prepare_multilabel import write_digit_mosaics, write_shapes


def write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        class_image(i % 3, rng).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    return names


# -- reading labels -----------------------------------------------------------------------------
def test_label_cells_with_the_delimiter_make_a_label_matrix(tmp_path: Path, caplog) -> None:
    names = write_images(tmp_path, 4)
    (tmp_path / "labels.csv").write_text(f"file,labels\n{names[0]},cat;dog\n{names[1]},dog\n{names[2]}, dog ;;bird;\n")
    data = discover(tmp_path / "labels.csv")
    assert data.multilabel and data.class_names == ("bird", "cat", "dog")
    assert data.labels.tolist() == [[0, 1, 1], [0, 0, 1], [1, 0, 1]]
    assert data.class_counts() == {"bird": 1, "cat": 1, "dog": 3}
    assert data.label_names() == ["cat;dog", "dog", "bird;dog"]
    # an empty cell of a multi-label CSV: an image with none of the labels, named, kept as a negative
    (tmp_path / "labels.csv").write_text(f"file,labels\n{names[0]},cat;dog\n{names[1]},\n{names[2]},dog\n")
    with caplog.at_level(logging.WARNING):
        data = discover(tmp_path / "labels.csv")
    assert data.labels.tolist() == [[1, 1], [0, 0], [0, 1]]
    assert "1 rows have none of the labels (rows 3)" in caplog.text


def test_one_row_per_image_and_label_adds_up(tmp_path: Path) -> None:
    names = write_images(tmp_path, 2)
    csv = tmp_path / "labels.csv"
    csv.write_text(f"file,labels\n{names[0]},cat\n{names[1]},dog\n{names[0]},dog\n")
    with pytest.raises(AutoclsError, match=r"two different labels.*separated by ';'"):
        discover(csv)  # single-label: an image under two classes is a conflict
    data = discover(csv, label_delimiter=";")  # multi-label, as the user says: the rows add up
    assert data.labels.tolist() == [[1, 1], [0, 1]]


def test_one_01_column_per_label(tmp_path: Path) -> None:
    names = write_images(tmp_path, 3)
    csv = tmp_path / "tags.csv"
    csv.write_text(f"image,beach,people,sunset\n{names[0]},1,0,1\n{names[1]},0,1,0\n{names[2]},0,0,0\n")
    data = discover(csv)
    assert data.multilabel and data.class_names == ("beach", "people", "sunset")
    assert data.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    # exactly one 1 per row: one-hot columns of single-label data
    csv.write_text(f"image,beach,people\n{names[0]},1,0\n{names[1]},0,1\n")
    single = discover(csv)
    assert not single.multilabel and single.labels.tolist() == [0, 1]


def test_a_label_column_no_image_has_is_named_and_left_out(tmp_path: Path, caplog) -> None:
    names = write_images(tmp_path, 3)
    csv = tmp_path / "tags.csv"
    csv.write_text(f"image,beach,people,sunset\n{names[0]},1,1,0\n{names[1]},0,1,0\n{names[2]},1,0,0\n")
    with caplog.at_level(logging.WARNING):
        data = discover(csv)
    assert data.class_names == ("beach", "people") and "no image has the label columns ['sunset']" in caplog.text
    csv.write_text(f"image,beach,people\n{names[0]},0,0\n{names[1]},0,0\n")
    with pytest.raises(AutoclsError, match="no image has a label"):
        discover(csv)


def test_a_cell_that_is_not_0_or_1_is_named(tmp_path: Path) -> None:
    names = write_images(tmp_path, 12)
    rows = "".join(f"{n},1,0,1\n" for n in names[:-1]) + f"{names[-1]},1,yes,0\n"
    (tmp_path / "tags.csv").write_text("image,beach,people,sunset\n" + rows)
    with pytest.raises(AutoclsError, match=r"row 13 column 'people' is 'yes'"):
        discover(tmp_path / "tags.csv")


def test_labels_separated_by_another_character(tmp_path: Path, caplog) -> None:
    names = write_images(tmp_path, 3)
    csv = tmp_path / "labels.csv"
    csv.write_text(f"file,labels\n{names[0]},cat|dog\n{names[1]},dog\n{names[2]},cat\n")
    with caplog.at_level(logging.WARNING):
        data = discover(csv)  # without a delimiter: 'cat|dog' may be a class name; said, not refused
    assert not data.multilabel and "cat|dog" in data.class_names
    assert "1 label cells hold '|' (rows 2)" in caplog.text and "--label-delimiter '|'" in caplog.text
    with pytest.raises(AutoclsError, match=r"no label cell holds the label delimiter ';', but 1 hold '\|'"):
        discover(csv, label_delimiter=";")
    assert discover(csv, label_delimiter="|").labels.tolist() == [[1, 1], [0, 1], [1, 0]]
    csv.write_text(f"file,labels\n{names[0]},cat;dog\n{names[1]},dog\n")
    with pytest.raises(AutoclsError, match=r"no label cell holds the label delimiter '\|', but 1 hold ';'"):
        discover(csv, label_delimiter="|")
    with pytest.raises(AutoclsError, match="'label_delimiter' parameter must be a non-empty separator"):
        discover(csv, label_delimiter="x")


def test_labels_seen_less_often_than_the_folds_are_named(tmp_path: Path) -> None:
    names = write_images(tmp_path, 6)
    rows = "".join(f"{n},cat;dog\n" for n in names[:5]) + f"{names[5]},cat;bird\n"
    (tmp_path / "labels.csv").write_text("file,labels\n" + rows)
    with pytest.raises(AutoclsError, match="1 labels have fewer images than the 3 folds \\('bird' has 1\\)"):
        check_folds(discover(tmp_path / "labels.csv"), 3)


def test_a_dataframe_of_label_lists_or_01_columns(tmp_path: Path) -> None:
    names = write_images(tmp_path / "img", 3)
    paths = [str(tmp_path / "img" / n) for n in names]
    frame = pd.DataFrame({"path": paths, "tags": [["cat", "dog"], ("dog",), set()]})
    data = _data_spec(frame, tmp_path / "w1", "s").discover()
    assert data.multilabel and data.labels.tolist() == [[1, 1], [0, 1], [0, 0]]
    frame = pd.DataFrame({"path": paths, "cat": [1, 0, 0], "dog": [True, True, False]})
    data = _data_spec(frame, tmp_path / "w2", "s").discover()
    assert data.multilabel and data.labels.tolist() == [[1, 1], [0, 1], [0, 0]]


def test_the_example_sets_are_multilabel_csvs(tmp_path: Path) -> None:
    counts = write_digit_mosaics(tmp_path / "mosaics", count=40)
    train = discover(tmp_path / "mosaics" / "train.csv")
    assert counts == {"train": 30, "test": 10} and train.multilabel and len(train) == 30
    assert set(train.class_names) <= {str(d) for d in range(10)}
    assert train.labels.sum(axis=1).min() >= 1 and train.labels.sum(axis=1).max() <= 4
    write_shapes(tmp_path / "shapes", count=40, size=24)
    shapes = discover(tmp_path / "shapes" / "test.csv", label_delimiter=";")
    assert shapes.multilabel and set(shapes.class_names) <= {"circle", "cross", "square", "triangle"}
    assert shapes.labels.sum(axis=1).max() <= 3


# -- folds, metrics, thresholds -----------------------------------------------------------------
def test_folds_keep_every_label_proportion() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 6)) < np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.6])).astype(np.uint8)
    splits = stratified_folds(labels, 5, seed=0)
    assert sorted(np.concatenate([v for _, v in splits]).tolist()) == list(range(300))
    expected = labels.sum(axis=0) / 5
    for _, val in splits:
        assert np.all(np.abs(labels[val].sum(axis=0) - expected) <= 1.5)
    again = stratified_folds(labels, 5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again, strict=True))


def test_multilabel_metrics() -> None:
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[0.9, 0.2, 0.6], [0.3, 0.8, 0.4], [0.7, 0.4, 0.1], [0.1, 0.1, 0.2]])
    assert get_metric("mAP", multilabel=True)(y, p) == pytest.approx(average_precision_score(y, p, average="macro"))
    assert get_metric("macro_f1", multilabel=True)(y, p) == pytest.approx(f1_score(y, p >= 0.5, average="macro"))
    assert get_metric("hamming", multilabel=True)(y, p) == pytest.approx(1 / 12)
    assert get_metric("hamming").direction == "minimize" and get_metric("mAP").direction == "maximize"
    # a label no image has leaves AP undefined: the mean is over the labels that have images
    assert get_metric("mAP")(y[:, :2], p[:, :2]) == pytest.approx(average_precision_score(y[:, :2], p[:, :2]))
    with pytest.raises(AutoclsError, match=r"must be one of \['mAP', .*\] for multi-label data. Got 'accuracy'"):
        get_metric("accuracy", multilabel=True)
    assert default_metric({"a": 10, "b": 1}, multilabel=True) == "mAP"


def test_thresholds_maximise_each_labels_f1_on_the_probabilities_they_are_chosen_on() -> None:
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 1], [0, 0]])
    p = np.array([[0.35, 0.1], [0.3, 0.2], [0.2, 0.3], [0.1, 0.9], [0.05, 0.4]])
    thresholds = choose_thresholds(y, p)
    assert 0.2 < thresholds[0] < 0.3 and 0.4 < thresholds[1] <= 0.9
    assert decide(p, thresholds).tolist() == y.tolist()  # F1 1 where a threshold separates the label
    # a label without a positive keeps 0.5
    assert choose_thresholds(np.zeros((3, 1)), np.array([[0.1], [0.7], [0.2]]))[0] == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_chosen_thresholds_never_lower_f1_below_one_half(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random((200, 4)) < 0.3).astype(np.uint8)
    p = np.clip(y * rng.uniform(0.1, 0.6) + rng.random((200, 4)) * 0.6, 0, 1)
    tuned = f1_score(y, decide(p, choose_thresholds(y, p)), average=None, zero_division=0)
    fixed = f1_score(y, p >= 0.5, average=None, zero_division=0)
    assert np.all(tuned >= fixed - 1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_micro_thresholds_never_lower_pooled_f1_below_the_per_label_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random((300, 5)) < np.array([0.5, 0.3, 0.1, 0.05, 0.4])).astype(np.uint8)
    p = np.clip(y * rng.uniform(0.05, 0.5, size=5) + rng.random((300, 5)) * 0.6, 0, 1).round(2)  # ties
    per_label = f1_score(y, decide(p, choose_thresholds(y, p)), average="micro")
    pooled = choose_thresholds(y, p, average="micro")
    assert f1_score(y, decide(p, pooled), average="micro") >= per_label - 1e-12
    assert f1_score(y, decide(p, pooled), average="micro") >= f1_score(y, p >= 0.5, average="micro") - 1e-12


def test_label_sets_round_trip() -> None:
    matrix = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    cells = label_sets(matrix, ["a", "b", "c"])
    assert cells == ["a;c", "", "b"]
    assert parse_label_sets([*cells[:1], float("nan"), cells[2]], ["a", "b", "c"]).tolist() == matrix.tolist()


# -- training -----------------------------------------------------------------------------------
def two_colour_images(count: int, seed: int = 0) -> tuple[ImageStore, np.ndarray]:
    """Images whose red and green halves are bright independently: two labels, four label sets."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((count, 2)) < 0.5).astype(np.uint8)
    pixels = rng.integers(0, 60, size=(count, 3, 16, 16)).astype(np.uint8)
    pixels[labels[:, 0] == 1, 0, :8] += 180
    pixels[labels[:, 1] == 1, 1, 8:] += 180
    return ImageStore(torch.from_numpy(pixels)), labels


@pytest.mark.parametrize("options", [{}, {"mixup": 0.4, "label_smoothing": 0.1, "imbalance": "class_weight"}])
def test_a_multilabel_trainer_learns_independent_labels(options: dict) -> None:
    store, labels = two_colour_images(96)
    config = TrainConfig.from_dict(
        dict(
            backbone="test_efficientnet",
            pretrained=False,
            resolution=16,
            epochs=6,
            batch_size=16,
            lr=0.01,
            optimizer="adamw",
            warmup_epochs=0,
            **options,
        )
    )
    splits = stratified_folds(labels, 2, seed=0)
    cv = cross_validate(config, FoldData(store, labels, splits, 2), torch.device("cpu"), metric="mAP")
    assert cv.oof_probs.shape == (96, 2) and np.all((cv.oof_probs >= 0) & (cv.oof_probs <= 1))
    assert not np.allclose(cv.oof_probs.sum(axis=1), 1.0)  # independent sigmoids, not a softmax
    assert cv.oof_score() > 0.9, cv.oof_score()


def test_multilabel_class_weights_and_sampler_weights() -> None:
    labels = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0]])
    config = TrainConfig.from_dict(dict(backbone="test_efficientnet", pretrained=False, imbalance="class_weight"))
    trainer = Trainer(config, 2, torch.device("cpu"), multilabel=True)
    pos_weight, sampler = trainer._balancing(labels)
    assert sampler is None and pos_weight.tolist() == pytest.approx([1 / 3, 3.0])  # negatives / positives
    trainer = trainer.with_config(TrainConfig.from_dict({**config.to_dict(), "imbalance": "sampler"}))
    assert trainer.multilabel
    _, weights = trainer._balancing(labels)
    # an image is drawn with the inverse frequency of its rarest label; one with none, the least
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 6, 2.0, 4 / 6])


def test_multilabel_soft_targets_mix_each_label_without_summing_to_one() -> None:
    from autocls.final.distill import soft_targets

    teacher = np.array([[0.9, 0.8], [0.2, 0.1]], dtype=np.float32)
    labels = np.array([[1, 0], [0, 0]], dtype=np.uint8)
    np.testing.assert_allclose(soft_targets(teacher, labels, 0.0), teacher)
    np.testing.assert_allclose(soft_targets(teacher, labels, 0.5), [[0.95, 0.4], [0.1, 0.05]], rtol=1e-6)


def _labels_manifest(names: tuple[str, ...], thresholds: tuple[float, ...] | None) -> Manifest:
    """A manifest of no members: what prediction's table and decisions read."""
    return Manifest(names, 16, (), thresholds=Thresholds(thresholds) if thresholds is not None else None)


def test_a_manifest_with_wrong_thresholds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AutoclsError, match="thresholds must be 2 numbers in \\[0, 1\\]"):
        _labels_manifest(("a", "b"), (0.5,))
    with pytest.raises(AutoclsError, match="thresholds must be 2 numbers"):
        _labels_manifest(("a", "b"), (0.5, 1.5))
    ensemble = Ensemble([], _labels_manifest(("a", "b"), (0.3, 0.8)))
    frame = ensemble.to_frame(["x", "y"], np.array([[0.4, 0.7], [0.9, 0.9]]))
    assert frame["label"].tolist() == ["a", "a;b"] and list(frame.columns) == ["path", "label", "prob_a", "prob_b"]


def test_label_lists_in_a_dataframe_become_a_multilabel_csv(tmp_path: Path) -> None:
    """What the estimator hands the search for ``y`` of label lists (an empty one: none of the labels)."""
    names = write_images(tmp_path / "img", 3)
    frame = pd.DataFrame({"file": [tmp_path / "img" / n for n in names], "label": [["dog", "cat"], ["dog"], []]})
    data = _data_spec(frame, tmp_path / "w", "study").discover()
    assert data.multilabel and data.class_names == ("cat", "dog")
    assert data.labels.tolist() == [[1, 1], [0, 1], [0, 0]]


@pytest.mark.slow
def test_the_estimator_takes_label_lists_and_predicts_an_indicator_matrix(tmp_path: Path) -> None:
    """A real search and refit through the scikit-learn estimator, nothing mocked."""
    from autocls.api import ImageClassifier

    write_shapes(tmp_path / "shapes", count=40, size=24, colour_by_shape=True)
    table = pd.read_csv(tmp_path / "shapes" / "train.csv", keep_default_na=False)
    paths = [str(tmp_path / "shapes" / name) for name in table.iloc[:, 0]]
    y = [cell.split(";") if cell else [] for cell in table.iloc[:, 1]]
    (tmp_path / "tiny.toml").write_text(TINY_SPACE)
    clf = ImageClassifier(space=str(tmp_path / "tiny.toml"), trials=1, folds=2, workdir=str(tmp_path / "w"))
    clf.fit(paths, y)
    names = sorted({label for labels in y for label in labels})
    assert clf.classes_.tolist() == names and clf.ensemble_.multilabel
    searched = clf.setup_.data.discover()  # the study's data: the label lists as a 0/1 matrix
    rows = dict(zip(map(str, searched.paths), searched.labels.tolist(), strict=True))
    assert [rows[str(Path(p).resolve())] for p in paths] == parse_label_sets(table.iloc[:, 1].tolist(), names).tolist()
    predicted = clf.predict(paths[:5])
    assert predicted.tolist() == decide(clf.predict_proba(paths[:5]), clf.ensemble_.thresholds).tolist()
    assert predicted.shape == (5, len(names))


def test_a_single_label_model_refuses_multilabel_test_data(tmp_path: Path, monkeypatch) -> None:
    from autocls.report import evaluate as evaluation

    names = write_images(tmp_path, 2)
    (tmp_path / "labels.csv").write_text(f"file,labels\n{names[0]},a;b\n{names[1]},b\n")
    single = Ensemble([], _labels_manifest(("a", "b"), None))
    monkeypatch.setattr(evaluation, "duplicates_of_training", lambda *args: [])
    with pytest.raises(AutoclsError, match="images have several labels, but the model predicts one class per image"):
        evaluation.evaluate(single, tmp_path / "labels.csv")


# -- end to end ---------------------------------------------------------------------------------
MACRO_F1_FLOOR = 0.6  # the tiny untrained test network, 4 epochs, 90 images: measured 0.79-0.87


@pytest.mark.slow
def test_multilabel_search_refit_predict_evaluate_report_export(tmp_path: Path, capsys) -> None:
    write_shapes(tmp_path / "shapes", count=160, size=24, colour_by_shape=True)
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE.replace("epochs = 2", "epochs = 4"))
    workdir = tmp_path / "runs"
    train_csv = tmp_path / "shapes" / "train.csv"
    common = ["--workdir", str(workdir), "--quiet"]
    assert main(["search", str(train_csv), "--space", str(space), "--folds", "3", "--trials", "2", *common]) == 0
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{workdir / 'autocls.db'}")
    metas = optuna.artifacts.get_all_artifact_meta(study.best_trial, storage=study._storage)
    assert sorted(m.filename for m in metas) == ["label_ap.svg", "loss_curves.svg", "score_curves.svg"]
    assert main(["refit", *common]) == 0
    assert "at the label thresholds, out-of-fold macro F1" in capsys.readouterr().out
    model = workdir / "train" / "model"
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["multilabel"] is True and manifest["metric"] == "mAP"
    assert manifest["class_names"] == ["circle", "cross", "square", "triangle"]
    assert len(manifest["thresholds"]) == 4 and all(0 < t < 1 for t in manifest["thresholds"])
    assert manifest["calibration"] == {}  # sigmoid outputs are not temperature-scaled

    images = sorted((tmp_path / "shapes" / "images").glob("*.png"))[:5]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model), *map(str, images), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["path", "label", *(f"prob_{n}" for n in manifest["class_names"])]
    probs = table.filter(like="prob_").to_numpy()
    expected = label_sets(decide(probs, manifest["thresholds"]), manifest["class_names"])
    assert table["label"].tolist() == expected

    test_csv = tmp_path / "shapes" / "test.csv"
    assert main(["evaluate", str(model), str(test_csv), "--out-dir", str(tmp_path / "eval"), "--quiet"]) == 0
    assert "per-label report" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 40 and metrics["macro_f1"] > MACRO_F1_FLOOR, metrics
    per_label = pd.read_csv(tmp_path / "eval" / "per_label.csv")
    assert list(per_label.columns) == ["label", "precision", "recall", "f1", "AP", "threshold", "support"]
    truth = parse_label_sets(pd.read_csv(test_csv, keep_default_na=False)["labels"].tolist(), manifest["class_names"])
    assert per_label["support"].tolist() == truth.sum(axis=0).tolist()

    report = tmp_path / "report.html"
    assert main(["report", str(model), "--out", str(report), "--workdir", str(workdir)]) == 0
    html = report.read_text()
    for section in ("Per-label precision", "Label co-occurrence", "Most confused labels", "Label distribution"):
        assert section in html
    assert "confusion matrix" not in html.lower().replace("co-occurrence", "")

    # a student learns the teacher's label probabilities and keeps its thresholds
    student_dir = tmp_path / "student"
    assert main(["distill", str(model), "--out", str(student_dir), "--epochs", "3", "--quiet"]) == 0
    student = Ensemble.load(student_dir, "cpu")
    assert student.multilabel and student.thresholds.tolist() == manifest["thresholds"]
    source = student.manifest.distilled_from
    teacher = Ensemble.load(model, "cpu")
    train = discover(train_csv)
    negatives = 1 - teacher.decisions(teacher.predict_proba(list(train.paths))).mean()
    # above what a student that learnt nothing (every label off) would share with the teacher
    assert negatives < source.agreement_on_training_images <= 1.0, (negatives, source)
    assert main(["evaluate", str(student_dir), str(test_csv), "--quiet"]) == 0
    assert "per-label report" in capsys.readouterr().out

    graph_file = tmp_path / "model.pt"
    assert main(["export", str(model), "--out", str(graph_file)]) == 0
    ensemble = Ensemble.load(model, "cpu")
    batch = ensemble._decode(images)
    from autocls.data.images import resize_batch

    graph = torch.jit.load(str(graph_file))
    with torch.no_grad():
        graph_probs, graph_labels = graph(resize_batch(batch, ensemble.resolutions[0]))
    assert graph_probs.numpy() == pytest.approx(ensemble.predict_images(batch), abs=1e-5)
    assert graph_labels.numpy().tolist() == decide(graph_probs.numpy(), ensemble.thresholds).tolist()
    import onnxruntime

    onnx_file = tmp_path / "model.onnx"
    assert main(["export", str(model), "--out", str(onnx_file), "--format", "onnx"]) == 0
    session = onnxruntime.InferenceSession(str(onnx_file))
    assert [o.name for o in session.get_outputs()] == ["probabilities", "labels"]
    onnx_probs, onnx_labels = session.run(None, {"images": resize_batch(batch, ensemble.resolutions[0]).numpy()})
    assert onnx_probs == pytest.approx(graph_probs.numpy(), abs=1e-5)
    assert onnx_labels.tolist() == graph_labels.numpy().tolist()
