"""Held-out accuracy against the time budget, from bench/fashion_mnist.py's results tables.

    python bench/budget_curve.py RUN/results.md... [--out docs/budget.svg]

Reads each results.md (its title names the budget, its rows the arms), prints one table of
held-out accuracy by arm and budget, and draws it as an SVG line chart (one line per arm).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autocls.report import plots


def read_results(path: Path) -> tuple[float, dict[str, float]]:
    """(budget in minutes, held-out accuracy by arm) of one results.md."""
    lines = path.read_text().splitlines()
    budget = float(re.search(r"budget ([\d.]+) min", lines[0]).group(1))
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    column = header.index("held-out accuracy")
    arms = {}
    for row in lines[4:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) == len(header):
            arms[cells[0]] = float(cells[column])
    return budget, arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/budget.svg"))
    args = parser.parse_args()
    by_budget: dict[float, dict[str, float]] = {}
    for path in args.results:
        try:
            budget, arms = read_results(path)
        except OSError as err:
            parser.error(f"cannot read {path}: {err.strerror}; pass the results.md files bench/fashion_mnist.py wrote")
        except (AttributeError, IndexError, ValueError):
            parser.error(f"{path} is not a results table of bench/fashion_mnist.py (a title with the budget, a table)")
        by_budget.setdefault(budget, {}).update(arms)
    budgets = sorted(by_budget)
    arms = sorted({arm for results in by_budget.values() for arm in results})
    table = Table(title="held-out accuracy by time budget")
    table.add_column("arm")
    for budget in budgets:
        table.add_column(f"{budget:g} min", justify="right")
    for arm in arms:
        table.add_row(arm, *(f"{by_budget[b][arm]:.4f}" if arm in by_budget[b] else "" for b in budgets))
    Console(width=160).print(table)
    series = {arm: [by_budget[b].get(arm, float("nan")) for b in budgets] for arm in arms}
    svg = plots.line_chart(
        series,
        "Fashion-MNIST, 2,000 images: held-out accuracy by budget",
        x_label="time budget (minutes), 2 CPU cores",
        y_label="held-out accuracy",
        width=640,
        x_ticks=[f"{b:g}" for b in budgets],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg)
    print(f"figure written to {args.out}")


if __name__ == "__main__":
    main()
