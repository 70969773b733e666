"""Write scikit-learn's bundled digits (1,797 8x8 grayscale images, 10 classes) as an image folder.

    python examples/prepare_digits.py examples/data/digits [--holdout 0.2]

makes ``train/<digit>/*.png`` and, with a holdout fraction, ``test/<digit>/*.png`` (stratified),
so ``autocls search examples/data/digits/train`` and ``autocls predict`` have data offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def write_digits(out: Path, holdout: float = 0.2, seed: int = 0, limit: int | None = None) -> dict[str, int]:
    """Write the digits under ``out``; ``limit`` keeps a stratified subset of that many images."""
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    index = np.arange(len(images))
    if limit is not None and limit < len(index):
        index, _ = train_test_split(index, train_size=limit, stratify=digits.target, random_state=seed)
    train, test = train_test_split(index, test_size=holdout, stratify=digits.target[index], random_state=seed)
    counts = {}
    for split, chosen in (("train", train), ("test", test)):
        for i in chosen:
            folder = out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i:04d}.png"
            if path.is_file():
                continue  # written by an earlier run: kept as it is, so a study of it can continue
            image = Image.fromarray(images[i], mode="L").resize((32, 32), Image.Resampling.NEAREST)
            image.save(path)
        counts[split] = len(chosen)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--holdout", type=float, default=0.2)
    args = parser.parse_args()
    counts = write_digits(args.out, args.holdout)
    print(f"wrote {counts['train']} training and {counts['test']} held-out digits under {args.out}")


if __name__ == "__main__":
    main()
