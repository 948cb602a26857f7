"""Stacked bar charts as inline SVG, drawn on the server (no script, no network, CSP-safe).

Only presentation attributes (fill, x, y, ...) are used, never `style=`, so the page's
Content-Security-Policy needs no inline styles. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from markupsafe import Markup

# Colour-blind-safe palette (Okabe & Ito), cycled when there are more series.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")


def _nice_max(value: int) -> int:
    """The smallest of 1, 2, 5 times 10^n at or above *value* (at least 1)."""
    if value <= 1:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def stacked_bars(
    labels: list[str],
    series: dict[str, list[int]],
    title: str,
    width: int = 760,
    height: int = 280,
    link: Callable[[int, str], str | None] | None = None,
) -> Markup:
    """A stacked bar chart: one bar per label (week), one colour per series (rule, provider).

    link(i, name): the page a bar segment opens (label i, series name), or None for none.
    """
    left, right, top, bottom = 40, 10, 24, 52
    legend_h = 18 * max((len(series) + 2) // 3 - 1, 0)  # rows below the first
    plot_w, plot_h = width - left - right, height - top - bottom
    total_h = height + legend_h
    totals = [sum(vals[i] for vals in series.values()) for i in range(len(labels))]
    ymax = _nice_max(max(totals, default=0))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {total_h}" width="100%" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" font-size="13" font-weight="bold" fill="#222">'
        f"{escape(title)}</text>",
    ]
    ticks = ymax if ymax <= 5 else 5  # ymax is 1, 2, 5 or divisible by 5: whole-number ticks
    for i in range(ticks + 1):  # gridlines and y labels
        v = ymax * i / ticks
        y = top + plot_h - plot_h * i / ticks
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            f'stroke="#ddd" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#555">{v:g}</text>'
        )
    if not labels:
        out.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" font-size="13" '
            f'text-anchor="middle" fill="#555">No flags in this range</text>'
        )
    slot = plot_w / max(len(labels), 1)
    bar_w = max(min(slot * 0.7, 48), 2)
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        for name, vals in series.items():
            if not vals[i]:
                continue
            h = plot_h * vals[i] / ymax
            y -= h
            rect = (
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{colours[name]}"><title>{escape(label)} {escape(name)}: '
                f"{vals[i]}</title></rect>"
            )
            href = link(i, name) if link is not None else None
            if href:
                rect = (
                    f'<a href="{escape(href)}" class="bar" data-week="{escape(label)}" '
                    f'data-series="{escape(name)}">{rect}</a>'
                )
            out.append(rect)
        if totals[i]:
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" font-size="10" '
                f'text-anchor="middle" fill="#222">{totals[i]}</text>'
            )
        every = max(1, len(labels) // 12)  # at most about 12 week labels
        if i % every == 0:
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 16}" font-size="10" '
                f'text-anchor="middle" fill="#444">{escape(label)}</text>'
            )
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" '
        f'y2="{top + plot_h}" stroke="#888" stroke-width="1"/>'
    )
    for i, name in enumerate(series):  # legend, three per row
        lx = left + (i % 3) * (plot_w / 3)
        ly = height - 14 + 18 * (i // 3)
        out.append(
            f'<rect x="{lx:.1f}" y="{ly - 10}" width="12" height="12" fill="{colours[name]}"/>'
        )
        out.append(
            f'<text x="{lx + 17:.1f}" y="{ly}" font-size="11" fill="#222">'
            f"{escape(name[:40])}</text>"
        )
    out.append("</svg>")
    return Markup("".join(out))
