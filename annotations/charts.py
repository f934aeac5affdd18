"""Charts drawn on the server as inline SVG.

Every piece is built with format_html (or format_html_join), so every label, which is user data (domain
and model names), is escaped. No style attributes and no script: the site's Content-Security-Policy
admits neither, so the charts use SVG presentation attributes (fill, stroke, font-size) only; layout
around them lives in static/css/metrics.css.

Values are fractions from 0 to 1 (rates, shares, normalised edit distances); both charts draw a 0–1 axis.
"""

from collections.abc import Callable, Iterable, Sequence
from datetime import date, timedelta

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

# Okabe–Ito: tells apart for the common colour-vision deficiencies. More series than colours reuse them.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#000000")
NO_DATA = "No reviews in this period."

Bars = Sequence[tuple[str, float | None]]  # (series label, value or None: not measured)
BarGroups = Sequence[tuple[str, Bars]]  # (group label, its bars)
Series = Sequence[tuple[str, Sequence[tuple[date, float]]]]  # (series label, (day, value) points)

_LEFT, _RIGHT, _TOP = 52, 16, 20
_PLOT_HEIGHT = 180
_X_LABELS = 34  # room under the plot for the x-axis labels
_LEGEND_ROW = 18
_BAR_WIDTH, _BAR_GAP, _GROUP_GAP = 26, 4, 20
_MIN_SLOT = 112  # a group's room at least, so that its label fits under it
_CHAR_WIDTH = 7  # about, at font-size 12
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
_LABEL_CHARS = 32
_TEXT = "#1d2329"
_MUTED = "#5a6570"
_GRID = "#d9dde2"


def decimal(value: float) -> str:
    return f"{value:.2f}"


def percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _n(number: float) -> str:
    return f"{number:.1f}"


def _short(label: str, limit: int = _LABEL_CHARS) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _join(parts: Iterable[SafeString]) -> SafeString:
    return format_html_join("", "{}", ((part,) for part in parts))


def _colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def empty(text: str = NO_DATA) -> SafeString:
    return format_html('<p class="chart-empty">{}</p>', text)


def _svg(*, chart_id: str, title: str, description: str, width: float, height: float, body: SafeString) -> SafeString:
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{}" viewBox="0 0 {} {}" width="{}" height="{}"'
        ' role="img" aria-label="{}" aria-describedby="{}-desc" font-family="system-ui, sans-serif">'
        '<title id="{}-title">{}</title><desc id="{}-desc">{}</desc>{}</svg>',
        chart_id,
        _n(width),
        _n(height),
        _n(width),
        _n(height),
        title,
        chart_id,
        chart_id,
        title,
        chart_id,
        description,
        body,
    )


def _y_axis(*, plot_width: float, value_format: Callable[[float], str], scale: float = 1.0) -> SafeString:
    """Grid lines and labels for 0–1 (times `scale`), and the axis line."""
    parts = []
    for tick in _TICKS:
        y = _TOP + _PLOT_HEIGHT * (1 - tick)
        parts.append(
            format_html(
                '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="1"/>'
                '<text x="{}" y="{}" text-anchor="end" font-size="11" fill="{}">{}</text>',
                _LEFT,
                _n(y),
                _n(_LEFT + plot_width),
                _n(y),
                _GRID,
                _LEFT - 6,
                _n(y + 4),
                _MUTED,
                value_format(tick * scale),
            )
        )
    parts.append(
        format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="1"/>',
            _LEFT,
            _TOP,
            _LEFT,
            _TOP + _PLOT_HEIGHT,
            _MUTED,
        )
    )
    return _join(parts)


def _legend(labels: Sequence[str], *, top: float, marker: str) -> SafeString:
    parts = []
    for index, label in enumerate(labels):
        y = top + index * _LEGEND_ROW
        if marker == "line":
            swatch = format_html(
                '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="3"/>',
                _LEFT,
                _n(y + 5),
                _LEFT + 14,
                _n(y + 5),
                _colour(index),
            )
        else:
            swatch = format_html(
                '<rect x="{}" y="{}" width="12" height="12" fill="{}"/>', _LEFT, _n(y - 1), _colour(index)
            )
        parts.append(
            format_html(
                '<g class="legend-entry">{}<text x="{}" y="{}" font-size="12" fill="{}">{}</text></g>',
                swatch,
                _LEFT + 20,
                _n(y + 9),
                _TEXT,
                _short(label),
            )
        )
    return _join(parts)


