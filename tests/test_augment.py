"""Batched augmentation keeps the statistics of torchvision's per-image transforms it replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from autocls.train.augment import create_augmentation
from tests.helpers import TORCHVISION_POLICIES

SAMPLES = 1200


def halves(n: int = SAMPLES, size: int = 32) -> torch.Tensor:
    """White left half, black right half: a horizontal flip swaps them."""
    images = torch.zeros((n, 3, size, size), dtype=torch.uint8)
    images[..., : size // 2] = 255
    return images


def bar(n: int = SAMPLES, size: int = 48) -> torch.Tensor:
    """A thin horizontal white bar through the centre: its angle after augmentation is the rotation."""
    images = torch.zeros((n, 3, size, size), dtype=torch.uint8)
    images[:, :, size // 2 - 1 : size // 2 + 1, 8:-8] = 255
    return images


def flipped_fraction(out: torch.Tensor) -> float:
    half = out.shape[-1] // 2
    return float((out[..., half:].mean(dim=(1, 2, 3)) > out[..., :half].mean(dim=(1, 2, 3))).float().mean())


def bar_angles(out: torch.Tensor) -> np.ndarray:
    """Degrees of each image's bright-pixel principal axis (second moments), in (-90, 90]."""
    weights = out.float().mean(dim=1)
    weights = weights / weights.sum(dim=(1, 2), keepdim=True)
    size = out.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    mx, my = (weights * xs).sum((1, 2)), (weights * ys).sum((1, 2))
    cxx = (weights * (xs - mx[:, None, None]) ** 2).sum((1, 2))
    cyy = (weights * (ys - my[:, None, None]) ** 2).sum((1, 2))
    cxy = (weights * (xs - mx[:, None, None]) * (ys - my[:, None, None])).sum((1, 2))
    return np.degrees(0.5 * np.arctan2(2 * cxy.numpy(), (cxx - cyy).numpy()))


def per_image(policy: str, images: torch.Tensor) -> torch.Tensor:
    """The torchvision per-image path the batched one replaced."""
    transform = v2.Compose(TORCHVISION_POLICIES[policy]())
    return torch.stack([transform(image) for image in images]).float() / 255.0


def test_flips_and_rotations_have_the_per_image_statistics() -> None:
    torch.manual_seed(0)
    batched = create_augmentation("light")(halves())
    reference = per_image("light", halves())
    assert flipped_fraction(batched) == pytest.approx(0.5, abs=0.05)
    assert flipped_fraction(batched) == pytest.approx(flipped_fraction(reference), abs=0.07)

    angles, reference_angles = bar_angles(create_augmentation("light")(bar())), bar_angles(per_image("light", bar()))
    for sample in (angles, reference_angles):  # uniform on [-15, 15]: std 15 / sqrt(3) = 8.66 degrees
        assert np.abs(sample).max() <= 16.5 and np.abs(sample).max() >= 14.0
        assert sample.std() == pytest.approx(8.66, abs=0.8)
    assert abs(angles.mean()) < 1.0


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_automatic_policies_draw_for_each_image_not_once_per_batch(policy: str) -> None:
    torch.manual_seed(1)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8))
    batch = image.expand(64, -1, -1, -1).contiguous()
    out = create_augmentation(policy)(batch)
    assert out.dtype == torch.float32 and out.shape == batch.shape and 0.0 <= out.min() <= out.max() <= 1.0
    distinct = len({tuple(o.flatten()[::97].round(decimals=3).tolist()) for o in out})
    assert distinct >= 16  # one draw per batch would give at most 2 (flipped or not)
    # how often an image is left almost as it was: close to torchvision's per-image policy
    changed = (out - batch.float() / 255).abs().mean(dim=(1, 2, 3)) > 0.01
    reference = per_image(policy, batch)
    reference_changed = (reference - batch.float() / 255).abs().mean(dim=(1, 2, 3)) > 0.01
    assert float(changed.float().mean()) == pytest.approx(float(reference_changed.float().mean()), abs=0.2)


def test_random_erasing_blacks_out_a_box_in_the_images_it_picks() -> None:
    torch.manual_seed(2)
    white = torch.full((400, 3, 32, 32), 255, dtype=torch.uint8)
    out = create_augmentation("none", random_erasing=0.5)(white)
    erased = (out == 0).all(dim=1).flatten(1).any(dim=1)
    assert float(erased.float().mean()) == pytest.approx(0.5, abs=0.08)
    assert create_augmentation("none") is None  # nothing to do: the trainer skips the step
