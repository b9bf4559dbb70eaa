"""Server-side SVG charts for the admin dashboard: no JavaScript, no CDN, nothing to serve.

Each chart is one <svg> element with a known id and the class "cg-chart", its numbers in <title>
tooltips. Text goes through Django's escaping.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 480, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 28, 40
STATUS_COLOURS = {
    "queued": "#9aa5b1",
    "running": "#3b82f6",
    "succeeded": "#16a34a",
    "failed": "#dc2626",
    "cancelled": "#a16207",
}


def _frame(chart_id: str, title: str, body: str, legend: str = "") -> SafeString:
    return format_html(
        '<svg id="{}" class="cg-chart" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"'
        ' width="{}" height="{}" viewBox="0 0 {} {}" font-family="sans-serif" font-size="11">'
        '<text x="{}" y="16" font-size="13" font-weight="bold">{}</text>{}{}</svg>',
        chart_id,
        title,
        WIDTH,
        HEIGHT,
        WIDTH,
        HEIGHT,
        LEFT,
        title,
        mark_safe(body),
        mark_safe(legend),
    )


def _axes(top_value: float, fmt: str) -> str:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#999"/>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}"'
        ' stroke="#999"/>',
    ]
    for fraction in (0.5, 1.0):
        y = HEIGHT - BOTTOM - plot_h * fraction
        label = escape(fmt.format(top_value * fraction))
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{label}</text>'
        )
    return "".join(parts)


def _count_top(largest: int) -> int:
    """A count axis's top: even, so its half-way line is a whole count too (an odd top of 3
    labelled that line "2" for 1.5, a top of 1 labelled it "0")."""
    return largest + largest % 2


def _x_labels(labels: Sequence[str], slot: float) -> str:
    every = max(1, len(labels) // 7)
    return "".join(
        f'<text x="{LEFT + slot * (i + 0.5):.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle"'
        f' fill="#555">{escape(label)}</text>'
        for i, label in enumerate(labels)
        if i % every == 0
    )


def _empty(chart_id: str, title: str, note: str) -> SafeString:
    body = (
        f'<text class="cg-empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle"'
        f' fill="#777">{escape(note)}</text>'
    )
    return _frame(chart_id, title, body)


def stacked_bars(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[int]],
    colours: dict[str, str] | None = None,
) -> SafeString:
    """One bar per label, stacked by series (e.g. jobs per day by status)."""
    colours = colours or STATUS_COLOURS
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    if not labels or max(totals, default=0) == 0:
        return _empty(chart_id, title, "No jobs in this period")
    top = _count_top(max(totals))
    plot_h, slot = HEIGHT - TOP - BOTTOM, (WIDTH - LEFT - RIGHT) / len(labels)
    bars = []
    for i, label in enumerate(labels):
        y = float(HEIGHT - BOTTOM)
        for name, values in series.items():
            if not values[i]:
                continue
            h = plot_h * values[i] / top
            y -= h
            bars.append(
                f'<rect class="cg-bar" x="{LEFT + slot * i + 2:.1f}" y="{y:.1f}"'
                f' width="{max(slot - 4, 1):.1f}" height="{h:.1f}"'
                f' fill="{colours.get(name, "#888")}">'
                f"<title>{escape(label)} {escape(name)}: {values[i]}</title></rect>"
            )
    legend = "".join(  # under the axis labels, one slot per series
        f'<rect x="{LEFT + 80 * n}" y="{HEIGHT - 14}" width="10" height="10"'
        f' fill="{colours.get(name, "#888")}"/>'
        f'<text x="{LEFT + 13 + 80 * n}" y="{HEIGHT - 5}">{escape(name)}</text>'
        for n, name in enumerate(series)
    )
    body = _axes(top, "{:.0f}") + "".join(bars) + _x_labels(labels, slot)
    return _frame(chart_id, title, body, legend)


def bars(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    fmt: str = "{:.2f}",
    colour: str = "#6366f1",
    empty_note: str = "No data in this period",
    counts: bool = False,
) -> SafeString:
    """One bar per label. `counts`: the values are whole numbers, and so are the axis labels."""
    if not labels or max(values, default=0) <= 0:
        return _empty(chart_id, title, empty_note)
    top = _count_top(round(max(values))) if counts else max(values)
    plot_h, slot = HEIGHT - TOP - BOTTOM, (WIDTH - LEFT - RIGHT) / len(labels)
    rects = "".join(
        f'<rect class="cg-bar" x="{LEFT + slot * i + 2:.1f}"'
        f' y="{HEIGHT - BOTTOM - plot_h * v / top:.1f}"'
        f' width="{max(slot - 4, 1):.1f}" height="{plot_h * v / top:.1f}" fill="{colour}">'
        f"<title>{escape(label)}: {escape(fmt.format(v))}</title></rect>"
        for i, (label, v) in enumerate(zip(labels, values, strict=True))
    )
    return _frame(chart_id, title, _axes(top, fmt) + rects + _x_labels(labels, slot))


def line(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    fmt: str = "{:.1%}",
    colour: str = "#dc2626",
) -> SafeString:
    """A line over the days that have a value (None leaves a gap in the points). The default
    format keeps a decimal: the axis starts at 1 %, whose half-way line is 0.5 %, not "0%"."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if not points:
        return _empty(chart_id, title, "No provider calls in this period")
    top = max(max(v for _, v in points), 0.01)
    plot_h, slot = HEIGHT - TOP - BOTTOM, (WIDTH - LEFT - RIGHT) / len(labels)
    xy = [(LEFT + slot * (i + 0.5), HEIGHT - BOTTOM - plot_h * v / top) for i, v in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(
        f'<circle class="cg-point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
        f"<title>{escape(labels[i])}: {escape(fmt.format(v))}</title></circle>"
        for (x, y), (i, v) in zip(xy, points, strict=True)
    )
    body = (
        _axes(top, fmt)
        + f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
        + dots
        + _x_labels(labels, slot)
    )
    return _frame(chart_id, title, body)


def histogram(
    chart_id: str, title: str, scores: Sequence[float], *, buckets: int = 10
) -> SafeString:
    """Distribution of scores in [0, 1]."""
    if not scores:
        return _empty(chart_id, title, "No quality scores recorded yet")
    counts = [0] * buckets
    for score in scores:
        counts[min(int(max(score, 0.0) * buckets), buckets - 1)] += 1
    labels = [f"{n / buckets:.1f}" for n in range(buckets)]
    return bars(chart_id, title, labels, counts, fmt="{:.0f}", colour="#0d9488", counts=True)
