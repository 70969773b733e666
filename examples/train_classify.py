"""The two functions a course or a competition asks for, written with autocls.

    train_classifier(train_gt, train_img_dir, fast_train) -> model folder
    classify(model_path, test_img_dir) -> {filename: class_id}

``train_gt`` maps file names in ``train_img_dir`` to integer class ids. Training searches, then
refits the best trial as a fold ensemble; ``classify`` runs on CPU, offline, and writes no file.

    python examples/train_classify.py TRAIN_DIR TEST_DIR   # TRAIN_DIR/<class id>/*.png, e.g. the digits
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

import autocls
from autocls.data.discover import is_image_file
from autocls.study.space import load_space, space_from_dict


def train_classifier(
    train_gt: dict[str, int], train_img_dir: str | Path, fast_train: bool, workdir: str | Path = "autocls-train"
) -> Path:
    """Search and refit on the labelled images; returns the saved model folder."""
    train_img_dir = Path(train_img_dir)
    frame = pd.DataFrame({"path": [train_img_dir / name for name in train_gt], "label": list(train_gt.values())})
    if fast_train:  # minutes on a laptop CPU: one short trial of the fast space
        spec = load_space("fast").to_dict()
        spec["fixed"].update(epochs=2, patience=1)
        space, trials, folds = space_from_dict(spec, name="fast-train"), 1, 3
    else:
        space, trials, folds = "fast", 10, 5
    study = autocls.search(frame, trials=trials, folds=folds, space=space, workdir=workdir, study_name="train")
    autocls.refit(study, workdir=workdir, device="cpu")
    return Path(workdir) / "train" / "model"


def classify(model_path: str | Path, test_img_dir: str | Path) -> dict[str, int]:
    """Class id of every image in ``test_img_dir``, by file name; CPU only, nothing written."""
    ensemble = autocls.Ensemble.load(model_path, device="cpu")
    files = sorted(p for p in Path(test_img_dir).rglob("*") if is_image_file(p))
    table = ensemble.predict(files)
    return {Path(path).name: int(label) for path, label in zip(table["path"], table["label"], strict=True)}


if __name__ == "__main__":
    train_dir, test_dir = map(Path, sys.argv[1:3])
    gt = {str(p.relative_to(train_dir)): int(p.parent.name) for p in train_dir.rglob("*.png")}
    model = train_classifier(gt, train_dir, fast_train=True)
    predicted = classify(model, test_dir)
    truth = {p.name: int(p.parent.name) for p in test_dir.rglob("*.png")}
    accuracy = sum(predicted[name] == label for name, label in truth.items()) / len(truth)
    print(f"classified {len(predicted)} images; accuracy {accuracy:.4f}")
