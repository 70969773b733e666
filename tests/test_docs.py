"""The README's links and the documentation site's coverage of the packages.

``mkdocs build --strict`` (scripts/test.sh) checks every link inside docs/; the README lies outside
the site, so its links are checked here: each relative link names a file of the repository, and
each ``#anchor`` into a Markdown file names one of its headings.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    # Python-Markdown's toc slugify, which mkdocs uses for heading ids, after the inline code marks
    text = unicodedata.normalize("NFKD", heading.replace("`", "")).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(markdown: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(encoding="utf-8"), flags=re.S)  # no headings in code
    return {_slug(line.lstrip("#").strip()) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def _relative_links(markdown: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(encoding="utf-8"), flags=re.S)
    return [link for link in LINK.findall(text) if not re.match(r"[a-z]+:", link)]


def _renders(page: Path, module: str) -> bool:
    return page.exists() and f"::: {module}" in page.read_text(encoding="utf-8")


def test_slug_matches_the_heading_ids_mkdocs_writes() -> None:
    assert _slug("Determinism (`--deterministic`)") == "determinism-deterministic"
    assert _slug("How the time budget is spent") == "how-the-time-budget-is-spent"
    assert _slug("Multi-label (2026-12-03)") == "multi-label-2026-12-03"


def test_every_relative_link_in_the_readme_resolves() -> None:
    links = _relative_links(ROOT / "README.md")
    assert len(links) >= 10, links  # the README points into docs/: a regex that found nothing would pass
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve() if path else ROOT / "README.md"
        if not target.exists():
            broken.append(f"{link}: no file {target.relative_to(ROOT)}")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading '#{anchor}' in {target.relative_to(ROOT)}")
    assert not broken, broken


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n## Real heading\n\nSee [x](other.md#real-heading) and [y](https://e.org).\n")
    assert _relative_links(page) == ["other.md#real-heading"]
    assert _anchors(page) == {"a-page", "real-heading"}


def test_every_stage_package_has_an_api_page_in_the_site() -> None:
    packages = sorted(p.parent.name for p in (ROOT / "autocls").glob("*/__init__.py"))
    assert "train" in packages and "cli" in packages, packages
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {name: ROOT / "docs" / "api" / f"{name}.md" for name in packages}
    missing = [name for name, page in pages.items() if not _renders(page, f"autocls.{name}")]
    assert not missing, f"no API page for {missing}: add docs/api/NAME.md holding '::: autocls.NAME'"
    unlisted = [name for name in packages if f"api/{name}.md" not in config]
    assert not unlisted, f"API pages not in mkdocs.yml's nav: {unlisted}"


def _commands(markdown: Path) -> list[list[str]]:
    # the `autocls ...` lines of the fenced shell blocks, comments and line continuations removed
    blocks = re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", markdown.read_text(encoding="utf-8"), flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True)[1:] for line in lines if line.startswith("autocls ")]


def test_the_commands_in_the_readme_and_docs_parse_with_the_cli_parser() -> None:
    from autocls.cli.main import build_parser

    names = {argv[0] for argv in _commands(ROOT / "README.md")}
    assert {"search", "dashboard", "refit", "predict", "evaluate", "report"} <= names, names  # the tour
    parser = build_parser()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for argv in _commands(page):
            try:
                parser.parse_args(argv)
            except SystemExit:
                raise AssertionError(f"{page.name}: `autocls {shlex.join(argv)}` does not parse") from None


def test_a_command_with_an_unknown_option_does_not_parse() -> None:
    from autocls.cli.main import build_parser

    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "model", "images/", "--no-such-option"])
