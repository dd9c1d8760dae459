"""The demo's terminal output (rich): the live view of each run and the final comparison.

The live view polls what is already there eight times a second: the run's
counters, the farm's up/down flags, and for the mesh run the load balancer's
instances and the breakers. Nothing in the request path reports to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..mesh import Mesh
from .backends import BackendFarm
from .runner import SERVICE, DemoResult, Refresh, RunStats

__all__ = ["LiveView", "comparison_table", "print_summary", "settings_lines"]

_STATE_STYLE = {
    "closed": "green",
    "open": "bold red",
    "half_open": "yellow",
    "forced_open": "bold red",
    "disabled": "dim",
    "metrics_only": "cyan",
}


class LiveView:
    """Shows a run while it goes on; ``watch`` is the :class:`~.runner.RunView` hook."""

    def __init__(self, console: Console, settings: dict[str, object] | None = None) -> None:
        self.console = console
        self.settings = settings
        self._run_number = 0

    @contextmanager
    def watch(
        self, stats: RunStats, farm: BackendFarm, mesh: Mesh | None, status_url: str | None
    ) -> Iterator[Refresh]:
        self._run_number += 1
        number = self._run_number

        settings = self.settings if mesh is not None else None
        panel = [_render(stats, farm, mesh, number, status_url, settings)]

        # No refresh thread: the run redraws from its event loop (see RunView), and its
        # last redraw, made before its client closes, is what stays on the screen.
        with Live(
            get_renderable=lambda: panel[0], console=self.console, auto_refresh=False
        ) as live:

            def refresh() -> None:
                panel[0] = _render(stats, farm, mesh, number, status_url, settings)
                live.refresh()

            yield refresh
        self.console.line()


def settings_lines(settings: dict[str, object] | None) -> list[str]:
    """The mesh's settings as short lines: the file, then ``section: key=value ...``."""
    if not settings:
        return []
    lines = [f"settings from {settings.get('source') or 'a mapping'}"]
    sections = settings.get("sections")
    if isinstance(sections, dict):
        for section, values in sections.items():
            if isinstance(values, dict):
                pairs = " ".join(f"{k}={_short(v)}" for k, v in values.items())
                lines.append(f"  {section}: {pairs}")
    return lines


def _short(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v).rpartition(":")[2] for v in value)
    return str(value)


def _render(
    stats: RunStats,
    farm: BackendFarm,
    mesh: Mesh | None,
    number: int,
    status_url: str | None,
    settings: dict[str, object] | None = None,
) -> Panel:
    table = Table(expand=False, box=None, padding=(0, 1), header_style="bold")
    table.add_column("backend", no_wrap=True)
    table.add_column("behaviour", style="dim", no_wrap=True)
    table.add_column("server", no_wrap=True)
    if mesh is not None:
        table.add_column("pool", no_wrap=True)
        table.add_column("breaker", no_wrap=True)
    table.add_column("picks", justify="right", no_wrap=True)
    table.add_column("busy", justify="right", no_wrap=True)
    table.add_column("failed", justify="right", no_wrap=True)
    proxy = mesh.get_service(SERVICE) if mesh is not None else None
    for backend in farm.backends:
        name = backend.spec.name
        server = Text("up", "green") if backend.up else Text("down", "bold red")
        cells: list[Text | str] = [name, backend.spec.role, server]
        in_flight = stats.in_flight[name]
        if mesh is not None and proxy is not None:
            instance = proxy.load_balancer.get(name)
            healthy = (
                instance is not None
                and instance.healthy
                and not proxy.load_balancer.is_ejected(name)
            )
            cells.append(Text("in", "green") if healthy else Text("out", "red"))
            breaker = mesh.get_circuit_breaker(f"{SERVICE}/{name}")
            state = breaker.state.value if breaker is not None else "-"
            cells.append(Text(state, _STATE_STYLE.get(state, "")))
            if instance is not None:
                in_flight = instance.connections
        failures = stats.failures[name]
        cells += [
            str(stats.attempts[name]),
            str(in_flight),
            Text(str(failures), "red" if failures else ""),
        ]
        table.add_row(*cells)

    rate = stats.success_rate
    rate_style = "green" if rate >= 99 else "yellow" if rate >= 90 else "red"
    line = Text.assemble(
        (f"{stats.done}/{stats.total} requests", "bold"),
        f"  {stats.elapsed:4.1f} s  success ",
        (f"{rate:5.1f}%", f"bold {rate_style}"),
        f"  retries {stats.retries}  to dead backends ",
        (str(stats.dead_backend_requests), "red" if stats.dead_backend_requests else ""),
    )
    parts: list[Text | Table] = [line]
    if mesh is not None and proxy is not None:
        state = proxy.circuit_breaker.state.value
        parts.append(
            Text.assemble(
                f"service breaker {SERVICE!r}: ",
                (state, _STATE_STYLE.get(state, "")),
                f"   balancing: {proxy.load_balancer.strategy.value}",
                style="dim",
            )
        )
    parts.append(table)
    if settings:
        parts.append(Text("\n".join(settings_lines(settings)), style="dim"))
    title = f"run {number}/3: {stats.name}"
    subtitle = None
    if mesh is not None and status_url:
        subtitle = f"service-mesh status --url {status_url}"
    return Panel(
        Group(*parts),
        title=title,
        title_align="left",
        subtitle=subtitle,
        subtitle_align="right",
        expand=False,
    )


