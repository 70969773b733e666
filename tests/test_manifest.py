"""The typed manifest: models saved before it still load and predict, JSON round trips, and every
bad manifest is one line that names the file and says what to do."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from autocls.data.images import resize_batch
from autocls.model.calibration import scale
from autocls.model.ensemble import Ensemble
from autocls.model.manifest import FORMAT_VERSION, MANIFEST, Manifest, Thresholds, fold_files
from autocls.runtime.errors import AutoclsError
from autocls.train.backbones import create_classifier
from autocls.train.config import TrainConfig
from autocls.train.feeding import norm_tensors, normalise

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "manifests"
SAVED_BEFORE = sorted(p.name for p in FIXTURES.glob("*.json"))


def _leaves(value: object, prefix: str = "") -> dict[str, object]:
    """Every scalar of a JSON value by its path (``members[1].weight``)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{prefix}.{key}".lstrip(".")).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def _model_folder(manifest_file: str, folder: Path) -> dict:
    """A model folder of ``manifest_file`` with fold weights of the shapes it describes (seeded)."""
    raw = json.loads((FIXTURES / manifest_file).read_text())
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / manifest_file, folder / MANIFEST)
    torch.manual_seed(0)
    for index, member in enumerate(raw["members"]):
        config = TrainConfig.from_dict(member["config"])
        for name in fold_files(index, member["folds"]):
            model = create_classifier(config, len(raw["class_names"]), load_weights=False)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / name)
    return raw


def test_the_fixtures_are_todays_manifests() -> None:
    assert SAVED_BEFORE == ["format2-multilabel.json", "format2-single-label.json", "format2-student.json"]


@pytest.mark.parametrize("name", SAVED_BEFORE)
def test_a_model_saved_before_the_typed_manifest_loads_and_predicts(name: str, tmp_path: Path) -> None:
    """Members, weights, views, temperature and thresholds are read as written, and prediction is
    each member's fold models on its own resolution and normalisation (and views), weighed, scaled."""
    raw = _model_folder(name, tmp_path / "model")
    ensemble = Ensemble.load(tmp_path / "model", "cpu")
    assert ensemble.class_names == raw["class_names"] and ensemble.decode_size == raw["preprocessing"]["decode_size"]
    assert [(m.trial, m.weight, len(m.models)) for m in ensemble.members] == [
        (m["trial"], m["weight"], m["folds"]) for m in raw["members"]
    ]
    assert list(ensemble.tta) == raw["tta"]
    assert ensemble.temperature == raw.get("calibration", {}).get("temperature", 1.0)
    assert ensemble.multilabel == bool(raw.get("multilabel"))
    if ensemble.multilabel:
        assert ensemble.thresholds.tolist() == raw["thresholds"]

    images = torch.randint(0, 256, (5, 3, ensemble.decode_size, ensemble.decode_size), dtype=torch.uint8)
    expected = np.zeros((5, len(raw["class_names"])))
    with torch.no_grad():
        for member, written in zip(ensemble.members, raw["members"], strict=True):
            mean, std = norm_tensors(tuple(written["mean"]), tuple(written["std"]), torch.device("cpu"))
            x = normalise(resize_batch(images, written["config"]["resolution"]), mean, std)
            views = [x] + ([torch.flip(x, dims=[3])] if "hflip" in raw["tta"] else [])
            outputs = [model(v) for v in views for model in member.models]
            probs = [o.sigmoid() if ensemble.multilabel else o.softmax(1) for o in outputs]
            expected += written["weight"] * torch.stack(probs).mean(0).numpy()
    if not ensemble.multilabel:
        expected = scale(expected, ensemble.temperature)
    np.testing.assert_allclose(ensemble.predict_images(images), expected, atol=1e-5)


@pytest.mark.parametrize("name", SAVED_BEFORE)
def test_the_manifest_keeps_every_value_it_read(name: str, tmp_path: Path) -> None:
    """Read and written again, a manifest holds every value of the file as it was; read again, it
    is the same record."""
    raw = json.loads((FIXTURES / name).read_text())
    manifest = Manifest.from_json(raw)
    written = manifest.to_json()
    before, after = _leaves(raw), _leaves(written)
    assert {k: after.get(k, "missing") for k in before} == before
    assert Manifest.from_json(written) == manifest
    assert manifest.format_version == FORMAT_VERSION == 2


