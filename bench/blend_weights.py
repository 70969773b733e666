"""How much a two-member model's blend weight matters, out of fold and on held-out images.

    python bench/blend_weights.py MODEL TRIALS TRAIN TEST

``MODEL`` is a model ``autocls refit`` saved with two members (an ensemble selected across
trials), ``TRIALS`` the search's kept fold models (``WORKDIR/STUDY/trials``), ``TRAIN`` the images
the search used (all readable: out-of-fold rows follow their order) and ``TEST`` labelled held-out
images. For each weight of the first member (0 to 1), prints the out-of-fold accuracy and log loss
(one fold model per image, as ensemble selection sees them) and the held-out ones (every fold
model of each member averaged, with the model's test-time views).

It answers whether a better selection rule could have made a blend beat its best member on
held-out images: if no weight does, the members are not diverse enough, whatever the rule.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file

from autocls.data.discover import discover, labels_in_order
from autocls.data.images import decode_images
from autocls.model.ensemble import Ensemble, Member
from autocls.runtime.errors import AutoclsError

WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 2)


def score(probs: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Accuracy and log loss (uncalibrated: both weights compared alike)."""
    picked = np.clip(probs[np.arange(len(truth)), truth], 1e-7, 1.0)
    return float((probs.argmax(1) == truth).mean()), float(-np.log(picked).mean())


def oof_probs(trial_dir: Path, images: int, classes: int) -> np.ndarray:
    """A kept trial's out-of-fold probabilities, in the training images' order."""
    folds = load_file(trial_dir / "folds.safetensors")
    oof = np.full((images, classes), np.nan, dtype=np.float32)
    for key in (k for k in folds if k.startswith("val_indices_")):
        oof[folds[key].numpy()] = folds[key.replace("indices", "probs")].numpy()
    return oof


def held_out_probs(ensemble: Ensemble, test: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member's held-out probabilities alone (uncalibrated) and the true labels."""
    labelled = discover(test, min_classes=1)
    images, kept, _ = decode_images(labelled.paths, ensemble.decode_size)
    truth = labels_in_order(labelled.subset(kept), ensemble.class_names, multilabel=False)
    unweighted = [Member(dataclasses.replace(member.spec, weight=1.0), member.models) for member in ensemble.members]
    alone = [Ensemble([member], ensemble.manifest, ensemble.device) for member in unweighted]
    return [member.predict_images(images, calibrated=False) for member in alone], truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("model", "trials", "train", "test"):
        parser.add_argument(name, type=Path)
    args = parser.parse_args()
    for path in (args.model, args.trials, args.train, args.test):
        if not path.is_dir():
            raise SystemExit(f"{path}: no such folder; give MODEL TRIALS TRAIN TEST (see --help).")
    try:
        ensemble = Ensemble.load(args.model, "cpu")
    except AutoclsError as err:
        raise SystemExit(str(err)) from None
    if len(ensemble.members) != 2 or ensemble.multilabel or any(m.trial is None for m in ensemble.members):
        raise SystemExit(f"{args.model}: this bench compares the two trials of a single-label model's blend.")
    trials = [int(member.trial) for member in ensemble.members]
    missing = [n for n in trials if not (args.trials / str(n) / "folds.safetensors").is_file()]
    if missing:
        raise SystemExit(f"{args.trials}: no kept fold models of trials {missing}; give the study's trials folder.")
    training = discover(args.train)
    train_truth = labels_in_order(training, ensemble.class_names, multilabel=False)
    oof = [oof_probs(args.trials / str(n), len(training), len(ensemble.class_names)) for n in trials]
    held, truth = held_out_probs(ensemble, args.test)
    chosen = ensemble.members[0].weight
    title = f"{args.model}: trial {trials[0]} weighted w, trial {trials[1]} 1 - w (selected: w = {chosen:.2f})"
    table = Table(title=title)
    for column in ("w", "out-of-fold accuracy", "out-of-fold log loss", "held-out accuracy", "held-out log loss"):
        table.add_column(column, justify="right")
    for w in WEIGHTS:
        scores = [score(w * p[0] + (1 - w) * p[1], y) for p, y in ((oof, train_truth), (held, truth))]
        table.add_row(f"{w:.1f}", *(f"{value:.4f}" for pair in scores for value in pair))
    Console().print(table)


if __name__ == "__main__":
    main()