RUN_TITLES = {
    "plain": "plain client",
    "loop": "3-try retry loop",
    "mesh": "through the mesh",
}


def comparison_rows(result: DemoResult) -> tuple[list[str], list[list[str]]]:
    """The runs side by side: headers, then one row per measure (first cell the label)."""
    runs = result.runs()
    summaries = [stats.summary() for _, stats in runs]

    def each(render: Callable[[dict[str, Any]], object]) -> list[str]:
        return [str(render(summary)) for summary in summaries]

    rows = [
        ["success rate", *each(lambda s: f"{s['success_rate']:.2f}%")],
        ["failed requests", *each(lambda s: s["failed"])],
        ["p50 latency", *each(lambda s: f"{s['p50_ms']:.1f} ms")],
        ["p99 latency", *each(lambda s: f"{s['p99_ms']:.1f} ms")],
        ["sent to dead backends", *each(lambda s: s["dead_backend_requests"])],
        ["sent to an open breaker", *each(lambda s: _or_dash(s["open_breaker_requests"]))],
        ["retries", *each(lambda s: s["retries"])],
        ["duration", *each(lambda s: f"{s['duration_s']:.1f} s")],
    ]
    return [RUN_TITLES[key] for key, _ in runs], rows


def _or_dash(value: object) -> object:
    return "-" if value is None else value


def comparison_table(result: DemoResult) -> Table:
    """The runs side by side: what the mesh changed, next to a fair hand-written loop."""
    heads, rows = comparison_rows(result)
    table = Table(
        title=f"the same requests, {len(heads)} times", title_style="bold", header_style="bold"
    )
    table.add_column("")
    for head in heads:
        table.add_column(head, justify="right")
    for label, *values in rows:
        table.add_row(label, *values[:-1], Text(values[-1], "bold"))
    return table


def print_summary(console: Console, result: DemoResult) -> None:
    """The comparison table and a one-line verdict."""
    console.print(comparison_table(result))
    plain, mesh = result.plain.summary(), result.mesh.summary()
    console.print(
        f"The mesh turned {plain['failed']} failed requests into {mesh['failed']} and sent "
        f"{mesh['dead_backend_requests']} requests to dead backends instead of "
        f"{plain['dead_backend_requests']}; p99 went from {plain['p99_ms']:.0f} ms to "
        f"{mesh['p99_ms']:.0f} ms."
    )
    if result.loop is not None:
        loop = result.loop.summary()
        console.print(
            f"The hand-written 3-try loop failed {loop['failed']} requests, p99 "
            f"{loop['p99_ms']:.0f} ms."
        )
    for line in settings_lines(result.settings):
        console.print(f"[dim]{line}[/dim]")
    stopped = "every backend stopped" if result.servers_stopped else "SOME PORTS STILL OPEN"
    console.print(f"[dim]{len(result.ports)} backends on 127.0.0.1, {stopped}.[/dim]")
