"""Helpers the tests share: tiny generated images in class folders, a tiny search space, space edits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import v2

TINY_SPACE = """
description = "tests: timm's 100k-parameter test model, 24 px, 2 epochs"

[fixed]
backbone = "test_efficientnet"
pretrained = false
resolution = 24
epochs = 2
patience = 2
batch_size = 8
warmup_epochs = 0

[params.optimizer]
choices = ["adamw", "sgd"]

[params.momentum]
low = 0.8
high = 0.95
when = { optimizer = ["sgd"] }

[params.lr]
low = 0.003
high = 0.03
log = true

[params.augmentation]
choices = ["none", "light"]
"""


def class_image(label: int, rng: np.random.Generator, size: int = 16) -> Image.Image:
    """An image whose dominant colour channel is its class: learnable in a couple of epochs."""
    pixels = rng.integers(0, 60, size=(size, size, 3))
    pixels[..., label % 3] += 180
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="RGB")


def write_class_folders(root: Path, classes: int = 3, per_class: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    suffixes = [".png", ".PNG", ".jpg", ".JPEG"]
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(label, rng).save(folder / f"img {i}{suffixes[i % len(suffixes)]}")
    return root


def edit_space(path: Path, replacements: dict[str, str]) -> None:
    """Rewrite a space file with text replacements (each must be present)."""
    text = path.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)


# The per-image torchvision policies that autocls.train.augment's batched ones replaced: the reference
# for their statistics (tests/test_augment.py) and speed (bench/throughput.py).
TORCHVISION_POLICIES = {
    "light": lambda: [
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(15),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ],
    "randaugment": lambda: [v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=2, magnitude=9)],
    "trivialaugment": lambda: [v2.RandomHorizontalFlip(), v2.TrivialAugmentWide()],
    "autoaugment": lambda: [v2.RandomHorizontalFlip(), v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)],
}
