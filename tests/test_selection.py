"""Ensemble selection across trials and test-time augmentation, decided on out-of-fold predictions."""

from __future__ import annotations

import numpy as np
import pytest

from autocls.final import testtime
from autocls.final.selection import blend, select_ensemble
from autocls.model.views import TTA_VIEWS
from autocls.train.metrics import get_metric

ACCURACY = get_metric("accuracy")


def one_hot(labels: np.ndarray, classes: int, confidence: float) -> np.ndarray:
    probs = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    probs[np.arange(len(labels)), labels] = confidence
    return probs


@pytest.fixture
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 3, size=300)


def test_a_better_trial_is_chosen_alone_over_a_worse_one(labels: np.ndarray) -> None:
    good = one_hot(labels, 3, 0.8)
    noise = np.random.default_rng(1).dirichlet(np.ones(3), size=len(labels))
    selection = select_ensemble([noise, good], labels, ACCURACY)
    assert selection.weights == {1: 1.0}
    assert selection.best_single == 1 and selection.score == selection.best_single_score == 1.0


def test_complementary_trials_are_blended_and_beat_each_alone(labels: np.ndarray) -> None:
    """Each trial is right on a different two thirds of the images, confidently, and wrong elsewhere
    with little confidence: the blend is right on all of them."""
    rng = np.random.default_rng(2)
    thirds = rng.integers(0, 3, size=len(labels))
    wrong = (labels + 1) % 3
    members = []
    for blind in range(3):
        probs = one_hot(labels, 3, 0.9)
        miss = thirds == blind
        probs[miss] = one_hot(wrong[miss], 3, 0.5)
        members.append(probs)
    selection = select_ensemble(members, labels, ACCURACY)
    assert len(selection.weights) >= 2  # any two cover each other's blind third
    assert sum(selection.weights.values()) == pytest.approx(1.0)
    assert selection.score == 1.0 > selection.best_single_score
    assert ACCURACY(labels, blend(members, selection.weights)) == selection.score


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_never_worse_than_the_best_trial_on_oof(labels: np.ndarray, seed: int, metric: str) -> None:
    rng = np.random.default_rng(seed)
    truth = one_hot(labels, 3, 1.0)
    candidates = [rng.uniform(0.2, 0.8) * truth + rng.dirichlet(np.ones(3), size=len(labels)) for _ in range(5)]
    candidates = [c / c.sum(axis=1, keepdims=True) for c in candidates]
    m = get_metric(metric)
    sign = 1.0 if m.greater_is_better else -1.0

    def score(y: np.ndarray, p: np.ndarray) -> float:
        return sign * m(y, p)

    selection = select_ensemble(candidates, labels, score)
    assert sum(selection.weights.values()) == pytest.approx(1.0)
    assert all(0 < w <= 1 for w in selection.weights.values())
    assert selection.score >= max(score(labels, c) for c in candidates)
    assert score(labels, blend(candidates, selection.weights)) == pytest.approx(selection.score)


class _Data:
    """What ``choose_tta`` reads of prepared data: the labels."""

    class images:
        labels: np.ndarray


def _choose(labels: np.ndarray, plain: np.ndarray, views: dict[str, np.ndarray], monkeypatch, criterion=None, **kw):
    """``choose_tta`` of one member, with ``views`` as the catalogue and their out-of-fold predictions;
    chosen on ``criterion`` (accuracy by default), scored in accuracy."""
    monkeypatch.setattr(testtime, "TTA_VIEWS", dict.fromkeys(views))
    monkeypatch.setattr(testtime, "_view_oof", lambda candidate, view, data, device: views[view])
    _Data.images.labels = labels
    covered = np.ones(len(labels), dtype=bool)
    return testtime.choose_tta(
        [(None, 1.0)], _Data, None, criterion=criterion or ACCURACY, score=ACCURACY, plain=plain, covered=covered, **kw
    )


