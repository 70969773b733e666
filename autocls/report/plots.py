"""Small SVG figures: learning curves, confusion matrices and reliability diagrams.

matplotlib is not part of autocls's stack, and these two figures need little: SVG text is
self-contained, embeds in the HTML report as it is, and optuna-dashboard shows it as an image
artifact. Each function returns a complete ``<svg>`` document.
"""

from __future__ import annotations

from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def line_chart(
    series: dict[str, list[float]],
    title: str,
    *,
    x_label: str = "epoch",
    y_label: str = "",
    dashed: tuple[str, ...] = (),
    width: int = 520,
    x_ticks: list[str] | None = None,
) -> str:
    """One line per series over x = 1..n (labelled ``x_ticks`` if given); a legend names them;
    series named in ``dashed`` are dashed."""
    height, left, right, top, bottom = 300, 56, 130, 30, 40
    values = [v for ys in series.values() for v in ys if np.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    longest = max((len(ys) for ys in series.values()), default=1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * i / max(1, longest - 1))

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    parts = [_header(width, height, title)]
    for k in range(5):  # y grid and labels
        v = low + (high - low) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for i in range(longest):
        tick = escape(x_ticks[i]) if x_ticks and i < len(x_ticks) else str(i + 1)
        parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{tick}</text>')
    for n, (name, ys) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys) if np.isfinite(v))
        dash = ' stroke-dasharray="5,3"' if name in dashed else ""
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{points}"/>')
        parts.append(f'<rect x="{width - right + 10}" y="{top + 16 * n}" width="12" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{width - right + 26}" y="{top + 16 * n + 5}">{escape(name)}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(
        f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>'
    )
    return "".join(parts) + "</svg>"


def bar_chart(values: dict[str, float], title: str, value_format: str = "{:.3f}", width: int = 520) -> str:
    """Horizontal bars, one per key, longest first as given."""
    label_w, bar_h = 8 + 7 * max((len(k) for k in values), default=4), 18
    height = 40 + bar_h * len(values)
    top = max(values.values(), default=1.0) or 1.0
    parts = [_header(width, height, title)]
    for i, (name, value) in enumerate(values.items()):
        y = 28 + bar_h * i
        length = (width - label_w - 70) * max(0.0, value) / top
        parts.append(f'<text x="{label_w - 4}" y="{y + 12}" text-anchor="end">{escape(str(name))}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{length:.1f}" height="{bar_h - 5}" fill="{PALETTE[0]}"/>')
        parts.append(f'<text x="{label_w + length + 4:.1f}" y="{y + 12}">{value_format.format(value)}</text>')
    return "".join(parts) + "</svg>"


def confusion_matrix(
    matrix: np.ndarray,
    class_names: list[str],
    title: str = "confusion matrix",
    axes: str = "predicted (rows: true class)",
) -> str:
    """Rows are true classes, columns predicted; cells shaded by the row-normalised rate. ``axes``
    names them (a label co-occurrence matrix has the labels on both)."""
    k = len(class_names)
    cell = max(18, min(48, 480 // max(1, k)))
    label_w = 8 + 7 * max((len(n) for n in class_names), default=4)
    width, height = label_w + cell * k + 20, label_w + cell * k + 40
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    parts = [_header(width, height, title)]
    top = 30 + label_w - 8
    for i, name in enumerate(class_names):
        parts.append(
            f'<text x="{label_w - 4}" y="{top + cell * i + cell / 2 + 4}" text-anchor="end">{escape(name)}</text>'
        )
        cx = label_w + cell * i + cell / 2
        parts.append(f'<text transform="translate({cx},{top - 4}) rotate(-60)">{escape(name)}</text>')
        for j in range(k):
            shade = int(255 - 200 * rates[i, j])
            fill = f"rgb({shade},{shade},255)" if i != j else f"rgb({shade},255,{shade})"
            px, py = label_w + cell * j, top + cell * i
            parts.append(f'<rect x="{px}" y="{py}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff"/>')
            if cell >= 24 or matrix[i, j]:
                parts.append(
                    f'<text x="{px + cell / 2}" y="{py + cell / 2 + 4}" text-anchor="middle">{int(matrix[i, j])}</text>'
                )
    parts.append(f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">{escape(axes)}</text>')
    return "".join(parts) + "</svg>"


def reliability_diagram(curves: dict[str, list[tuple[float, float, int]]], title: str, size: int = 320) -> str:
    """Accuracy against confidence per bin, one line per curve (``(confidence, accuracy, count)``
    points, see :func:`autocls.model.calibration.reliability`); the diagonal is perfect calibration."""
    left, top, right, bottom = 50, 30, 120, 40
    plot = size - top - bottom
    width = left + plot + right

    def x(v: float) -> float:
        return left + plot * v

    def y(v: float) -> float:
        return top + plot * (1 - v)

    parts = [_header(width, size, title)]
    for k in range(6):
        v = k / 5
        parts.append(f'<line x1="{x(0)}" x2="{x(1)}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        parts.append(f'<text x="{x(v):.1f}" y="{top + plot + 16}" text-anchor="middle">{v:.1f}</text>')
    parts.append(f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#999" stroke-dasharray="4,3"/>')
    for n, (name, points) in enumerate(curves.items()):
        colour = PALETTE[n % len(PALETTE)]
        line = " ".join(f"{x(c):.1f},{y(a):.1f}" for c, a, _ in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>')
        parts.extend(f'<circle cx="{x(c):.1f}" cy="{y(a):.1f}" r="2.5" fill="{colour}"/>' for c, a, _ in points)
        parts.append(f'<rect x="{left + plot + 10}" y="{top + 16 * n}" width="12" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{left + plot + 26}" y="{top + 16 * n + 5}">{escape(name)}</text>')
    parts.append(f'<text x="{x(0.5)}" y="{size - 6}" text-anchor="middle">confidence</text>')
    parts.append(f'<text transform="translate(14,{y(0.5)}) rotate(-90)" text-anchor="middle">accuracy</text>')
    return "".join(parts) + "</svg>"


def _header(width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>'
    )
