"""The CLI reference in Markdown, generated from the argparse parser (docs/cli.md is its output)."""

from __future__ import annotations

import argparse
import os

from autocls.cli.main import build_parser


def _subcommands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((f"{prefix} {name}", sub))
                found.extend(_subcommands(sub, f"{prefix} {name}"))
    return found


def cli_reference() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fix it so the file is stable
    parser = build_parser()
    parts = ["# autocls command-line reference", "", "Generated from the parser: `python -m autocls.cli.docs`.", ""]
    parts += ["```", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(parser, "autocls"):
        parts += [f"## {name}", "", "```", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(cli_reference(), end="")
