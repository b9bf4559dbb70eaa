"""The experiment report's chart: server-rendered SVG like the dashboard's (monitoring/charts.py),
no JavaScript. One row per variant: its mean as a dot and its 95% interval as a bar, on a shared
axis, so non-overlapping intervals are visible at a glance. Text goes through Django's escaping;
numbers are in <title> tooltips.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from generation.quality.stats import Interval

WIDTH, ROW, LEFT, RIGHT, TOP, BOTTOM = 560, 34, 150, 20, 30, 34
COLOURS = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0d9488")


def intervals(
    chart_id: str, title: str, rows: Sequence[tuple[str, Interval]], *, fmt: str = "{:.3f}"
) -> SafeString:
    """One horizontal interval per (label, interval); variants without data are listed empty."""
    height = TOP + BOTTOM + ROW * max(len(rows), 1)
    known = [i for _, i in rows if i.low is not None and i.high is not None]
    if not known:
        body = (
            f'<text class="cg-empty" x="{WIDTH / 2}" y="{height / 2}" text-anchor="middle"'
            ' fill="#777">No results yet</text>'
        )
        return _frame(chart_id, title, height, body)
    low = min(i.low for i in known if i.low is not None)
    high = max(i.high for i in known if i.high is not None)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 0.1
    lo, hi = low - pad, high + pad
    parts = [_axis(lo, hi, height, fmt)]
    for n, (label, interval) in enumerate(rows):
        parts.append(_row(n, label, interval, lo, hi, fmt))
    return _frame(chart_id, title, height, "".join(parts))


def _x(value: float, lo: float, hi: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * (value - lo) / (hi - lo)


def _axis(lo: float, hi: float, height: int, fmt: str) -> str:
    y = height - BOTTOM
    ticks = []
    for k in range(5):
        value = lo + (hi - lo) * k / 4
        x = _x(value, lo, hi)
        ticks.append(
            f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{y}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{y + 16}" text-anchor="middle" fill="#555">'
            f"{escape(fmt.format(value))}</text>"
        )
    return (
        "".join(ticks) + f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="#999"/>'
    )


def _row(n: int, label: str, interval: Interval, lo: float, hi: float, fmt: str) -> str:
    y = TOP + ROW * n + ROW / 2
    colour = COLOURS[n % len(COLOURS)]
    text = (
        f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}'
        f" (n={interval.n})</text>"
    )
    if interval.mean is None or interval.low is None or interval.high is None:
        return text
    tip = escape(
        f"{label}: {fmt.format(interval.mean)} "
        f"[{fmt.format(interval.low)}, {fmt.format(interval.high)}], n={interval.n}"
    )
    x0, x1, xm = (_x(v, lo, hi) for v in (interval.low, interval.high, interval.mean))
    return text + (
        f'<g class="cg-interval"><title>{tip}</title>'
        f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{colour}"'
        ' stroke-width="6" stroke-linecap="round" opacity="0.35"/>'
        f'<circle cx="{xm:.1f}" cy="{y:.1f}" r="5" fill="{colour}"/></g>'
    )


def _frame(chart_id: str, title: str, height: int, body: str) -> SafeString:
    return format_html(
        '<svg id="{}" class="cg-chart" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"'
        ' width="{}" height="{}" viewBox="0 0 {} {}" font-family="sans-serif" font-size="11">'
        '<text x="10" y="18" font-size="13" font-weight="bold">{}</text>{}</svg>',
        chart_id,
        title,
        WIDTH,
        height,
        WIDTH,
        height,
        title,
        mark_safe(body),
    )
