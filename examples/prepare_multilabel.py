"""Write multi-label image sets offline: generated shapes, and mosaics of scikit-learn's digits.

    python examples/prepare_multilabel.py shapes examples/data/shapes [--count 600]
    python examples/prepare_multilabel.py digits examples/data/digit-mosaics [--count 1200]

Each writes ``images/*.png``, ``train.csv`` and ``test.csv`` (``file,labels`` rows, the labels of
an image separated by ``;``), so that ``autocls search examples/data/shapes/train.csv`` searches a
multi-label study and ``autocls evaluate MODEL examples/data/shapes/test.csv`` scores it.

* shapes: 0-3 of circle, square, triangle and cross on a noisy background; the labels are the
  shapes present (an image with none has an empty label cell: negative for every label).
* digits: 2x2 mosaics of the bundled 8x8 digits (1,797 real handwritten images), each cell a digit
  or blank; the labels are the digits present. Train and test mosaics use disjoint digit images.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
SHAPE_COLOURS = {"circle": (230, 60, 60), "square": (60, 200, 60), "triangle": (70, 90, 240), "cross": (230, 200, 40)}


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:
        width = max(1, (x1 - x0) // 4)
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)
        draw.line([(x0, y1), (x1, y0)], fill=colour, width=width)


def shapes_image(rng: np.random.Generator, size: int, colour_by_shape: bool) -> tuple[Image.Image, list[str]]:
    """One image with 0-3 distinct shapes in separate quadrants, and the shapes' names."""
    pixels = rng.integers(0, 50, size=(size, size, 3)).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(image)
    present = sorted(rng.choice(SHAPES, size=int(rng.integers(0, 4)), replace=False).tolist())
    half = size // 2
    for shape, quadrant in zip(present, rng.permutation(4)):
        left, top = (quadrant % 2) * half, (quadrant // 2) * half
        side = int(rng.integers(half * 6 // 10, half - 1))
        x0, y0 = left + int(rng.integers(0, half - side)), top + int(rng.integers(0, half - side))
        colour = SHAPE_COLOURS[shape] if colour_by_shape else tuple(int(c) for c in rng.integers(90, 256, size=3))
        _draw(draw, shape, (x0, y0, x0 + side, y0 + side), colour)
    return image, present


def write_shapes(
    out: Path, count: int = 600, size: int = 32, holdout: float = 0.25, seed: int = 0, colour_by_shape: bool = False
) -> dict[str, int]:
    """Write ``count`` shape images under ``out`` and split them into train.csv and test.csv.

    ``colour_by_shape`` gives each shape its own colour (learnable by a tiny untrained network in a
    few epochs, for tests); otherwise colours are random and only the shape tells."""
    rng = np.random.default_rng(seed)
    rows = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, labels = shapes_image(rng, size, colour_by_shape)
        name = f"images/shape_{i:05d}.png"
        image.save(out / name)
        rows.append((name, ";".join(labels)))
    return _write_split(out, rows, holdout, rng)


def write_digit_mosaics(out: Path, count: int = 1200, holdout: float = 0.25, seed: int = 0) -> dict[str, int]:
    """Write ``count`` 2x2 mosaics (32x32 px) of the bundled digits, 1-4 digits each; train and test
    mosaics are built from disjoint shares of the digit images (``1 - holdout`` and ``holdout``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    cut = int(len(order) * (1 - holdout))
    trained = int(count * (1 - holdout))
    pools = {"train": (order[:cut], trained), "test": (order[cut:], count - trained)}
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, (pool, mosaics) in pools.items():
        rows = []
        for i in range(mosaics):
            mosaic = np.zeros((16, 16), dtype=np.uint8)
            cells = rng.choice(4, size=int(rng.integers(1, 5)), replace=False)
            labels = set()
            for cell in cells:
                pick = int(rng.choice(pool))
                top, left = (cell // 2) * 8, (cell % 2) * 8
                mosaic[top : top + 8, left : left + 8] = images[pick]
                labels.add(str(digits.target[pick]))
            name = f"images/{split}_{i:05d}.png"
            Image.fromarray(mosaic).resize((32, 32), Image.Resampling.NEAREST).convert("RGB").save(out / name)
            rows.append((name, ";".join(sorted(labels))))
        _write_csv(out / f"{split}.csv", rows)
        counts[split] = len(rows)
    return counts


def _write_split(out: Path, rows: list[tuple[str, str]], holdout: float, rng: np.random.Generator) -> dict[str, int]:
    order = rng.permutation(len(rows))
    cut = int(len(rows) * (1 - holdout))
    _write_csv(out / "train.csv", [rows[i] for i in sorted(order[:cut])])
    _write_csv(out / "test.csv", [rows[i] for i in sorted(order[cut:])])
    return {"train": cut, "test": len(rows) - cut}


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "labels"])
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["shapes", "digits"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=None, help="images to write (shapes 600, digits 1200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.kind == "shapes":
        counts = write_shapes(args.out, args.count or 600, seed=args.seed)
    else:
        counts = write_digit_mosaics(args.out, args.count or 1200, seed=args.seed)
    print(f"wrote {counts['train']} training and {counts['test']} test images under {args.out}")


if __name__ == "__main__":
    main()
