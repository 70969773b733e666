"""A griffe extension for the API pages: the Sphinx roles of autocls's docstrings become links.

The docstrings are written for readers of the source, with Sphinx's roles (:class:`TrainConfig`,
:func:`autocls.train.cv.cross_validate`); mkdocstrings renders Markdown, where a role would show
as its raw text. Each role's target is resolved as Python resolves the name where the docstring
is (a full ``autocls.`` path as written, else the module's own names and imports, else the one
object of that name in the package). A target inside autocls becomes an autorefs link, which
``mkdocs build --strict`` checks; a target outside it (torch, Optuna, the standard library) is
shown as code. A target that resolves nowhere, a reference left stale by a rename, is a warning,
so the strict build fails on it and names the docstring.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import partial

import griffe

PACKAGE = "autocls"
ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|obj|exc|const):`(~?)([^`<>]+)`")


def _objects(obj: griffe.Object) -> list[griffe.Object]:
    # every object defined in the package (aliases, i.e. imports, are the objects they name)
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_objects(member))
    return found


def _documented(obj: griffe.Object) -> bool:
    # what the API pages show (mkdocstrings' filter "!^_" and show_if_no_docstring: false)
    return obj.docstring is not None and not any(part.startswith("_") for part in obj.path.split("."))


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the package as a link or as code."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        if pkg.name != PACKAGE:
            return
        objects = _objects(pkg)
        by_name: dict[str, list[str]] = defaultdict(list)
        for obj in objects:
            by_name[obj.name].append(obj.path)
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(partial(self._render, pkg, by_name, obj), obj.docstring.value)

    def _render(self, pkg: griffe.Module, by_name: dict[str, list[str]], obj: griffe.Object, match: re.Match) -> str:
        short, written = match.group(1), match.group(2).strip()
        name = written.removesuffix("()")
        shown = f"`{name.rsplit('.', 1)[-1] if short else name}`"
        path = self._resolve(pkg, by_name, obj, name)
        if path is None:
            griffe.logger.warning(f"{obj.path}: the docstring's reference {written!r} resolves to nothing in {PACKAGE}")
            return shown
        if path != PACKAGE and not path.startswith(PACKAGE + "."):
            return shown  # outside the package: no page to link to
        target = self._lookup(pkg, path)
        if target is None:
            griffe.logger.warning(f"{obj.path}: the docstring's reference {written!r} names {path}, which is not there")
            return shown
        while not _documented(target) and target.parent is not None:
            target = target.parent  # a private or undocumented object: link to what shows it
        return f"[{shown}][{target.path}]"

    def _resolve(self, pkg: griffe.Module, by_name: dict[str, list[str]], obj: griffe.Object, name: str) -> str | None:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            return name
        head, _, rest = name.partition(".")
        try:
            base = obj.resolve(head)
        except griffe.NameResolutionError:
            # named where it is not imported: the one object of that name in the package, if one
            candidates = by_name.get(head, [])
            if len(candidates) != 1:
                return None
            base = candidates[0]
        return f"{base}.{rest}" if rest else base

    def _lookup(self, pkg: griffe.Module, path: str) -> griffe.Object | None:
        if path == PACKAGE:
            return pkg
        try:
            found = pkg[path.removeprefix(PACKAGE + ".")]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        if found.is_alias:
            try:
                found = found.final_target
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                return None
        return found
