"""autocls: find the best image classifier for a folder of labelled images by transfer learning.

The Python API mirrors the CLI::

    import autocls
    study = autocls.search("data/train", trials=10, space="fast")
    ensemble = autocls.refit(study)                    # an autocls.Ensemble
    ensemble.predict(["a.jpg", "b.jpg"])               # DataFrame: path, label, confidence, prob_<class>
    autocls.Ensemble.load("autocls-runs/train/model")  # later, or elsewhere
    autocls.ImageClassifier(trials=5).fit(paths, labels).predict(new_paths)  # scikit-learn style
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Ensemble", "ImageClassifier", "predict", "refit", "search"]

_LAZY = {
    "search": ("autocls.api", "search"),
    "refit": ("autocls.api", "refit"),
    "ImageClassifier": ("autocls.api", "ImageClassifier"),
    "Ensemble": ("autocls.model.ensemble", "Ensemble"),
    "predict": ("autocls.model.predict", "predict"),
}


def __getattr__(name: str):
    # imported on first use: `autocls --version` and `import autocls` stay quick
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'autocls' has no attribute {name!r}")
