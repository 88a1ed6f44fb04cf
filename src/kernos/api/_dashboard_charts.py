"""Charts as inline SVG, drawn on the server: no chart library, nothing to download.

Functions here compute geometry (rectangles, lines, labels in the SVG's own coordinates);
the ``charts.html`` macros write it out, so every text goes through the template's escaping.
Colours come from the Okabe-Ito palette, which people with any common colour blindness can
tell apart; each mark has a ``<title>`` that a browser shows on hover.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D1F")
OTHER = "#999999"
#: reference lines (a budget's limit): the stylesheet draws them dashed in this colour
REFERENCE = "#C62828"
#: the plot area inside the SVG's viewBox (left, top, right, bottom margins)
WIDTH, HEIGHT = 960.0, 280.0
LEFT, TOP, RIGHT, BOTTOM = 64.0, 12.0, 12.0, 36.0


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: str
    title: str


@dataclass(frozen=True, slots=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    kind: str  # grid | axis | ref
    title: str = ""


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"
    kind: str = "tick"


@dataclass(frozen=True, slots=True)
class Path:
    points: str
    stroke: str
    title: str


@dataclass(slots=True)
class Chart:
    """One SVG: its marks, and a legend of (colour, name)."""

    title: str
    rects: list[Rect] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    width: float = WIDTH
    height: float = HEIGHT
    empty: bool = False


def nice_ceiling(value: float) -> tuple[float, float]:
    """A round top for an axis reaching ``value``, and the step of its 4-5 gridlines."""
    if value <= 0:
        return 1.0, 0.25
    raw = value / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return step * math.ceil(value / step), step


def colours(keys: Sequence[str]) -> dict[str, str]:
    return {k: (OTHER if k == "other" else PALETTE[i % len(PALETTE)]) for i, k in enumerate(keys)}


def time_label(at: float, bucket: float) -> str:
    when = datetime.fromtimestamp(at, UTC)
    return when.strftime("%H:%M") if bucket < 86_400 else when.strftime("%b %d")


def _y_axis(chart: Chart, top: float, step: float, fmt: Callable[[float], str]) -> None:
    plot_h = chart.height - TOP - BOTTOM
    ticks = round(top / step)
    for i in range(ticks + 1):
        value = step * i
        y = chart.height - BOTTOM - plot_h * value / top
        chart.lines.append(Line(LEFT, y, chart.width - RIGHT, y, "grid" if i else "axis"))
        chart.labels.append(Label(LEFT - 6, y + 4, fmt(value), anchor="end"))


def _x_labels(chart: Chart, starts: Sequence[float], bucket: float, slot: float) -> None:
    every = max(1, math.ceil(len(starts) / 8))
    for i, start in enumerate(starts):
        if i % every == 0:
            x = LEFT + slot * (i + 0.5)
            chart.labels.append(Label(x, chart.height - BOTTOM + 16, time_label(start, bucket)))


def stacked_bars(
    title: str,
    starts: Sequence[float],
    bucket: float,
    series: Mapping[str, Mapping[float, float]],
    fmt: Callable[[float], str],
) -> Chart:
    """Bars per time bucket (``starts``), stacked by key, in the order of ``series``."""
    chart = Chart(title)
    totals = [sum(s.get(t, 0.0) for s in series.values()) for t in starts]
    if not starts or not any(totals):
        chart.empty = True
        return chart
    top, step = nice_ceiling(max(totals))
    _y_axis(chart, top, step, fmt)
    plot_w = chart.width - LEFT - RIGHT
    plot_h = chart.height - TOP - BOTTOM
    slot = plot_w / len(starts)
    palette = colours(list(series))
    for i, start in enumerate(starts):
        base = chart.height - BOTTOM
        for key, values in series.items():
            value = values.get(start, 0.0)
            if value <= 0:
                continue
            h = plot_h * value / top
            base -= h
            chart.rects.append(
                Rect(
                    LEFT + slot * i + slot * 0.1,
                    base,
                    slot * 0.8,
                    h,
                    palette[key],
                    f"{key} · {time_label(start, bucket)}: {fmt(value)}",
                )
            )
    _x_labels(chart, starts, bucket, slot)
    chart.legend = [(palette[k], k) for k in series]
    return chart


def cumulative_line(
    title: str,
    starts: Sequence[float],
    bucket: float,
    values: Mapping[float, float],
    limit: float | None,
    fmt: Callable[[float], str],
    *,
    width: float = WIDTH,
    height: float = HEIGHT,
) -> Chart:
    """Spend adding up over ``starts``, against ``limit`` drawn as a dashed reference line."""
    chart = Chart(title, width=width, height=height)
    running: list[float] = []
    total = 0.0
    for start in starts:
        total += values.get(start, 0.0)
        running.append(total)
    if not starts:
        chart.empty = True
        return chart
    top, step = nice_ceiling(max([*running, limit or 0.0, 1e-9]) * 1.05)
    _y_axis(chart, top, step, fmt)
    plot_w = chart.width - LEFT - RIGHT
    plot_h = chart.height - TOP - BOTTOM
    slot = plot_w / len(starts)

    def y(v: float) -> float:
        return chart.height - BOTTOM - plot_h * v / top

    points = " ".join(f"{LEFT + slot * (i + 0.5):.1f},{y(v):.1f}" for i, v in enumerate(running))
    chart.paths.append(Path(points, PALETTE[0], f"spent: {fmt(total)}"))
    if limit is not None:
        chart.lines.append(
            Line(LEFT, y(limit), chart.width - RIGHT, y(limit), "ref", f"budget: {fmt(limit)}")
        )
        chart.labels.append(
            Label(chart.width - RIGHT - 4, y(limit) - 5, f"budget {fmt(limit)}", "end", "ref")
        )
    _x_labels(chart, starts, bucket, slot)
    chart.legend = [(PALETTE[0], "spent"), *([(REFERENCE, "budget")] if limit is not None else [])]
    return chart


def buckets(since: float, until: float, bucket: float) -> list[float]:
    """The starts of every bucket from the one holding ``since`` to the one holding
    ``until``, aligned to multiples of ``bucket`` (as the store aligns them)."""
    first = math.floor(since / bucket) * bucket
    count = int((until - first) // bucket) + 1
    return [first + i * bucket for i in range(max(count, 1))]


def sparkline(starts: Sequence[float], series: Mapping[str, Mapping[float, float]]) -> Chart:
    """A small stacked bar chart without axes: activity at a glance (answered, failed)."""
    chart = Chart("", width=240.0, height=40.0)
    totals = [sum(s.get(t, 0.0) for s in series.values()) for t in starts]
    if not starts or not any(totals):
        chart.empty = True
        return chart
    top = max(totals)
    slot = chart.width / len(starts)
    fills = {"answered": PALETTE[2], "failed": PALETTE[5]}
    for i, start in enumerate(starts):
        base = chart.height
        for key, values in series.items():
            value = values.get(start, 0.0)
            if value <= 0:
                continue
            h = (chart.height - 2) * value / top
            base -= h
            chart.rects.append(
                Rect(slot * i, base, max(slot - 1, 1), h, fills.get(key, OTHER), f"{value:g} {key}")
            )
    chart.legend = [(fills.get(k, OTHER), k) for k in series]
    return chart
