"""pyproject.toml declares what autocls imports: every third-party import of ``autocls/`` is a
dependency (or, for the optional features, an extra), and every dependency is imported.

A package that only arrives through another (SQLAlchemy through Optuna, SciPy through
scikit-learn) works until that other package drops it or an install resolves it to a release
without the API autocls calls; declaring it is what lets its floor be stated at all.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# features that stay optional: their imports are lazy and a missing package gets a remedy
OPTIONAL_EXTRAS = {"boto3": "s3", "botocore": "s3", "onnx": "onnx", "onnxscript": "onnx"}


def _normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Scikit_Learn`` and ``scikit-learn`` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0])


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {extra: {_requirement_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    return {_requirement_name(r) for r in project["dependencies"]}, extras


def third_party_imports(package: Path) -> dict[str, set[str]]:
    """Top-level names of the modules imported anywhere under ``package`` (lazy imports inside
    functions too), less the standard library and autocls itself, each with the files importing it."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "autocls":
                    found.setdefault(top, set()).add(str(path.relative_to(package.parent)))
    return found


@cache
def _providers() -> dict[str, list[str]]:
    return packages_distributions()  # reads every installed distribution's file list: once


def _distribution(module: str) -> str:
    """The installed distribution that provides the import name ``module`` (``PIL``: pillow)."""
    providers = _providers().get(module)
    assert providers, f"{module} is imported by autocls but no installed distribution provides it"
    return _normalise(providers[0])


def test_the_scan_sees_lazy_and_dotted_imports(tmp_path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(
        "import os\nimport numpy.linalg\nfrom autocls.data import images\nfrom . import sibling\n"
        "def f():\n    from scipy.optimize import minimize_scalar\n"
    )
    assert sorted(third_party_imports(package)) == ["numpy", "scipy"]


def test_every_package_autocls_imports_is_declared() -> None:
    dependencies, extras = _declared()
    missing = []
    for module, files in sorted(third_party_imports(ROOT / "autocls").items()):
        distribution = _distribution(module)
        extra = OPTIONAL_EXTRAS.get(module)
        declared = distribution in extras[extra] if extra else distribution in dependencies
        if not declared:
            where = f"the {extra!r} extra" if extra else "dependencies"
            missing.append(f"{distribution} (import {module}, in {sorted(files)[0]}) is not in {where}")
    assert not missing, "\n".join(missing)


def test_every_dependency_is_imported_by_autocls() -> None:
    dependencies, _ = _declared()
    imported = {_distribution(module) for module in third_party_imports(ROOT / "autocls")}
    assert dependencies - imported == set(), "declared, never imported: move to an extra or drop"
