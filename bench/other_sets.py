"""autocls's defaults on two more sets, one budget each: scikit-learn's digits and patches of real photos.

    pip install scikit-image   # for the photos (bench only; autocls does not need it)
    python bench/other_sets.py [--sets digits photos] [--budget-minutes 10] [--arms a1] [--out DIR]

* digits: scikit-learn's 1,797 bundled 8x8 handwritten digits (10 classes), 80% searched, 20% held out;
* photos: ten of scikit-image's bundled photographs (astronaut, cat, coffee, rocket, Hubble deep
  field, immunohistochemistry, retina, brick, grass, gravel), each a class; 120 square patches of
  random size and place per photo, resized to 48 px; training patches come from the left 65% of
  each photo, held-out patches from the right 35%, so no held-out pixel was seen in training.

Arms as in ``bench/fashion_mnist.py``: (a) autocls defaults (search then refit within the budget),
(0) the first warm-start recipe alone, (1) that recipe on one split. Prints a table of held-out
accuracy, best CV, wall time, trials and the delivered model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))
import fashion_mnist as bench  # noqa: E402  (the arms and their table)
from prepare_digits import write_digits  # noqa: E402

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "brick",
    "grass",
    "gravel",
)
PATCH = 48
TRAIN_SHARE = 0.65  # of each photo's width: training patches left of it, held-out patches right


def write_photo_patches(out: Path, per_photo: int = 120, seed: int = 0) -> dict[str, int]:
    """Write ``train/<photo>/*.png`` and ``test/<photo>/*.png`` patches of scikit-image's photos."""
    import skimage.data

    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, axis=-1)
        height, width = photo.shape[:2]
        cut = int(width * TRAIN_SHARE)
        for split, (left, right), count in (
            ("train", (0, cut), int(per_photo * TRAIN_SHARE)),
            ("test", (cut, width), per_photo - int(per_photo * TRAIN_SHARE)),
        ):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.integers(min(height, right - left) // 6, min(height, right - left) // 3))
                x = int(rng.integers(left, right - side))
                y = int(rng.integers(0, height - side))
                patch = Image.fromarray(photo[y : y + side, x : x + side]).resize(
                    (PATCH, PATCH), Image.Resampling.BILINEAR
                )
                patch.save(folder / f"{i:04d}.png")
            counts[split] += count
    return counts


def prepare(name: str, out: Path) -> tuple[Path, Path]:
    if name == "digits":
        write_digits(out, holdout=0.2)
    else:
        write_photo_patches(out)
    return out / "train", out / "test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=["digits", "photos"], default=["digits", "photos"])
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--arms", default="a", help="which of a, 0, 1 to run (default: a)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-runs" / "other-sets")
    args = parser.parse_args()
    search = args.budget_minutes * 60 - bench.REFIT_RESERVE  # as bench/fashion_mnist.py: refit within the budget
    rows = []
    for name in args.sets:
        train, test = prepare(name, args.out / name / "data")
        runs = args.out / name
        if "a" in args.arms:
            rows.append((name, bench.run_arm("(a) defaults", train, test, runs / "a", timeout=search, trials=1000)))
        if "0" in args.arms:
            rows.append(
                (name, bench.run_arm("(a0) first recipe", train, test, runs / "a0", True, timeout=search, trials=1))
            )
        if "1" in args.arms:
            rows.append((name, bench.one_split_arm(train, test, runs / "a1", timeout=search, trials=1)))
    table = Table(title=f"held-out accuracy, {args.budget_minutes:g}-minute budget")
    for column in ("set", "arm", "held-out", "best CV", "minutes", "trials", "delivered (OOF accuracy)"):
        table.add_column(column)
    for name, r in rows:
        delivered = f"{r.members} ({r.oof:.4f})"
        table.add_row(name, r.name, f"{r.held_out:.4f}", f"{r.cv:.4f}", f"{r.seconds / 60:.1f}", r.trials, delivered)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
