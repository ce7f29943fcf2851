"""Small charts drawn on the server as inline SVG: no JavaScript, no CDN, nothing to load.

Each chart is an `<svg role="img">` with a `<title>` and a `<desc>` (what a screen reader announces), one
`<path>` per series (stacked bars or a line; its `<title>` names it), and one transparent column per
x position whose `<title>` lists every series' value there: hovering shows the numbers. Colours come
from classes (`mb-s-<key>`) in mailbox_app/static/mailbox_admin/admin.css, so they follow the admin's
light and dark themes. Pure: values in, markup out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 560, 150
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 10, 22
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
X_LABEL_EVERY = 10
BAR_FILL = 0.8  # of an x slot
LEVEL_ROW = 22  # a horizontal bar's row height


def count_text(value: float) -> str:
    """A count, with one decimal only where an axis halves an odd top (0.5)."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    key: str  # the colour class: mb-s-<key>
    values: tuple[float | None, ...]  # one per label; None: nothing to draw there (a gap in a line)
    note: str = ""  # shown in the legend, e.g. "312 in the hour"


@dataclass(frozen=True, slots=True)
class Chart:
    chart_id: str
    title: str
    description: str
    labels: tuple[str, ...]  # the x positions, e.g. minutes "14:05"
    bars: tuple[Series, ...] = ()  # stacked, first at the bottom
    lines: tuple[Series, ...] = ()  # drawn over the bars
    unit: Callable[[float], str] = count_text  # how a value reads (axis and hover)


def _join(parts: Sequence[SafeString | str]) -> SafeString:
    return mark_safe("".join(str(conditional_escape(part)) for part in parts))


def nice_ceiling(value: float) -> float:
    """The axis top: the smallest 1, 2 or 5 times a power of ten at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if value <= m * power)


def _top(chart: Chart) -> float:
    stacked = [sum(s.values[i] or 0 for s in chart.bars) for i in range(len(chart.labels))]
    lines = [v for s in chart.lines for v in s.values if v is not None]
    return nice_ceiling(max([*stacked, *lines, 0]))


def _x(chart: Chart, index: int) -> float:
    return round(LEFT + PLOT_W * (index + 0.5) / max(len(chart.labels), 1), 1)


def _y(value: float, top: float) -> float:
    return round(TOP + PLOT_H * (1 - value / top), 1)


def _axes(chart: Chart, top: float) -> SafeString:
    grid = [
        format_html(
            '<line class="mb-grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
            '<text class="mb-tick" x="{}" y="{}" text-anchor="end">{}</text>',
            LEFT,
            WIDTH - RIGHT,
            _y(v, top),
            _y(v, top),
            LEFT - 4,
            _y(v, top) + 3,
            chart.unit(v),
        )
        for v in (0.0, top / 2, top)
    ]
    ticks = [
        format_html(
            '<text class="mb-tick" x="{}" y="{}" text-anchor="{}">{}</text>',
            _x(chart, i),
            HEIGHT - 6,
            "end" if i == len(chart.labels) - 1 else "middle",
            label,
        )
        for i, label in enumerate(chart.labels)
        if i % X_LABEL_EVERY == 0 or i == len(chart.labels) - 1
    ]
    return _join([*grid, *ticks])


def _bars(chart: Chart, top: float) -> list[SafeString]:
    width = PLOT_W / max(len(chart.labels), 1) * BAR_FILL
    base = [0.0] * len(chart.labels)
    paths = []
    for series in chart.bars:
        segments = []
        for i, value in enumerate(series.values):
            if value:
                low, high = _y(base[i], top), _y(base[i] + value, top)
                segments.append(
                    f"M{_x(chart, i) - width / 2:.1f},{high:.1f}h{width:.1f}V{low:.1f}h{-width:.1f}Z"
                )
                base[i] += value
        paths.append(_path("mb-bar", series, "".join(segments)))
    return paths


def _lines(chart: Chart, top: float) -> list[SafeString]:
    paths = []
    for series in chart.lines:
        segments, pen_down = [], False
        for i, value in enumerate(series.values):
            if value is None:
                pen_down = False
                continue
            segments.append(f"{'L' if pen_down else 'M'}{_x(chart, i):.1f},{_y(value, top):.1f}")
            pen_down = True
        paths.append(_path("mb-line", series, "".join(segments)))
    return paths


def _path(kind: str, series: Series, d: str) -> SafeString:
    if not d:
        return mark_safe("")
    return format_html(
        '<path class="{} mb-s-{}" data-series="{}" d="{}"><title>{}</title></path>',
        kind,
        series.key,
        series.name,
        d,
        series.name,
    )


def _hover(chart: Chart) -> SafeString:
    """A transparent column per x position; its `<title>` is the tooltip with every series' value."""
    slot = PLOT_W / max(len(chart.labels), 1)
    columns = []
    for i, label in enumerate(chart.labels):
        values = [
            f"{s.name} {'—' if s.values[i] is None else chart.unit(s.values[i] or 0)}"
            for s in (*chart.bars, *chart.lines)
        ]
        columns.append(
            format_html(
                '<rect class="mb-hit" x="{}" y="{}" width="{}" height="{}"><title>{}: {}</title></rect>',
                round(LEFT + slot * i, 1),
                TOP,
                round(slot, 1),
                PLOT_H,
                label,
                ", ".join(values),
            )
        )
    return _join(columns)