def test_what_the_dataclasses_hold(tmp_path: Path) -> None:
    multi = Manifest.from_json(json.loads((FIXTURES / "format2-multilabel.json").read_text()))
    assert multi.lead.trial == 1 and multi.provenance.trial == 1 and multi.scores.metric == "mAP"
    assert multi.thresholds is not None and multi.thresholds.maximise == "macro F1" and multi.calibration is None
    assert multi.selection is not None and sorted(multi.selection.candidates) == [0, 1]
    assert multi.data.spec is not None and multi.data.spec.source.endswith("train.csv")
    student = Manifest.from_json(json.loads((FIXTURES / "format2-student.json").read_text()))
    assert student.distilled_from is not None and student.distilled_from.members[0].folds == 2
    assert student.provenance.fold_models == "distilled" and student.scores.oof_score is None


def test_a_format_1_manifest_is_one_member(tmp_path: Path) -> None:
    """Format 1 (one trial): the configuration and normalisation at the top, no members."""
    raw = json.loads((FIXTURES / "format2-single-label.json").read_text())
    old = {k: v for k, v in raw.items() if k not in ("members", "selection", "tta", "calibration")}
    old["format_version"] = 1
    manifest = Manifest.from_json(old)
    (member,) = manifest.members
    assert member.config == TrainConfig.from_dict(raw["config"]) and member.weight == 1.0
    assert (member.folds, member.trial, list(member.mean)) == (2, 0, raw["preprocessing"]["mean"])


def _edited(edit) -> dict:
    raw = json.loads((FIXTURES / "format2-single-label.json").read_text())
    edit(raw)
    return raw


BAD = {
    "damaged": ("{ edited by hand", "not a readable autocls manifest (damaged: not JSON at line 1)", "refit"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8", "refit"),
    "foreign": ({"architectures": ["ResNet"], "model_type": "resnet"}, "not an autocls manifest", "model folder"),
    "a list": ([1, 2], "not an autocls manifest", "model folder"),
    "newer": (_edited(lambda m: m.update(format_version=FORMAT_VERSION + 1)), "written by a newer autocls", "upgrade"),
    "no members": (_edited(lambda m: m.pop("members")), "incomplete autocls manifest (members is missing)", "refit"),
    "no decode size": (
        _edited(lambda m: m["preprocessing"].pop("decode_size")),
        "preprocessing.decode_size is missing",
        "refit",
    ),
    "member without config": (
        _edited(lambda m: m["members"][0].pop("config")),
        "members[0].config is missing",
        "refit",
    ),
    "weight as text": (
        _edited(lambda m: m["members"][0].update(weight="1")),
        "members[0].weight must be a number",
        "refit",
    ),
    "unknown setting": (
        _edited(lambda m: m["members"][0]["config"].update(colour="red")),
        "unknown training settings ['colour']",
        "refit",
    ),
    "zero temperature": (
        _edited(lambda m: m["calibration"].update(temperature=0.0)),
        "calibration temperature must be a positive number",
        "refit",
    ),
    "incomplete calibration": (
        _edited(lambda m: m["calibration"].pop("ece_after")),
        "calibration.ece_after is missing",
        "refit",
    ),
    "unknown view": (_edited(lambda m: m.update(tta=["rotate"])), "unknown test-time views ['rotate']", "refit"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_manifest_is_one_line_naming_the_file_and_the_remedy(case: str, tmp_path: Path) -> None:
    content, says, remedy = BAD[case]
    path = tmp_path / "model" / MANIFEST
    path.parent.mkdir()
    path.write_bytes(
        content
        if isinstance(content, bytes)
        else str(content).encode()
        if isinstance(content, str)
        else json.dumps(content).encode()
    )
    with pytest.raises(AutoclsError) as caught:
        Manifest.read(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert says in message and remedy in message
    for name in ("JSONDecodeError", "KeyError", "TypeError", "ValueError", "UnicodeDecodeError", "Exception"):
        assert name not in message
    with pytest.raises(AutoclsError, match="^" + str(path).replace("\\", "\\\\")):
        Ensemble.load(path.parent, "cpu")  # loading a model reads it the same way


def test_a_manifest_is_frozen_and_validated_when_built() -> None:
    raw = json.loads((FIXTURES / "format2-single-label.json").read_text())
    manifest = Manifest.from_json(raw)
    with pytest.raises(AttributeError):
        manifest.tta = ("hflip",)  # type: ignore[misc]
    with pytest.raises(AutoclsError, match=r"thresholds must be 3 numbers in \[0, 1\], one per label; got \[0.5\]\.$"):
        dataclasses.replace(manifest, thresholds=Thresholds((0.5,)))
    with pytest.raises(AutoclsError, match=r"^m.json: the manifest's thresholds must be 3 .* run autocls refit"):
        Manifest.from_json({**raw, "multilabel": True, "thresholds": [0.5]}, "m.json")
