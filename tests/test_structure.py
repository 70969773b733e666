"""The package's shape: import arrows derived from the source (ast), no circles, no arrow up the stages."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autocls"
# The stages, lowest first. A module may import its own package's modules and any lower package's,
# never a higher one's: what a saved model needs (model) never pulls in the search (study).
LAYERS = ("runtime", "data", "train", "model", "storage", "report", "study", "final", "cli")
TOP = len(LAYERS)  # autocls/__init__.py and autocls/api.py sit above every stage


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Every import of an autocls module, lazy ones and those under ``TYPE_CHECKING`` included."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {
            found
            for target in targets
            if target.startswith("autocls")
            and (found := resolve(target)) is not None
            and found not in (name, "autocls")
        }
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    graph = import_graph()
    # cli.main imports cli.commands inside main() only: still an arrow
    assert "autocls.cli.commands" in graph["autocls.cli.main"]
    assert "autocls.train.config" in graph["autocls.train.trainer"]


def test_circles_are_found_in_a_synthetic_graph() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_no_stage_imports_a_higher_one() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert upward == []


def test_every_stage_is_a_package_and_every_package_a_stage() -> None:
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(LAYERS)
    assert {path.stem for path in PACKAGE.glob("*.py")} == {"__init__", "api"}


def test_pyproject_lists_every_package() -> None:
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert declared == {"autocls", "autocls.search_spaces", *(f"autocls.{name}" for name in LAYERS)}


@pytest.mark.parametrize("package", LAYERS)
def test_package_inits_are_thin(package: str) -> None:
    # a stage's __init__ imports nothing: importing autocls.model.export must not pull in the rest of model/
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text(encoding="utf-8"))
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def test_the_configurations_choices_are_the_registries_keys() -> None:
    # config.py lists them (it imports no torch); optim.py and augment.py implement them
    from autocls.train.augment import POLICIES
    from autocls.train.config import AUGMENTATIONS, OPTIMIZER_NAMES, SCHEDULER_NAMES
    from autocls.train.optim import OPTIMIZERS, SCHEDULERS

    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES
    assert tuple(SCHEDULERS) == SCHEDULER_NAMES
    assert tuple(POLICIES) == AUGMENTATIONS