@pytest.mark.parametrize(("flip_helps", "expected"), [(True, ["hflip"]), (False, [])])
def test_flip_tta_is_kept_only_when_it_raises_the_oof_score(
    labels: np.ndarray, monkeypatch: pytest.MonkeyPatch, flip_helps: bool, expected: list[str]
) -> None:
    from autocls.model.views import TTA_VIEWS

    plain = one_hot(labels, 3, 0.6)
    plain[:60] = one_hot((labels[:60] + 1) % 3, 3, 0.4)  # wrong on 60 images, with little confidence
    flipped = one_hot(labels, 3, 0.9) if flip_helps else one_hot((labels + 2) % 3, 3, 0.9)
    assert list(TTA_VIEWS) == ["hflip"]
    tta, oof, scores = _choose(labels, plain, {"hflip": flipped}, monkeypatch)
    assert tta == expected
    np.testing.assert_allclose(oof, (plain + flipped) / 2 if flip_helps else plain)
    assert scores["none"] == pytest.approx(0.8)
    assert list(scores) == (["none", "hflip"] if flip_helps else ["none"])
    if flip_helps:
        assert scores["hflip"] == pytest.approx(1.0)


def test_views_are_added_while_each_raises_the_oof_criterion(
    labels: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy forward selection over a catalogue of views, here on log loss: the view that lowers it
    most is kept first, then the one that lowers it further with it; a view that raises it
    (confidently wrong) never; the deployment limits can stop it earlier."""
    from sklearn.metrics import log_loss

    plain = one_hot(labels, 3, 0.5)
    views = {
        "wrong": one_hot((labels + 2) % 3, 3, 0.9),
        "good": one_hot(labels, 3, 0.8),
        "sharp": one_hot(labels, 3, 0.9),
    }

    def criterion(y: np.ndarray, p: np.ndarray) -> float:
        return -log_loss(y, p, labels=[0, 1, 2])

    tta, oof, scores = _choose(labels, plain, views, monkeypatch, criterion=criterion, allowed=lambda views: True)
    assert tta == ["sharp", "good"]  # alone, sharp lowers it more; with it, good still helps
    np.testing.assert_allclose(oof, (plain + views["sharp"] + views["good"]) / 3)
    assert list(scores) == ["none", "sharp", "sharp+good"]  # each step, in the metric's units
    tta, _, _ = _choose(labels, plain, views, monkeypatch, criterion=criterion, allowed=lambda views: views <= 2)
    assert tta == ["sharp"]  # limits that allow the image and one view


@pytest.mark.slow
def test_refit_recommends_a_selected_ensemble_that_predicts_and_exports(image_folder, tiny_space, tmp_path) -> None:
    """Up to four kept trials at two resolutions: refit's default model never scores below the best trial
    on out-of-fold predictions, its manifest lists members and weights, and it predicts, reloads
    and exports (one input per resolution) to the same probabilities."""
    import json

    import onnxruntime
    import torch

    import autocls
    from autocls.data.images import decode_images, resize_batch
    from autocls.model.ensemble import Ensemble
    from autocls.model.export import export
    from tests.helpers import edit_space

    edit_space(
        tiny_space,
        {
            "resolution = 24\n": "",
            "[params.optimizer]": "[params.resolution]\nchoices = [16, 24]\n\n[params.optimizer]",
        },
    )
    workdir = tmp_path / "runs"
    study = autocls.search(image_folder, trials=4, folds=2, space=str(tiny_space), workdir=workdir)
    ensemble = autocls.refit(study, workdir=workdir)
    manifest = json.loads((workdir / "data" / "model" / "manifest.json").read_text())
    complete = [t.number for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 2 and sorted(manifest["selection"]["candidates"]) == complete  # all kept (keep 5)
    weights = [m["weight"] for m in manifest["members"]]
    assert sum(weights) == pytest.approx(1.0) and len(weights) == len(ensemble.members)
    selection = manifest["selection"]  # never worse than the best trial alone on what it was chosen on
    assert selection["criterion"] == "log_loss"
    assert selection["oof_criterion_selected"] <= selection["oof_criterion_best_trial"]
    kept = manifest["tta"]  # each view kept is a step of the greedy choice, in order, after "none"
    assert list(selection["oof_score_tta"]) == ["none", *("+".join(kept[: i + 1]) for i in range(len(kept)))]
    assert set(kept) <= set(TTA_VIEWS)

    images, _, _ = decode_images(sorted(image_folder.rglob("*.*")), ensemble.decode_size)
    expected = ensemble.predict_images(images)
    np.testing.assert_allclose(
        Ensemble.load(workdir / "data" / "model", "cpu").predict_images(images), expected, atol=1e-6
    )
    inputs = [resize_batch(images, r) for r in ensemble.resolutions]
    torchscript = export(workdir / "data" / "model", tmp_path / "m.pt", "torchscript")
    got = torch.jit.load(str(torchscript))(*inputs).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    onnx = export(workdir / "data" / "model", tmp_path / "m.onnx", "onnx")
    session = onnxruntime.InferenceSession(str(onnx))
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, atol=1e-4)


def test_a_two_member_ensemble_is_the_weighted_mean_of_its_members(tmp_path) -> None:
    """Members at different resolutions, weights 0.25/0.75 and a flip view: saved, reloaded and
    predicted as the weighted mean of each member's own fold average."""
    from dataclasses import replace

    import torch

    from autocls.model.ensemble import Ensemble, Member
    from autocls.model.manifest import Manifest, MemberSpec
    from autocls.train.backbones import create_classifier
    from autocls.train.config import TrainConfig

    torch.manual_seed(0)
    configs = [TrainConfig(backbone="test_efficientnet", pretrained=False, resolution=r) for r in (16, 24)]
    specs = [
        MemberSpec(c, w, (0.5,) * 3, (0.25,) * 3, folds=2, trial=n)
        for n, (c, w) in enumerate(zip(configs, (0.25, 0.75), strict=True))
    ]
    members = [Member(m, [create_classifier(m.config, 3, load_weights=False) for _ in range(2)]) for m in specs]
    manifest = Manifest(("a", "b", "c"), 32, tuple(specs), tta=("hflip",))
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    saved = Ensemble(members, manifest).save(tmp_path / "model")
    loaded = Ensemble.load(saved, "cpu")
    alone = [
        Ensemble([Member(replace(m.spec, weight=1.0), m.models)], manifest).predict_images(images)
        for m in loaded.members
    ]
    np.testing.assert_allclose(loaded.predict_images(images), 0.25 * alone[0] + 0.75 * alone[1], atol=1e-6)
    # exported: one input per resolution, ascending, the flip view inside the graph
    import onnxruntime

    from autocls.data.images import resize_batch
    from autocls.model.export import export

    inputs = [resize_batch(images, r) for r in (16, 24)]
    traced = torch.jit.load(str(export(saved, tmp_path / "m.pt", "torchscript")))
    np.testing.assert_allclose(traced(*inputs).detach().numpy(), loaded.predict_images(images), atol=1e-5)
    session = onnxruntime.InferenceSession(str(export(saved, tmp_path / "m.onnx", "onnx")))
    assert sorted(p.name for p in tmp_path.glob("m.onnx*")) == ["m.onnx"]  # one file: the weights inside it
    assert [i.name for i in session.get_inputs()] == ["images_16", "images_24"]
    outputs = session.run(None, {"images_16": inputs[0].numpy(), "images_24": inputs[1].numpy()})[0]
    np.testing.assert_allclose(outputs, loaded.predict_images(images), atol=1e-5)
    assert sorted(p.name for p in saved.glob("*.safetensors")) == [
        "fold0.safetensors",
        "fold1.safetensors",
        "member1_fold0.safetensors",
        "member1_fold1.safetensors",
    ]


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy"])
def test_selection_criterion_is_the_log_loss_of_the_probabilities(metric: str) -> None:
    """A member that flips no decision but makes the blend surer of the right class is worth adding on
    log loss, where accuracy cannot see it; balanced metrics weigh each class's images alike."""
    from sklearn.metrics import log_loss

    from autocls.final.refit import selection_criterion

    labels = np.array([0, 0, 0, 1])
    probs = np.array([[0.6, 0.4], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    name, criterion = selection_criterion(metric, False, labels, lambda y, p: 0.0)
    weights = np.array([1 / 3, 1 / 3, 1 / 3, 1.0]) if metric == "balanced_accuracy" else None
    assert name == "log_loss"
    assert criterion(labels, probs) == pytest.approx(-log_loss(labels, probs, sample_weight=weights))
    surer = np.array([[0.9, 0.1], [0.9, 0.1], [0.45, 0.55], [0.1, 0.9]])  # the same decisions
    assert criterion(labels, surer) > criterion(labels, probs)
    assert selection_criterion("mAP", True, labels, len)[0] == "mAP"  # multi-label keeps its metric
