"""A saved model: the k-fold ensemble, one model per fold, their softmax outputs averaged.

Loading and predicting import nothing of the search (no Optuna, no study): only the configuration,
the backbones, image decoding and :mod:`autocls.train.feeding`. :mod:`autocls.final.refit` writes models.

A saved ensemble is a directory holding ``fold<i>.safetensors`` per fold model and ``manifest.json``
(:class:`~autocls.model.manifest.Manifest`: members, views, calibration, provenance). Nothing is pickled. The
directory is written under a temporary name and renamed when complete, so a failed refit never
leaves a half-written model or replaces a good one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from autocls.data.discover import IMAGE_ERRORS
from autocls.data.images import check_image_input, fit_square, load_square, resize_batch
from autocls.data.multilabel import decide, label_sets
from autocls.model.calibration import scale
from autocls.model.manifest import MANIFEST, Manifest, MemberSpec, fold_files
from autocls.model.views import with_views
from autocls.runtime.control import resolve_device
from autocls.runtime.errors import AutoclsError
from autocls.train.backbones import create_classifier
from autocls.train.config import TrainConfig
from autocls.train.feeding import Preprocess, model_to_device, norm_tensors, predict_in_batches

logger = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | torch.Tensor
OOF_FILE = "oof_predictions.csv"  # each training image predicted by the fold model that held it out
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
    """One member of the manifest (``spec``: its configuration, weight, normalisation) and its fold
    models, whose softmax outputs are averaged."""

    spec: MemberSpec
    models: list[nn.Module]

    @property
    def config(self) -> TrainConfig:
        return self.spec.config

    @property
    def weight(self) -> float:
        return self.spec.weight

    @property
    def mean(self) -> tuple[float, ...]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.spec.std

    @property
    def trial(self) -> int | None:
        return self.spec.trial

    def files(self, index: int) -> list[str]:
        """The fold models' file names when this is member ``index`` (see :meth:`MemberSpec.files`)."""
        return fold_files(index, len(self.models))


def predict_members(
    members: list[Member],
    images: torch.Tensor,
    device: torch.device,
    *,
    classes: int,
    tta: tuple[str, ...],
    multilabel: bool,
) -> np.ndarray:
    """The members' weighted, uncalibrated ``(N, classes)`` probabilities of an ``(N, 3, H, W)`` uint8
    batch: each member's fold models (on ``device``, in eval mode) on the images resized to its
    resolution, normalised its way, and on their test-time views ``tta``, averaged."""
    total = np.zeros((len(images), classes), np.float32)
    for member in members if len(images) else ():
        probs = predict_in_batches(
            member.models,
            resize_batch(images, member.config.resolution),
            Preprocess(*norm_tensors(member.mean, member.std, device), device),
            device,
            multilabel=multilabel,
            batch=PREDICT_BATCH,
            views=lambda x: with_views(x, tta),
        )
        if not torch.isfinite(probs).all():
            raise AutoclsError("the model's predictions are not finite numbers; its weights are damaged: refit it.")
        total += member.weight * probs.numpy()
    return total


class Ensemble:
    """Fold models of one or more trials: each trial's fold models averaged, the trials weighted.

    A single trial's k-fold ensemble is one member of weight 1. Members chosen by ensemble selection
    (:mod:`autocls.final.selection`) carry their weights; each has its own resolution and normalisation.
    ``tta`` lists the test-time views averaged with the image itself (:data:`autocls.model.views.TTA_VIEWS`:
    ``"hflip"``), chosen on out-of-fold predictions at refit.

    A multi-label model (one whose manifest has thresholds) outputs one sigmoid probability per
    label and predicts each label whose probability reaches its threshold (chosen on out-of-fold
    probabilities at refit).
    """

    def __init__(self, members: list[Member], manifest: Manifest, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        for member in members:
            member.models = [model_to_device(m, self.device).eval() for m in member.models]
        self.members = members
        self.manifest = manifest
        self.directory: Path | None = None  # the folder it was loaded from or saved to, if any
        self.class_names: list[str] = list(manifest.class_names)
        self.decode_size = manifest.decode_size
        self.tta: tuple[str, ...] = manifest.tta
        # fitted on out-of-fold predictions at refit (autocls.model.calibration); models saved before have none
        self.temperature = manifest.temperature
        self.multilabel = manifest.multilabel
        thresholds = manifest.thresholds.values if manifest.thresholds else [0.5] * len(self.class_names)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)

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
            self.manifest.write(staging / MANIFEST)
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
        manifest = Manifest.read(manifest_path)
        classes = len(manifest.class_names)
        members = []
        for index, spec in enumerate(manifest.members):
            models = [create_classifier(spec.config, classes, load_weights=False) for _ in range(spec.folds)]
            member = Member(spec, models)
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
    @torch.inference_mode()
    def predict_images(self, images: torch.Tensor, calibrated: bool = True) -> np.ndarray:
        """Class probabilities for an ``(N, 3, H, W)`` uint8 batch decoded at ``decode_size``,
        temperature-scaled as refit calibrated them unless ``calibrated`` is false (label
        probabilities, each in [0, 1], for a multi-label model)."""
        total = predict_members(
            self.members,
            images,
            self.device,
            classes=len(self.class_names),
            tta=self.tta,
            multilabel=self.multilabel,
        )
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
