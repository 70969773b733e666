"""Export a saved ensemble as one portable graph: preprocessing, every fold model, the averaging.

The graph takes a ``(N, 3, R, R)`` uint8 batch, the images already resized to the model's
resolution ``R`` as the manifest describes (shorter side to ``decode_size``, centre crop, then
antialiased bilinear to ``R``), and returns the ``(N, classes)`` averaged softmax probabilities,
temperature-scaled as refit calibrated them.
An ensemble whose members differ in resolution takes one batch per resolution, ascending (ONNX
inputs ``images_<R>``). Resizing stays outside the graph because antialiased resizing has no
exact ONNX equivalent. Test-time views the manifest chose (a horizontal flip) are in the graph.

A multi-label model's graph returns two outputs: the ``(N, labels)`` averaged sigmoid
probabilities and the ``(N, labels)`` uint8 decisions at the per-label thresholds refit chose.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from autocls.data.multilabel import probabilities
from autocls.model.calibration import scale_tensor
from autocls.model.ensemble import Ensemble, Member
from autocls.model.manifest import MANIFEST
from autocls.model.views import with_views
from autocls.runtime.errors import AutoclsError, SettingError
from autocls.train.feeding import norm_tensors, normalise

FORMATS = ("torchscript", "onnx")


class MemberGraph(nn.Module):
    """One member: normalise, run its fold models (and test-time views), average, weigh."""

    def __init__(self, member: Member, tta: tuple[str, ...], multilabel: bool = False) -> None:
        super().__init__()
        self.multilabel = multilabel
        self.models = nn.ModuleList([m.cpu().eval() for m in member.models])
        mean, std = norm_tensors(member.mean, member.std, torch.device("cpu"))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.weight = member.weight
        self.tta = tuple(tta)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalise(images, self.mean, self.std)
        views = with_views(x, self.tta)
        probs = [probabilities(model(v), self.multilabel) for v in views for model in self.models]
        return torch.stack(probs).mean(dim=0) * self.weight


class EnsembleGraph(nn.Module):
    """Every member's weighted probabilities, summed; one input per distinct member resolution."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.members = nn.ModuleList([MemberGraph(m, ensemble.tta, ensemble.multilabel) for m in ensemble.members])
        resolutions = ensemble.resolutions
        self.inputs = [resolutions.index(m.config.resolution) for m in ensemble.members]
        self.temperature = ensemble.temperature
        self.multilabel = ensemble.multilabel
        if self.multilabel:  # a single-label graph stays exactly what it was
            self.register_buffer("thresholds", torch.as_tensor(ensemble.thresholds, dtype=torch.float32))

    def forward(self, *images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        total = self.members[0](images[self.inputs[0]])
        for member, index in zip(self.members[1:], self.inputs[1:], strict=True):
            total = total + member(images[index])
        if self.multilabel:
            return total, (total >= self.thresholds).to(torch.uint8)
        return scale_tensor(total, self.temperature)


def export(model_dir: str | Path, out: str | Path, fmt: str = "torchscript") -> Path:
    """Write the ensemble in ``model_dir`` as a TorchScript or ONNX file; returns its path."""
    if fmt not in FORMATS:
        raise SettingError("format", f"one of {list(FORMATS)}", fmt)
    ensemble = Ensemble.load(model_dir, "cpu")
    graph = EnsembleGraph(ensemble).eval()
    examples = tuple(torch.zeros((2, 3, r, r), dtype=torch.uint8) for r in ensemble.resolutions)
    names = ["images"] if len(examples) == 1 else [f"images_{r}" for r in ensemble.resolutions]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, and still loads everywhere
            traced = torch.jit.trace(graph, examples)
            torch.jit.save(traced, str(out), _extra_files={MANIFEST: json.dumps(ensemble.manifest.to_json())})
        return out
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  # torch's exporter writes the graph with it
    except ImportError:
        raise AutoclsError("ONNX export needs the onnx extra: pip install 'autocls[onnx]'.") from None
    outputs = ["probabilities", "labels"] if ensemble.multilabel else ["probabilities"]
    _to_onnx(graph, examples, out, input_names=names, output_names=outputs)
    return out


def _to_onnx(
    graph: EnsembleGraph,
    examples: tuple[torch.Tensor, ...],
    out: Path,
    *,
    input_names: list[str],
    output_names: list[str],
) -> None:
    """Write ``graph`` to ``out`` as one ONNX file with torch's maintained exporter (``torch.export``
    and ONNX Script; the TorchScript-based one, ``dynamo=False``, is deprecated), the batch
    dimension left free. Same outputs as that one's graph (``tests/test_selection.py``), at about
    8 times its export time (19 s against 2.3 s for two members of two folds).

    ``forward`` takes its inputs as ``*images``, which ``torch.export`` sees as one argument holding
    a tuple: hence one batch :class:`~torch.export.Dim` per input, inside a one-element tuple. The
    inputs share that dimension (the members' outputs are summed row by row). ``external_data=False``
    keeps the weights inside the one file, as the TorchScript-based exporter wrote it; the exporter
    would otherwise write them beside it in ``<out>.data``.
    """
    batch = torch.export.Dim("batch")
    with torch.no_grad(), warnings.catch_warnings():
        # the shared batch dimension is named once; the exporter says so for each further input
        warnings.filterwarnings("ignore", message="# The axis name: batch will not be used")
        torch.onnx.export(
            graph,
            examples,
            str(out),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=(tuple({0: batch} for _ in examples),),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
