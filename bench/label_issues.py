"""How many deliberately swapped labels and planted near-duplicates does autocls find? Is it calibrated?

    python bench/label_issues.py DATA/train [--swap 40] [--near 20] [--budget-minutes 5] [--test DATA/test]

Copies the class folders of ``DATA/train`` to a scratch folder, moving ``--swap`` images (chosen
with a fixed seed) into another class's folder, searches it with autocls's defaults for the budget,
refits, and prints: how many of the swapped images confident learning (the report's "likely
mislabelled" list, cleanlab) finds, how many other images it flags, and the out-of-fold expected
calibration error before and after the temperature refit fitted (and on ``--test`` if given).

Near-duplicates: ``--near`` training images are also copied, enlarged by 10% and re-encoded as
JPEG, into another class (the report's cross-class pairs should list them), and with ``--test``
another ``--near`` into a copy of the held-out set (evaluate should warn about them); it prints how
many planted pairs were found and how many other pairs were listed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import autocls
from autocls.model.ensemble import OOF_FILE, Ensemble
from autocls.report.evaluate import evaluate
from autocls.report.neardup import SIMILARITY, near_duplicates, training_features
from autocls.report.tables import label_issues


def swapped_copy(source: Path, target: Path, swap: int, seed: int = 0) -> set[str]:
    """Copy ``source``'s class folders to ``target`` with ``swap`` images moved to another class;
    returns the moved images' new paths."""
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    files = sorted(f for c in classes for f in (source / c).iterdir() if f.is_file())
    rng = np.random.default_rng(seed)
    moved = set(rng.choice(len(files), size=swap, replace=False).tolist())
    paths = set()
    for i, file in enumerate(files):
        label = file.parent.name
        if i in moved:
            label = classes[(classes.index(label) + int(rng.integers(1, len(classes)))) % len(classes)]
        destination = target / label / file.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, destination)
        if i in moved:
            paths.add(str(destination.resolve()))
    return paths


def near_copy(source: Path, destination: Path) -> None:
    """``source`` enlarged by 10% and saved as JPEG: other bytes, nearly the same picture."""
    with Image.open(source) as image:
        rgb = image.convert("RGB")
        rgb.resize((round(rgb.width * 1.1), round(rgb.height * 1.1))).save(destination, quality=90)
    destination.touch()


def plant_near_duplicates(target: Path, count: int, seed: int) -> dict[str, str]:
    """``count`` near copies of ``target``'s images in another class folder of it; {copy: original}."""
    classes = sorted(p.name for p in target.iterdir() if p.is_dir())
    files = sorted(f for c in classes for f in (target / c).iterdir() if f.is_file())
    rng = np.random.default_rng(seed)
    planted = {}
    for i in rng.choice(len(files), size=count, replace=False).tolist():
        label = files[i].parent.name
        other = classes[(classes.index(label) + 1) % len(classes)]
        copy = target / other / f"near{i}.jpg"
        near_copy(files[i], copy)
        planted[str(copy.resolve())] = str(files[i].resolve())
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", type=Path)
    parser.add_argument("--swap", type=int, default=40)
    parser.add_argument("--near", type=int, default=20)
    parser.add_argument("--budget-minutes", type=float, default=5.0)
    parser.add_argument("--test", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autocls-swap-") as scratch:
        data = Path(scratch) / "swapped"
        swapped = swapped_copy(args.train, data, args.swap)
        planted = plant_near_duplicates(data, args.near, seed=1)
        workdir = Path(scratch) / "runs"
        study = autocls.search(data, workdir=workdir, trials=1000, timeout=args.budget_minutes * 60, quiet=False)
        ensemble = autocls.refit(study, workdir=workdir, quiet=False)
        model = workdir / study.study_name / "model"
        oof = pd.read_csv(model / OOF_FILE, dtype={"label": str, "true_label": str})
        names = ensemble.class_names
        labels = oof["true_label"].map({n: i for i, n in enumerate(names)}).to_numpy()
        found = {
            str(Path(p).resolve())
            for p in oof["path"].iloc[label_issues(labels, oof[[f"prob_{n}" for n in names]].to_numpy())]
        }
        predicted = {str(Path(p).resolve()) for p in oof["path"]}
        print(f"swapped: {len(swapped)} images, {len(swapped & predicted)} of them predicted out of fold")
        print(f"listed by confident learning: {len(found & swapped)} of the swapped, {len(found - swapped)} others")
        calibration = ensemble.manifest.calibration
        assert calibration is not None  # a single-label refit always fits a temperature
        print(
            f"out-of-fold: temperature {calibration.temperature:.3f}, ECE {calibration.ece_before:.4f} -> "
            f"{calibration.ece_after:.4f}, NLL {calibration.nll_before:.4f} -> {calibration.nll_after:.4f}"
        )
        train = training_features(model, ensemble.decode_size)
        paths = [str(Path(p).resolve()) for p in train.table["path"]]
        labels_now = train.table["true_label"].to_numpy()
        found_pairs = near_duplicates(train.directions, labels_now, top=10_000)
        pairs = {frozenset((paths[p.first], paths[p.second])) for p in found_pairs.closest}
        wanted = {frozenset((c, o)) for c, o in planted.items() if c in paths and o in paths}
        print(
            f"near-duplicates across classes (similarity >= {SIMILARITY}): {len(pairs & wanted)} of {len(wanted)} "
            f"planted pairs listed, {len(pairs - wanted)} other pairs"
        )
        if args.test:
            test = Path(scratch) / "test"
            shutil.copytree(args.test, test)
            originals = sorted(Path(o) for o in planted.values())[: args.near]
            for i, original in enumerate(originals):
                near_copy(original, test / original.parent.name / f"near_test{i}.jpg")
            near = evaluate(Ensemble.load(model, "cpu"), test).near_duplicates
            print(
                f"evaluate: {near} of {sum(1 for p in test.rglob('*') if p.is_file())} held-out images flagged as "
                f"near-duplicates of training images; {len(originals)} were planted"
            )
            result = evaluate(ensemble, args.test)
            print(
                f"held-out: accuracy {result.accuracy:.4f}, ECE {result.ece_uncalibrated:.4f} -> {result.ece:.4f} "
                f"(temperature {result.temperature:.3f})"
            )


if __name__ == "__main__":
    main()
