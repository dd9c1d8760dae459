"""The demo's HTML report: one self-contained page, charts drawn as inline SVG.

Nothing is loaded from anywhere: no script, no font, no stylesheet but the
page's own. Charts: success rate over time, p50/p99 latency over time (log
scale), and where each run's attempts went; the faults are marked on the time axis.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import datetime, timezone

from .runner import DemoResult, RunStats, percentile

__all__ = ["render_report", "write_report"]

PLAIN_COLOUR = "#d1495b"
LOOP_COLOUR = "#edae49"
MESH_COLOUR = "#00798c"
COLOURS = {"plain": PLAIN_COLOUR, "loop": LOOP_COLOUR, "mesh": MESH_COLOUR}
WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 40

Point = tuple[float, float]


def write_report(result: DemoResult, path: str) -> None:
    """Write :func:`render_report` to ``path`` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(render_report(result))


def _buckets(stats: RunStats, width: float) -> list[list[tuple[float, bool]]]:
    """The run's requests (latency, success) grouped by start time into ``width``-second bins."""
    count = max(1, math.ceil(max((t for t, _, _ in stats.samples), default=0.0) / width + 1e-9))
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(count)]
    for started, latency, ok in stats.samples:
        bins[min(count - 1, int(started / width))].append((latency, ok))
    return bins


def _series(stats: RunStats, width: float) -> tuple[list[Point], list[Point], list[Point]]:
    """Per bin: success percent, p50 ms, p99 ms (x = the bin's middle, seconds)."""
    success, p50, p99 = [], [], []
    for index, group in enumerate(_buckets(stats, width)):
        if not group:
            continue
        x = (index + 0.5) * width
        success.append((x, 100.0 * sum(ok for _, ok in group) / len(group)))
        ordered = sorted(latency for latency, _ in group)
        p50.append((x, 1000 * percentile(ordered, 50)))
        p99.append((x, 1000 * percentile(ordered, 99)))
    return success, p50, p99


class _Frame:
    """Maps data to SVG coordinates for one chart."""

    def __init__(self, x_max: float, y_min: float, y_max: float, log: bool = False) -> None:
        self.x_max = max(x_max, 1e-9)
        self.log = log
        self.y_min = math.log10(y_min) if log else y_min
        self.y_max = math.log10(y_max) if log else y_max

    def x(self, value: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * min(value, self.x_max) / self.x_max

    def y(self, value: float) -> float:
        if self.log:
            value = math.log10(max(value, 10**self.y_min))
        span = (self.y_max - self.y_min) or 1.0
        value = min(max(value, self.y_min), self.y_max)
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - (value - self.y_min) / span)


def _polyline(frame: _Frame, points: Sequence[Point], colour: str, dashed: bool = False) -> str:
    if not points:
        return ""
    coords = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in points)
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return (
        f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2"{dash} '
        f'points="{coords}"/>'
    )


def _axes(frame: _Frame, y_ticks: Sequence[tuple[float, str]], y_label: str) -> str:
    parts = []
    for value, label in y_ticks:
        y = frame.y(value)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{html.escape(label)}</text>'
        )
    step = _nice_step(frame.x_max)
    tick = 0.0
    while tick <= frame.x_max + 1e-9:
        x = frame.x(tick)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM + 4}" '
            f'class="axis"/><text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" '
            f'text-anchor="middle">{tick:g}</text>'
        )
        tick += step
    parts.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" '
        f'class="axis"/><text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" '
        f'text-anchor="middle">request sent at (seconds since the run started)</text>'
        f'<text x="14" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2})">{html.escape(y_label)}</text>'
    )
    return "".join(parts)


def _nice_step(span: float) -> float:
    raw = span / 8
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _events(frame: _Frame, events: Sequence[tuple[float, str]]) -> str:
    parts = []
    for index, (at, label) in enumerate(events):
        x = frame.x(at)
        y = TOP + 10 + 12 * (index % 3)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" class="event"/>'
            f'<text x="{x + 3:.1f}" y="{y}" class="event-label">{html.escape(label)}</text>'
        )
    return "".join(parts)