def bar_chart(
    groups: BarGroups,
    *,
    chart_id: str,
    title: str,
    description: str,
    value_format: Callable[[float], str] = decimal,
    legend: Sequence[str] | None = None,
) -> SafeString:
    """Grouped bars: one group per x label (a domain), one bar per series (a model version) in it.

    `legend` fixes the series order and so their colours (default: order of first appearance); a series
    keeps its colour in every group. A None value leaves its slot empty, marked "n/a".
    """
    groups = [(label, list(bars)) for label, bars in groups if bars]
    if not any(value is not None for _, bars in groups for _, value in bars):
        return empty()
    order = list(legend or [])
    for _, bars in groups:
        order.extend(series for series, _ in bars if series not in order)
    colour_of = {series: _colour(index) for index, series in enumerate(order)}

    slots = [max(len(bars) * (_BAR_WIDTH + _BAR_GAP) - _BAR_GAP, _MIN_SLOT) for _, bars in groups]
    plot_width = sum(slots) + _GROUP_GAP * (len(groups) + 1)
    width = _LEFT + plot_width + _RIGHT
    baseline = _TOP + _PLOT_HEIGHT
    parts = [_y_axis(plot_width=plot_width, value_format=value_format)]

    x = _LEFT + _GROUP_GAP
    for (group, bars), slot in zip(groups, slots, strict=True):
        first_bar = x + (slot - (len(bars) * (_BAR_WIDTH + _BAR_GAP) - _BAR_GAP)) / 2
        for index, (series, value) in enumerate(bars):
            bar_x = first_bar + index * (_BAR_WIDTH + _BAR_GAP)
            centre = bar_x + _BAR_WIDTH / 2
            if value is None:
                parts.append(
                    format_html(
                        '<text x="{}" y="{}" text-anchor="middle" font-size="10" fill="{}">n/a</text>',
                        _n(centre),
                        baseline - 4,
                        _MUTED,
                    )
                )
                continue
            height = _PLOT_HEIGHT * min(max(value, 0.0), 1.0)
            parts.append(
                format_html(
                    '<rect class="bar" x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}, {}: {}</title></rect>'
                    '<text class="value" x="{}" y="{}" text-anchor="middle" font-size="10" fill="{}">{}</text>',
                    _n(bar_x),
                    _n(baseline - height),
                    _BAR_WIDTH,
                    _n(height),
                    colour_of[series],
                    group,
                    series,
                    value_format(value),
                    _n(centre),
                    _n(baseline - height - 4),
                    _TEXT,
                    value_format(value),
                )
            )
        parts.append(
            format_html(
                '<text class="group" x="{}" y="{}" text-anchor="middle" font-size="12" fill="{}">'
                "{}<title>{}</title></text>",
                _n(x + slot / 2),
                baseline + 18,
                _TEXT,
                _short(group, int((slot + _GROUP_GAP) / _CHAR_WIDTH)),
                group,
            )
        )
        x += slot + _GROUP_GAP
    parts.append(
        format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="1"/>',
            _LEFT,
            baseline,
            _n(_LEFT + plot_width),
            baseline,
            _MUTED,
        )
    )
    legend_top = baseline + _X_LABELS
    parts.append(_legend(order, top=legend_top, marker="box"))
    height = legend_top + len(order) * _LEGEND_ROW + 4
    return _svg(chart_id=chart_id, title=title, description=description, width=width, height=height, body=_join(parts))


