"""A saved model: the k-fold ensemble, one model per fold, their softmax outputs averaged.

Loading and predicting import nothing of the search (no Optuna, no study): only the configuration,
the backbones, image decoding and :mod:`autocls.train.feeding`. :mod:`autocls.refit` writes models.

A saved ensemble is a directory holding ``fold<i>.safetensors`` per fold model and ``manifest.json``
(configuration, class names, preprocessing, fold scores, library versions). Nothing is pickled. The
directory is written under a temporary name and renamed when complete, so a failed refit never
leaves a half-written model or replaces a good one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from autocls.data.discover import IMAGE_ERRORS
from autocls.data.images import check_image_input, fit_square, load_square, resize_batch
from autocls.data.multilabel import decide, label_sets, probabilities
from autocls.model.calibration import scale
from autocls.model.views import TTA_VIEWS, with_views
from autocls.runtime.control import resolve_device
from autocls.runtime.errors import AutoclsError
from autocls.train.backbones import create_classifier
from autocls.train.config import TrainConfig
from autocls.train.feeding import Preprocess, autocast, model_to_device, norm_tensors

logger = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | torch.Tensor
MANIFEST = "manifest.json"
OOF_FILE = "oof_predictions.csv"  # each training image predicted by the fold model that held it out
FORMAT_VERSION = 2  # 2: members (several trials) and test-time views; 1 (one trial) still loads
PREDICT_BATCH = 128


def check_model_destination(directory: Path, overwrite: bool, overwrite_option: str = "overwrite=True") -> None:
    """A model is written only to a new or empty folder, or over an autocls model when ``overwrite``
    says so: never over a file, and never into a folder of the user's own files (whose contents a
    replacement would delete). ``overwrite_option`` is how the caller's user says so (a flag, an argument)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise AutoclsError(f"{directory} is a file, not a folder; give a new folder for the model.")
    if not any(directory.iterdir()):
        return
    if not (directory / MANIFEST).is_file():
        raise AutoclsError(
            f"{directory} holds files that are not an autocls model, and autocls does not write over them; "
            "give a new or empty folder for the model."
        )
    if not overwrite:
        raise AutoclsError(
            f"{directory} holds an autocls model already; add {overwrite_option} to replace it, or give another folder."
        )