def _svg(chart_id: str, title: str, body: str) -> str:
    return (
        f'<svg class="chart" id="{chart_id}" role="img" aria-label="{html.escape(title)}" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def _success_chart(result: DemoResult, width: float, x_max: float) -> str:
    frame = _Frame(x_max, 0, 100)
    ticks = [(v, f"{v:g}%") for v in (0, 25, 50, 75, 100)]
    body = _axes(frame, ticks, "requests that succeeded") + _events(frame, result.plain.events)
    for key, stats in result.runs():
        success, _, _ = _series(stats, width)
        body += _polyline(frame, success, COLOURS[key])
    return _svg("chart-success", "success rate over time", body)


def _latency_chart(result: DemoResult, width: float, x_max: float) -> str:
    series = [(key, *_series(stats, width)[1:]) for key, stats in result.runs()]
    highest = max([y for _, _, p99 in series for _, y in p99] + [10.0])
    top = 10 ** math.ceil(math.log10(highest))
    frame = _Frame(x_max, 1.0, top, log=True)
    ticks = []
    value = 1.0
    while value <= top:
        ticks.append((value, f"{value:g} ms"))
        value *= 10
    body = _axes(frame, ticks, "latency (log scale)") + _events(frame, result.plain.events)
    for key, p50, p99 in series:
        body += _polyline(frame, p50, COLOURS[key]) + _polyline(
            frame, p99, COLOURS[key], dashed=True
        )
    return _svg("chart-latency", "p50 and p99 latency over time", body)


def _traffic_chart(result: DemoResult) -> str:
    """Per backend, per run: attempts sent, the failed ones darker."""
    names = result.plain.backends
    runs = [(stats, COLOURS[key]) for key, stats in result.runs()]
    most = max([max(r.attempts.values(), default=0) for r, _ in runs] + [1])
    bar = 14
    row = 16 + (bar + 2) * len(runs)
    height = TOP + row * len(names) + BOTTOM
    left = 110
    scale = (WIDTH - left - RIGHT - 130) / most  # room for the labels after the bars
    parts = []
    for index, name in enumerate(names):
        y = TOP + index * row
        parts.append(
            f'<text x="{left - 8}" y="{y + 18}" text-anchor="end">{html.escape(name)}</text>'
        )
        for offset, (stats, colour) in enumerate(runs):
            top = y + 4 + offset * (bar + 2)
            sent, failed = stats.attempts[name], stats.failures[name]
            parts.append(
                f'<rect class="bar" x="{left}" y="{top}" width="{max(1.0, sent * scale):.1f}" '
                f'height="{bar}" fill="{colour}" fill-opacity="0.45"/>'
                f'<rect x="{left}" y="{top}" width="{failed * scale:.1f}" height="{bar}" '
                f'fill="{colour}"/>'
                f'<text x="{left + sent * scale + 6:.1f}" y="{top + 11}" class="small">'
                f"{sent} sent, {failed} failed</text>"
            )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{TOP}" y2="{height - BOTTOM}" class="axis"/>'
        f'<text x="{(left + WIDTH) / 2}" y="{height - 12}" text-anchor="middle">'
        "attempts sent to each backend (solid part: failed)</text>"
    )
    return (
        f'<svg class="chart" id="chart-traffic" role="img" aria-label="attempts per backend" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 820px; color: #222; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
.muted { color: #666; } table { border-collapse: collapse; margin: 1rem 0; }
td, th { padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.plain { color: #d1495b; font-weight: 600; } .mesh { color: #00798c; font-weight: 600; }
.loop { color: #b07d1a; font-weight: 600; }
pre.settings { background: #f6f6f6; padding: .6rem .8rem; font-size: .85rem; overflow-x: auto; }
svg.chart { display: block; margin: .5rem 0 1.5rem; background: #fcfcfc; border: 1px solid #eee; }
svg text { font-size: 11px; fill: #444; } svg text.small { font-size: 10px; }
svg .grid { stroke: #e6e6e6; } svg .axis { stroke: #888; }
svg .event { stroke: #999; stroke-dasharray: 2 3; }
svg .event-label { font-size: 10px; fill: #777; }
.legend span { margin-right: 1.2rem; }
"""


def render_report(result: DemoResult) -> str:
    """The whole page as a string."""
    from .live import RUN_TITLES, comparison_rows, settings_lines

    last_start = max(t for _, run in result.runs() for t, _, _ in [*run.samples, (0, 0, 0)])
    width = max(0.25, last_start / 60)
    x_max = max(last_start + width, 0.5)
    heads, rows = comparison_rows(result)
    keys = [key for key, _ in result.runs()]
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    header = (
        "<tr><th></th>"
        + "".join(
            f'<th class="{key}">{html.escape(head)}</th>'
            for key, head in zip(keys, heads, strict=True)
        )
        + "</tr>"
    )
    settings = html.escape("\n".join(settings_lines(result.settings)))
    backends = "".join(
        f"<li><b>{html.escape(spec.name)}</b>: {html.escape(spec.role)}</li>"
        for spec in result.specs
    )
    options = result.options
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    legend = (
        '<p class="legend">'
        + "".join(f'<span class="{key}">&#9632; {RUN_TITLES[key]}</span>' for key in keys)
        + '<span class="muted">{}dotted lines: faults</span></p>'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>service-mesh demo report</title><style>{_STYLE}</style></head>
<body>
<h1>service-mesh demo</h1>
<p class="muted">{options.requests} requests, {options.concurrency} at a time, {options.rate:g} per
second, seed {options.seed}; {stamp}.</p>
<p>The same request stream went to five real HTTP backends on 127.0.0.1 {len(keys)} times: from a
plain httpx client that picks a backend at random, from the same client with a hand-written retry
loop (up to {3} tries, each on another backend, 0.5 s each), and through the mesh
(<code>AsyncMeshTransport</code>) with the settings below.</p>
<ul>{backends}</ul>
<table>{header}
{table}</table>
<h2>The mesh's settings</h2>
<pre class="settings">{settings}</pre>
<h2>Success rate over time</h2>{legend.format("")}
{_success_chart(result, width, x_max)}
<h2>Latency over time</h2>{legend.format("solid: p50, dashed: p99; ")}
{_latency_chart(result, width, x_max)}
<h2>Where the attempts went</h2>
{_traffic_chart(result)}
</body></html>
"""
