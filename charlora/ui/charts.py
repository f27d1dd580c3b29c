"""Line charts as inline SVG, drawn on the server.

gr.LinePlot builds its Vega spec (and the colour domain of its series) from the first value it
receives; later values only swap the data, so a chart that starts empty draws its lines with
`stroke: none` until the page is reloaded. An SVG string has no such state: every update is the
whole chart, a few KB, and a test can read the drawn points from it.
"""

from __future__ import annotations

import html
import math

COLORS = ("#f97316", "#2563eb", "#16a34a", "#9333ea")
WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 30, 44
LEGEND_ROW, LEGEND_CHAR = 16, 7  # a legend row's height; a generous width per character at 12 px sans-serif


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2 or 5 times a power of ten apart)."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _legend_places(names: list[str]) -> list[tuple[float, int]]:
    """(x, row) of each legend entry: left to right, a new row when the next would run past the right edge."""
    places, x, row = [], LEFT, 0
    for name in names:
        width = 22 + LEGEND_CHAR * len(name)
        if x > LEFT and x + width > WIDTH - RIGHT:
            x, row = LEFT, row + 1
        places.append((x, row))
        x += width + 12
    return places


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
               empty_text: str = "No data yet", elem_id: str = "chart") -> str:
    """An SVG chart of one or more named series of (x, y) points. Each series' polyline carries
    data-series and data-points (the number of points) so tests and users' scripts can read it."""
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    legend = _legend_places(list(series)) if points else []
    height = HEIGHT + LEGEND_ROW * max(0, max((row for _, row in legend), default=0))
    parts = [f'<svg id="{elem_id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
             f'width="100%" style="max-width:{WIDTH * 1.6:.0f}px;font-family:sans-serif;font-size:12px" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>']
    if not points:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#888">'
                     f'{html.escape(empty_text)}</text></svg>')
        return "".join(parts)
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    if y_high == y_low:
        y_low, y_high = y_low - abs(y_low) * 0.1 - 0.1, y_high + abs(y_high) * 0.1 + 0.1
    pad = (y_high - y_low) * 0.05
    y_low, y_high = y_low - pad, y_high + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x):
        return LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y):
        return TOP + (y_high - y) / (y_high - y_low) * plot_h

    for t in _ticks(y_low, y_high):
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e5e7eb"/>'
                     f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" fill="#444">{_label(t)}</text>')
    x_ticks = _ticks(x_low, x_high)
    if all(float(x).is_integer() for x, _ in points):  # epochs, steps: no tick between two of them
        x_ticks = [t for t in x_ticks if float(t).is_integer()] or sorted({x for x, _ in points})
    for t in x_ticks:
        parts.append(f'<text x="{sx(t):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" fill="#444">'
                     f'{_label(t)}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#9ca3af"/>'
                 f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 18}" text-anchor="middle">{html.escape(x_label)}</text>'
                 f'<text transform="translate(14 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">'
                 f'{html.escape(y_label)}</text>')
    for index, (name, pts) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        good = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        parts.append(f'<polyline data-series="{html.escape(name)}" data-points="{len(good)}" points="{coords}" '
                     f'fill="none" stroke="{color}" stroke-width="1.6"/>')
        if len(good) == 1:  # a single point draws no line: show it as a dot
            parts.append(f'<circle cx="{sx(good[0][0]):.1f}" cy="{sy(good[0][1]):.1f}" r="2.5" fill="{color}"/>')
        legend_x, row = legend[index]
        y = HEIGHT + LEGEND_ROW * row
        parts.append(f'<line x1="{legend_x}" x2="{legend_x + 18}" y1="{y - 5}" y2="{y - 5}" '
                     f'stroke="{color}" stroke-width="3"/><text x="{legend_x + 22}" y="{y - 1}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