def line_chart(
    series: Series,
    *,
    start: date,
    end: date,
    chart_id: str,
    title: str,
    description: str,
    value_format: Callable[[float], str] = decimal,
    width: int = 640,
) -> SafeString:
    """One line per series over the days from `start` to `end`; a dot on each day with a value.
    Days without a value are not drawn: the line joins the days on either side."""
    series = [(label, [(day, value) for day, value in points if start <= day <= end]) for label, points in series]
    series = [(label, points) for label, points in series if points]
    if not series:
        return empty()
    plot_width = width - _LEFT - _RIGHT
    span = max((end - start).days, 1)
    baseline = _TOP + _PLOT_HEIGHT

    def position(day: date, value: float) -> tuple[str, str]:
        x = _LEFT + plot_width * (day - start).days / span
        y = baseline - _PLOT_HEIGHT * min(max(value, 0.0), 1.0)
        return _n(x), _n(y)

    parts = [_y_axis(plot_width=plot_width, value_format=value_format)]
    ticks = sorted({start, start + timedelta(days=span // 2), end})
    for day in ticks:
        x, _ = position(day, 0)
        anchor = "start" if day == start else "end" if day == end else "middle"
        parts.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="{}" font-size="11" fill="{}">{}</text>',
                x,
                baseline + 18,
                anchor,
                _MUTED,
                day.isoformat(),
            )
        )
    parts.append(
        format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="1"/>',
            _LEFT,
            baseline,
            _LEFT + plot_width,
            baseline,
            _MUTED,
        )
    )
    for index, (label, points) in enumerate(series):
        colour = _colour(index)
        coordinates = [position(day, value) for day, value in points]
        if len(coordinates) > 1:
            parts.append(
                format_html(
                    '<polyline class="line" points="{}" fill="none" stroke="{}" stroke-width="2"/>',
                    " ".join(f"{x},{y}" for x, y in coordinates),
                    colour,
                )
            )
        for (day, value), (x, y) in zip(points, coordinates, strict=True):
            parts.append(
                format_html(
                    '<circle class="point" cx="{}" cy="{}" r="3.5" fill="{}"><title>{}, {}: {}</title></circle>',
                    x,
                    y,
                    colour,
                    label,
                    day.isoformat(),
                    value_format(value),
                )
            )
    legend_top = baseline + _X_LABELS
    parts.append(_legend([label for label, _ in series], top=legend_top, marker="line"))
    height = legend_top + len(series) * _LEGEND_ROW + 4
    return _svg(chart_id=chart_id, title=title, description=description, width=width, height=height, body=_join(parts))


def step_chart(
    points: Sequence[tuple[float, float]],
    *,
    chart_id: str,
    title: str,
    description: str,
    x_label: str = "step",
    width: int = 640,
) -> SafeString:
    """One line of (x, y) points with y from 0 to a little above its highest value: a training loss curve."""
    points = [(float(x), float(y)) for x, y in points]
    if not points:
        return empty("Nothing yet.")
    top = max(y for _, y in points) * 1.05 or 1.0
    low_x, high_x = points[0][0], max(points[-1][0], points[0][0] + 1)
    plot_width = width - _LEFT - _RIGHT
    baseline = _TOP + _PLOT_HEIGHT

    def position(x: float, y: float) -> tuple[str, str]:
        return _n(_LEFT + plot_width * (x - low_x) / (high_x - low_x)), _n(baseline - _PLOT_HEIGHT * y / top)

    parts = [_y_axis(plot_width=plot_width, value_format=lambda value: f"{value:.2f}", scale=top)]
    for x, anchor in ((low_x, "start"), (high_x, "end")):
        parts.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="{}" font-size="11" fill="{}">{} {}</text>',
                position(x, 0)[0],
                baseline + 18,
                anchor,
                _MUTED,
                x_label,
                f"{x:g}",
            )
        )
    parts.append(
        format_html(
            '<polyline class="line" points="{}" fill="none" stroke="{}" stroke-width="2"/>',
            " ".join(",".join(position(x, y)) for x, y in points),
            _colour(0),
        )
    )
    return _svg(
        chart_id=chart_id,
        title=title,
        description=description,
        width=width,
        height=baseline + _X_LABELS,
        body=_join(parts),
    )