def _legend(series: Sequence[Series]) -> SafeString:
    return _join(
        [
            format_html(
                '<span class="mb-legend"><span class="mb-swatch mb-s-{}"></span>{}{}</span>',
                s.key,
                s.name,
                f" ({s.note})" if s.note else "",
            )
            for s in series
        ]
    )


def render(chart: Chart) -> SafeString:
    """A chart as a `<figure>`: the SVG and a legend."""
    top = _top(chart)
    body = _join([_axes(chart, top), *_bars(chart, top), *_lines(chart, top), _hover(chart)])
    return format_html(
        '<figure class="mb-chart" id="{}"><figcaption>{}</figcaption>'
        '<svg class="mb-svg" viewBox="0 0 {} {}" role="img" aria-labelledby="{}-title {}-desc">'
        '<title id="{}-title">{}</title><desc id="{}-desc">{}</desc>{}</svg>'
        '<div class="mb-legends">{}</div></figure>',
        chart.chart_id,
        chart.title,
        WIDTH,
        HEIGHT,
        chart.chart_id,
        chart.chart_id,
        chart.chart_id,
        chart.title,
        chart.chart_id,
        chart.description,
        body,
        _legend((*chart.bars, *chart.lines)),
    )


@dataclass(frozen=True, slots=True)
class Level:
    name: str
    key: str
    value: int
    hint: str  # what it means (the bar's tooltip)


def _level_row(index: int, level: Level, top: float) -> SafeString:
    y = TOP + LEVEL_ROW * index
    length = round((PLOT_W - 110) * level.value / top + 1, 1)  # 1 px for a zero: the bar is there, empty
    return format_html(
        '<text class="mb-tick" x="{}" y="{}" text-anchor="end">{}</text>'
        '<path class="mb-bar mb-s-{}" data-series="{}" d="M{},{}h{}v{}h{}Z">'
        "<title>{}: {} ({})</title></path>"
        '<text class="mb-value" x="{}" y="{}">{}</text>',
        LEFT + 56,
        y + 14,
        level.name,
        level.key,
        level.name,
        LEFT + 60,
        y + 3,
        length,
        LEVEL_ROW - 6,
        -length,
        level.name,
        level.value,
        level.hint,
        round(LEFT + 66 + length, 1),
        y + 14,
        count_text(level.value),
    )


def render_levels(chart_id: str, title: str, description: str, levels: Sequence[Level]) -> SafeString:
    """Horizontal bars of values now (no time axis), each with its number written beside it."""
    top = nice_ceiling(max([lv.value for lv in levels] + [0]))
    rows = _join([_level_row(i, lv, top) for i, lv in enumerate(levels)])
    return format_html(
        '<figure class="mb-chart" id="{}"><figcaption>{}</figcaption>'
        '<svg class="mb-svg" viewBox="0 0 {} {}" role="img" aria-labelledby="{}-title {}-desc">'
        '<title id="{}-title">{}</title><desc id="{}-desc">{}</desc>{}</svg></figure>',
        chart_id,
        title,
        WIDTH,
        TOP + LEVEL_ROW * len(levels),
        chart_id,
        chart_id,
        chart_id,
        title,
        chart_id,
        description,
        rows,
    )
