"""Export a saved ensemble as one portable graph: preprocessing, every fold model, the averaging.

The graph takes a ``(N, 3, R, R)`` uint8 batch, the images already resized to the model's
resolution ``R`` as the manifest describes (shorter side to ``decode_size``, centre crop, then
antialiased bilinear to ``R``), and returns the ``(N, classes)`` averaged softmax probabilities.
Resizing stays outside the graph because antialiased resizing has no exact ONNX equivalent.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from autocls.ensemble import Ensemble
from autocls.errors import AutoclsError
from autocls.preprocess import normalise

FORMATS = ("torchscript", "onnx")


class EnsembleGraph(nn.Module):
    """Normalise, run every fold model, average their softmax outputs."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.models = nn.ModuleList([m.cpu().eval() for m in ensemble.models])
        self.register_buffer("mean", ensemble.mean.detach().cpu().view(1, 3, 1, 1).clone())
        self.register_buffer("std", ensemble.std.detach().cpu().view(1, 3, 1, 1).clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalise(images, self.mean, self.std)
        probs = [model(x).softmax(dim=1) for model in self.models]
        return torch.stack(probs).mean(dim=0)


def export(model_dir: str | Path, out: str | Path, fmt: str = "torchscript") -> Path:
    """Write the ensemble in ``model_dir`` as a TorchScript or ONNX file; returns its path."""
    if fmt not in FORMATS:
        raise AutoclsError(f"--format must be one of {list(FORMATS)}, got {fmt!r}.")
    ensemble = Ensemble.load(model_dir, "cpu")
    graph = EnsembleGraph(ensemble).eval()
    size = ensemble.config.resolution
    example = torch.zeros((2, 3, size, size), dtype=torch.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, and still loads everywhere
            traced = torch.jit.trace(graph, example)
            torch.jit.save(traced, str(out), _extra_files={"manifest.json": json.dumps(ensemble.manifest)})
        return out
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise AutoclsError("ONNX export needs the onnx extra: pip install 'autocls[onnx]'.") from None
    torch.onnx.export(
        graph,
        (example,),
        str(out),
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
        dynamo=False,
    )
    return out
