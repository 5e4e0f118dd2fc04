"""Inline SVG charts for the HTML report: no JavaScript, no CDN, nothing fetched when opened."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5")
"""Observable's categorical palette: distinguishable, and readable on white."""


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _short(label: str, limit: int = 16) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _y_axis(parts: list[str], left: int, top: int, width: int, height: int) -> None:
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + height * (1 - tick)
        parts.append(f'<line x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{tick:.2f}</text>')


def bar_chart(scores: Sequence[tuple[str, float | None]], *, chart_id: str, title: str) -> str:
    """Mean score (0..1) per model as vertical bars, with the value above each bar."""
    width, height, left, top, bottom = 560, 280, 44, 28, 56
    plot_w, plot_h = width - left - 12, height - top - bottom
    parts = [
        f'<svg id="{chart_id}" class="chart" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{left}" y="16" class="title">{escape(title)}</text>',
    ]
    _y_axis(parts, left, top, plot_w, plot_h)
    n = max(len(scores), 1)
    slot = plot_w / n
    bar_w = min(64.0, slot * 0.6)
    for i, (label, score) in enumerate(scores):
        x = left + slot * i + (slot - bar_w) / 2
        value = score or 0.0
        bar_h = plot_h * value
        y = top + plot_h - bar_h
        shown = "n/a" if score is None else f"{score:.3f}"
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{bar_h:.1f}" '
            f'fill="{colour(i)}"><title>{escape(label)}: {shown}</title></rect>'
        )
        parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 5:.1f}" text-anchor="middle" class="value">{shown}</text>')
        parts.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 18}" text-anchor="middle" class="axis">'
            f"{escape(_short(label))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def trend_chart(
    runs: Sequence[tuple[str, str]],
    series: Mapping[str, Sequence[float | None]],
    *,
    chart_id: str,
    title: str,
    current: int | None = None,
) -> str:
    """Score (0..1) per model over past runs: one line per model, one point per run.

    ``runs`` are ``(run_id, date)`` oldest first; ``series`` maps each model to its score in each
    run (``None`` where the model was not in that run). ``current`` marks the reported run.
    """
    width, height, left, top, bottom = 560, 280, 44, 28, 70
    plot_w, plot_h = width - left - 16, height - top - bottom
    parts = [
        f'<svg id="{chart_id}" class="chart" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{left}" y="16" class="title">{escape(title)}</text>',
    ]
    _y_axis(parts, left, top, plot_w, plot_h)
    n = len(runs)

    def x_of(i: int) -> float:
        return left + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    def y_of(v: float) -> float:
        return top + plot_h * (1 - v)

    if current is not None and 0 <= current < n:
        x = x_of(current)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" class="current"/>')
    step = max(1, n // 8)
    for i, (_, date) in enumerate(runs):
        if i % step == 0 or i == n - 1:
            ly = top + plot_h + 16
            anchor = "middle" if n == 1 else ("start" if i == 0 else "end" if i == n - 1 else "middle")
            parts.append(f'<text x="{x_of(i):.1f}" y="{ly}" text-anchor="{anchor}" class="axis">{escape(date)}</text>')
    for k, (model, values) in enumerate(series.items()):
        points = [(x_of(i), y_of(v), v, i) for i, v in enumerate(values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            parts.append(f'<polyline class="line" points="{path}" stroke="{colour(k)}"/>')
        for x, y, v, i in points:
            run_id, date = runs[i]
            parts.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour(k)}">'
                f"<title>{escape(model)} — run {escape(run_id[:8])} ({escape(date)}): {v:.3f}</title></circle>"
            )
    legend_y = height - 18
    x = float(left)
    for k, model in enumerate(series):
        parts.append(f'<rect x="{x:.1f}" y="{legend_y - 9}" width="10" height="10" fill="{colour(k)}"/>')
        parts.append(f'<text x="{x + 14:.1f}" y="{legend_y}" class="axis">{escape(_short(model, 22))}</text>')
        x += 24 + 7 * len(_short(model, 22))
    parts.append("</svg>")
    return "".join(parts)