def member_specs(manifest: dict[str, Any]) -> list[tuple[TrainConfig, float, tuple, tuple, int | None, int]]:
    """(config, weight, mean, std, trial, folds) per member; a format-1 manifest is one member."""
    if "members" not in manifest:
        pre = manifest["preprocessing"]
        config = TrainConfig.from_dict(manifest["config"])
        return [(config, 1.0, tuple(pre["mean"]), tuple(pre["std"]), manifest.get("trial"), len(manifest["folds"]))]
    return [
        (
            TrainConfig.from_dict(m["config"]),
            float(m["weight"]),
            tuple(m["mean"]),
            tuple(m["std"]),
            m.get("trial"),
            int(m["folds"]),
        )
        for m in manifest["members"]
    ]


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A fold model's tensors; a missing, truncated or edited file, or one holding NaN or infinite
    values, is an error that names the file."""
    try:
        state = load_file(path)
    except (OSError, SafetensorError) as err:
        raise AutoclsError(f"{path}: cannot read the weights ({err}); run autocls refit again.") from None
    damaged = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if damaged:
        raise AutoclsError(
            f"{path}: {len(damaged)} tensors hold NaN or infinite values (e.g. {damaged[0]}); run autocls refit again."
        )
    return state


@dataclass
class Member:
    """One trial's fold models, whose softmax outputs are averaged, and the member's weight."""

    config: TrainConfig
    models: list[nn.Module]
    weight: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    trial: int | None = None

    def files(self, index: int) -> list[str]:
        """Member 0 keeps the single-trial names (``fold<i>.safetensors``), so older readers load it."""
        prefix = "" if index == 0 else f"member{index}_"
        return [f"{prefix}fold{i}.safetensors" for i in range(len(self.models))]


class Ensemble:
    """Fold models of one or more trials: each trial's fold models averaged, the trials weighted.

    A single trial's k-fold ensemble is one member of weight 1. Members chosen by ensemble selection
    (:mod:`autocls.final.selection`) carry their weights; each has its own resolution and normalisation.
    ``tta`` lists the test-time views averaged with the image itself (:data:`autocls.model.views.TTA_VIEWS`:
    ``"hflip"``), chosen on out-of-fold predictions at refit.

    A multi-label model (manifest ``"multilabel": true``) outputs one sigmoid probability per label
    and predicts each label whose probability reaches its threshold (manifest ``"thresholds"``,
    chosen on out-of-fold probabilities at refit).
    """

    def __init__(self, members: list[Member], manifest: dict[str, Any], device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        for member in members:
            member.models = [model_to_device(m, self.device).eval() for m in member.models]
        self.members = members
        self.manifest = manifest
        self.directory: Path | None = None  # the folder it was loaded from or saved to, if any
        self.class_names: list[str] = list(manifest["class_names"])
        self.decode_size = int(manifest["preprocessing"]["decode_size"])
        self.tta: tuple[str, ...] = tuple(manifest.get("tta", ()))
        # fitted on out-of-fold predictions at refit (autocls.model.calibration); models saved before have none
        self.temperature = float(manifest.get("calibration", {}).get("temperature", 1.0))
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise AutoclsError(
                f"the manifest's calibration temperature must be a positive number; got {self.temperature}."
            )
        self.multilabel = bool(manifest.get("multilabel", False))
        self.thresholds = np.asarray(manifest.get("thresholds", [0.5] * len(self.class_names)), dtype=np.float64)
        if self.thresholds.shape != (len(self.class_names),) or not np.all(
            (self.thresholds >= 0) & (self.thresholds <= 1)
        ):
            raise AutoclsError(
                f"the manifest's thresholds must be {len(self.class_names)} numbers in [0, 1], one per label; "
                f"got {manifest.get('thresholds')}."
            )
        unknown = set(self.tta) - set(TTA_VIEWS)
        if unknown:
            raise AutoclsError(f"unknown test-time views {sorted(unknown)} in the manifest; known: {list(TTA_VIEWS)}.")

    @property
    def config(self) -> TrainConfig:
        """The configuration of the member of most weight (the only one for a single trial)."""
        return max(self.members, key=lambda m: m.weight).config

    @property
    def models(self) -> list[nn.Module]:
        return [model for member in self.members for model in member.models]

    @property
    def resolutions(self) -> list[int]:
        """The distinct input resolutions of the members, ascending."""
        return sorted({member.config.resolution for member in self.members})

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict[str, str] | None = None, overwrite: bool = False) -> Path:
        """Write the ensemble (and ``extra`` text files) to ``directory`` atomically: a temporary
        sibling is written, then renamed into place. See :func:`check_model_destination` for what
        may be replaced."""
        directory = Path(directory)
        check_model_destination(directory, overwrite)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; a model folder is an ordinary folder
        try:
            for index, member in enumerate(self.members):
                for model, name in zip(member.models, member.files(index), strict=True):
                    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                    save_file(state, staging / name, metadata={"format": "pt"})
            (staging / MANIFEST).write_text(json.dumps(self.manifest, indent=2), encoding="utf-8")
            for name, text in (extra or {}).items():
                (staging / name).write_text(text, encoding="utf-8", errors="surrogateescape")
            if directory.exists():
                retired = directory.with_name(f".{directory.name}.old")
                shutil.rmtree(retired, ignore_errors=True)
                directory.rename(retired)
                staging.rename(directory)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                staging.rename(directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.directory = directory
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "auto") -> Ensemble:
        """Load a saved ensemble; weights are safetensors, so loading runs no code from the files."""
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise AutoclsError(f"{directory}: not an autocls model folder (no {MANIFEST}); run autocls refit first.")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            classes = len(manifest["class_names"])
            specs = member_specs(manifest)
        except (ValueError, KeyError, TypeError) as err:
            raise AutoclsError(
                f"{manifest_path}: not a readable autocls manifest ({err.__class__.__name__}: {err}); "
                "run autocls refit again to write the model."
            ) from None
        members = []
        for index, (config, weight, mean, std, trial, folds) in enumerate(specs):
            member = Member(config, [], weight, mean, std, trial)
            member.models = [create_classifier(config, classes, load_weights=False) for _ in range(folds)]
            for model, name in zip(member.models, member.files(index), strict=True):
                path = directory / name
                try:
                    model.load_state_dict(_load_weights(path))
                except RuntimeError as err:  # tensors missing, extra or of other shapes than the manifest's model
                    first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
                    raise AutoclsError(f"{path}: does not fit the model its manifest describes ({first}).") from None
            members.append(member)
        dev = resolve_device(device) if isinstance(device, str) else device
        ensemble = cls(members, manifest, dev)
        ensemble.directory = directory
        return ensemble

    # -- prediction --------------------------------------------------------------------------
    def _check_finite(self, probs: torch.Tensor) -> None:
        if not torch.isfinite(probs).all():
            raise AutoclsError("the model's predictions are not finite numbers; its weights are damaged: refit it.")

    @torch.inference_mode()
    def predict_images(self, images: torch.Tensor, calibrated: bool = True) -> np.ndarray:
        """Class probabilities for an ``(N, 3, H, W)`` uint8 batch decoded at ``decode_size``,
        temperature-scaled as refit calibrated them unless ``calibrated`` is false (label
        probabilities, each in [0, 1], for a multi-label model)."""
        total = np.zeros((len(images), len(self.class_names)), np.float32)
        for member in self.members:
            resized = resize_batch(images, member.config.resolution)
            preprocess = Preprocess(*norm_tensors(member.mean, member.std, self.device), self.device)
            for start in range(0, len(resized), PREDICT_BATCH):
                x = preprocess(resized[start : start + PREDICT_BATCH])
                views = with_views(x, self.tta)
                with autocast(self.device):
                    probs = torch.stack(
                        [probabilities(m(v), self.multilabel) for v in views for m in member.models]
                    ).mean(0)
                self._check_finite(probs)
                total[start : start + len(probs)] += member.weight * probs.cpu().numpy()
        return scale(total, self.temperature) if calibrated else total

    def predict_proba(self, inputs: Sequence[ImageInput]) -> np.ndarray:
        """Averaged class probabilities, one row per input: image paths, PIL images, or ``(3, H, W)``
        tensors (uint8, or float in [0, 1])."""
        return self.predict_images(self._decode(inputs))

    def predict(self, inputs: Sequence[ImageInput]) -> pd.DataFrame:
        """A table with ``path``, ``label``, ``confidence`` and one ``prob_<class>`` column per class;
        for a multi-label model ``label`` is the predicted label set (``"a;b"``) and there is no
        ``confidence``."""
        probs = self.predict_proba(inputs)
        return self.to_frame([str(i) if isinstance(i, str | Path) else "" for i in inputs], probs)

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """What the model predicts from ``probs``: class indices, or the 0/1 label matrix at its thresholds."""
        return decide(probs, self.thresholds) if self.multilabel else probs.argmax(axis=1)

    def to_frame(self, paths: list[str], probs: np.ndarray) -> pd.DataFrame:
        if self.multilabel:
            frame = pd.DataFrame({"path": paths, "label": label_sets(self.decisions(probs), self.class_names)})
            for i, name in enumerate(self.class_names):
                frame[f"prob_{name}"] = probs[:, i]
            return frame
        best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
        frame = pd.DataFrame(
            {
                "path": paths,
                "label": [self.class_names[i] for i in best],
                "confidence": probs[np.arange(len(probs)), best] if len(probs) else [],
            }
        )
        for i, name in enumerate(self.class_names):
            frame[f"prob_{name}"] = probs[:, i]
        return frame

    def _decode(self, inputs: Sequence[ImageInput]) -> torch.Tensor:
        arrays = []
        for item in inputs:
            check_image_input(item)
            if isinstance(item, torch.Tensor):
                pixels = item.detach().cpu()
                if pixels.is_floating_point():
                    if pixels.numel() and not (float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0):
                        raise AutoclsError(
                            f"a float image tensor must hold values in [0, 1]; got {float(pixels.min()):.3g} to "
                            f"{float(pixels.max()):.3g}: divide by 255, or pass a uint8 tensor."
                        )
                    pixels = (pixels * 255).round()
                if pixels.shape[0] == 1:
                    pixels = pixels.expand(3, -1, -1)
                item = Image.fromarray(pixels.to(torch.uint8).permute(1, 2, 0).numpy())
            if isinstance(item, Image.Image):
                arrays.append(fit_square(item, self.decode_size))
            else:
                try:
                    arrays.append(load_square(item, self.decode_size))
                except IMAGE_ERRORS as err:
                    reason = err.strerror if isinstance(err, OSError) and err.strerror else err or "a damaged file"
                    raise AutoclsError(f"{item}: not a readable image ({reason}); pass a file Pillow opens.") from None
        if not arrays:
            return torch.zeros((0, 3, self.decode_size, self.decode_size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
