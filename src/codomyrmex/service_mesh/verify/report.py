"""``service-mesh verify FILE``: the fault matrix against a user's own configuration.

For each fault mode, three real backends on 127.0.0.1 (one bad), the same load
through a plain client, a hand-written 3-try loop and a mesh built from the
user's settings for one service (:func:`config_setup`), in sync and async code.
The table shows success, p99 and the attempts sent to the bad instance; every
cell where the configuration does worse than the loop is flagged, with the
likely cause read from what the mesh did (its events) and from the settings.

Bounded: small loads by default, and no new cell starts after ``time_limit``
seconds (cells not run are listed). Needs the ``[httpx]`` extra.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import MeshConfig, ServiceSettings, build_proxy
from ..events import CallFailed, CallRejected, Event, InstanceEjected, StateTransition
from ..load_balancer import ServiceInstance
from ..mesh import Mesh
from .faults import HEALTHY, MODES, FaultBackend, FaultSpec
from .matrix import LOOP_TIMEOUT, LOOP_TRIES, SERVICE, Cell, Load, run_cell

__all__ = [
    "CONFIG",
    "ConfigSetup",
    "Finding",
    "Recorder",
    "VerifyOptions",
    "VerifyReport",
    "config_setup",
    "format_report",
    "run_verify",
]

CONFIG = "config"
"""The column of the user's configuration."""


class Recorder:
    """What one mesh did during one cell, from its events (thread-safe)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self.failures: Counter[str] = Counter()
        self.service_opens = 0
        self.failures_at_first_open: Counter[str] | None = None
        self.instance_opens = 0
        self.ejections: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, CallFailed):
                self.failures[event.instance_id] += 1
            elif isinstance(event, StateTransition) and event.new.value == "open":
                if event.source == self.service:
                    self.service_opens += 1
                    if self.failures_at_first_open is None:
                        self.failures_at_first_open = Counter(self.failures)
                else:
                    self.instance_opens += 1
            elif isinstance(event, InstanceEjected):
                self.ejections[event.instance_id] += 1
            elif isinstance(event, CallRejected):
                self.rejections[event.reason] += 1


class ConfigSetup:
    """A fault-matrix contender built from one service of a user's configuration.

    Called with the three instances, it builds a fresh mesh serving
    :data:`~.matrix.SERVICE` with that service's settings (its resolver is
    replaced by the instances given) and records the mesh's events.
    ``transport_options`` are the configuration's ``http`` and
    ``instance_breaker`` settings, passed to the httpx transports.
    """

    def __init__(self, config: MeshConfig, service: str) -> None:
        settings = config.service(service)
        self.service = service
        self.settings: ServiceSettings = dataclasses.replace(settings, name=SERVICE, resolver=None)
        self.transport_options: dict[str, Any] = config.transport_options()
        self.recorders: list[Recorder] = []

    def __call__(self, instances: Sequence[ServiceInstance]) -> Mesh:
        mesh = Mesh()
        mesh.register_service(build_proxy(self.settings, instances=list(instances)))
        recorder = Recorder(SERVICE)
        mesh.subscribe(recorder)
        self.recorders.append(recorder)
        return mesh


def config_setup(config: MeshConfig, service: str) -> ConfigSetup:
    """The contender of ``service``'s settings (KeyError naming the known services)."""
    return ConfigSetup(config, service)


@dataclass(frozen=True)
class VerifyOptions:
    """How much to run: the default stays well under a minute."""

    requests: int = 60
    concurrency: int = 32
    modes: tuple[str, ...] = MODES
    flavours: tuple[str, ...] = ("sync", "async")
    pacings: tuple[float | None, ...] = (None,)
    """Requests started per second for each load; None is a burst."""
    time_limit: float = 50.0
    """No cell starts after this many seconds."""
    seed: int = 1
    slow_seconds: float = 0.3
    flap_seconds: float = 0.5

    def __post_init__(self) -> None:
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"modes: unknown fault mode {mode!r} (one of {', '.join(MODES)})")
        for flavour in self.flavours:
            if flavour not in ("sync", "async"):
                raise ValueError(f"flavours: must be sync or async, got {flavour!r}")
        if not self.modes or not self.flavours or not self.pacings:
            raise ValueError("modes, flavours and pacings must not be empty")
        if not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0, got {self.time_limit!r}")

    def loads(self) -> list[Load]:
        return [
            Load(self.requests, self.concurrency, rate, flavour)
            for flavour in self.flavours
            for rate in self.pacings
        ]


@dataclass
class Finding:
    """One cell where the configuration did worse than the hand-written loop."""

    mode: str
    load: Load
    config: Cell
    loop: Cell
    causes: list[str]

    def headline(self) -> str:
        parts = []
        if self.config.successes < self.loop.successes:
            parts.append(
                f"success {100 * self.config.success_rate:.1f}% against the loop's "
                f"{100 * self.loop.success_rate:.1f}%"
            )
        if _p99_worse(self.config, self.loop):
            parts.append(
                f"p99 {1000 * self.config.p99:.0f} ms against the loop's "
                f"{1000 * self.loop.p99:.0f} ms"
            )
        return f"{self.mode}, {self.load.flavour} {self.load.pacing}: " + "; ".join(parts)


@dataclass
class VerifyReport:
    """Every cell run, the findings, and what the time limit left out."""

    service: str
    options: VerifyOptions
    cells: list[Cell] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings and not self.skipped

    def summary(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "cells": [
                {
                    "mode": c.mode,
                    "load": f"{c.load.flavour} {c.load.pacing}",
                    "contender": c.contender,
                    "success_rate": round(100 * c.success_rate, 2),
                    "p99_ms": None if math.isnan(c.p99) else round(1000 * c.p99, 1),
                    "bad_attempts": c.bad_attempts,
                }
                for c in self.cells
            ],
            "findings": [
                {
                    "mode": f.mode,
                    "load": f"{f.load.flavour} {f.load.pacing}",
                    "what": f.headline(),
                    "causes": f.causes,
                }
                for f in self.findings
            ],
            "skipped": self.skipped,
        }


def _p99_worse(config: Cell, loop: Cell) -> bool:
    """A p99 clearly above the loop's: half as much again plus 50 ms of noise."""
    return config.p99 > 1.5 * loop.p99 + 0.05


def _worse(config: Cell, loop: Cell) -> bool:
    # One request of slack: a single unlucky request is noise, not a finding.
    return config.successes < loop.successes - 1 or _p99_worse(config, loop)


def explain(
    mode: str, config: Cell, loop: Cell, recorder: Recorder | None, setup: ConfigSetup
) -> list[str]:
    """The likely causes of a finding, most telling first."""
    from ..integrations.httpx import DEFAULT_FAILURE_STATUSES

    proxy = build_proxy(setup.settings)
    policy = proxy.retry_policy
    breaker = proxy.circuit_breaker.config
    detector = proxy.load_balancer.outlier_detector
    options = setup.transport_options
    statuses = set(options.get("failure_statuses", DEFAULT_FAILURE_STATUSES))
    causes: list[str] = []
    bad = f"{SERVICE}-0"
    if recorder is not None and recorder.service_opens:
        at_open = recorder.failures_at_first_open or Counter()
        total = sum(at_open.values())
        share = at_open.get(bad, 0)
        refused = recorder.rejections.get("circuit_open", 0)
        if total and share == total and not breaker.windowed:
            opening = (
                f"the service breaker opened after {breaker.failure_threshold} failures "
                "of one instance"
            )
        elif total and share * 10 >= total * 8:
            opening = (
                f"the service breaker opened when {share} of the {total} failures so far "
                "were of one instance"
            )
        else:
            opening = f"the service breaker opened {recorder.service_opens} time(s)"
        judge = (
            f"failure_rate_threshold {breaker.failure_rate_threshold:g}%"
            if breaker.windowed
            else f"failure_threshold {breaker.failure_threshold}"
        )
        causes.append(
            f"{opening} ({judge}) and refused {refused} calls for the whole service; "
            "take the instance out instead (outlier_detection, instance_breaker) or raise "
            "the threshold"
        )
    if recorder is not None:
        for reason, what in (
            ("retry_budget", "the retry budget"),
            ("bulkhead_full", "the bulkhead"),
        ):
            count = recorder.rejections.get(reason, 0)
            if count:
                causes.append(f"{what} refused {count} calls or retries")
    if mode in ("hang", "slow"):
        if policy.attempt_timeout is None:
            causes.append(
                "no retry.attempt_timeout: an attempt on the hung or slow instance waits for "
                "the client's own timeout before failing over"
            )
        elif policy.attempt_timeout > LOOP_TIMEOUT:
            causes.append(
                f"retry.attempt_timeout is {policy.attempt_timeout:g} s; the loop gives up an "
                f"attempt after {LOOP_TIMEOUT:g} s"
            )
    if policy.max_retries == 0:
        causes.append(
            "retries are off (retry.max_retries = 0): a request that lands on the bad "
            "instance fails"
        )
    elif policy.max_retries + 1 < LOOP_TRIES:
        causes.append(
            f"retry.max_retries is {policy.max_retries}: {policy.max_retries + 1} attempts "
            f"against the loop's {LOOP_TRIES}"
        )
    status = {"error500": 500, "error503": 503, "flap": 503}.get(mode)
    if status is not None and status not in statuses:
        causes.append(
            f"HTTP {status} is not in http.failure_statuses: the response is returned as it "
            "is, neither retried nor counted"
        )
    taken_out = recorder is not None and (recorder.ejections or recorder.instance_opens)
    if not taken_out and config.bad_attempts > loop.bad_attempts:
        off = []
        if detector is None:
            off.append("outlier detection is off")
        if options.get("instance_breaker") is None:
            off.append("there is no instance_breaker")
        why = f" ({' and '.join(off)})" if off else ""
        causes.append(
            f"nothing took the bad instance out{why}: it got {config.bad_attempts} attempts, "
            f"the loop sent it {loop.bad_attempts}"
        )
    if _p99_worse(config, loop) and policy.initial_delay > 0.02:
        causes.append(
            f"backoff before failing over: retry.initial_delay is {policy.initial_delay:g} s "
            f"(up to retry.max_delay {policy.max_delay:g} s); the loop tries the next "
            "instance at once"
        )
    if policy.max_elapsed is not None and policy.max_elapsed < 2 * LOOP_TIMEOUT and mode == "hang":
        causes.append(
            f"retry.max_elapsed is {policy.max_elapsed:g} s: little time is left for a "
            "second attempt after a hung one"
        )
    if not causes:
        causes.append("no single cause found; compare the attempts sent to the bad instance")
    return causes


def run_verify(
    config: MeshConfig,
    service: str,
    options: VerifyOptions | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> VerifyReport:
    """Run the matrix for ``service`` of ``config`` (see the module docstring)."""
    options = options or VerifyOptions()
    setup = config_setup(config, service)
    report = VerifyReport(service, options)
    started = clock()
    loads = options.loads()
    for mode in options.modes:
        if clock() - started > options.time_limit:
            report.skipped += [f"{mode}, {load.flavour} {load.pacing}" for load in loads]
            continue
        spec = FaultSpec(mode, options.slow_seconds, options.flap_seconds)
        backends = [
            FaultBackend(spec),
            FaultBackend(FaultSpec(HEALTHY)),
            FaultBackend(FaultSpec(HEALTHY)),
        ]
        try:
            ports = [b.port for b in backends]
            for load in loads:
                if clock() - started > options.time_limit:
                    report.skipped.append(f"{mode}, {load.flavour} {load.pacing}")
                    continue
                if progress is not None:
                    progress(f"{mode}, {load.flavour} {load.pacing}")
                by: dict[str, Cell] = {}
                for contender in ("plain", "loop"):
                    by[contender] = run_cell(
                        mode, contender, load, ports, ports[0], seed=options.seed
                    )
                before = len(setup.recorders)
                cell = run_cell(mode, CONFIG, load, ports, ports[0], setup, seed=options.seed)
                by[CONFIG] = cell
                recorder = setup.recorders[-1] if len(setup.recorders) > before else None
                report.cells += [by["plain"], by["loop"], cell]
                if _worse(cell, by["loop"]):
                    causes = explain(mode, cell, by["loop"], recorder, setup)
                    report.findings.append(Finding(mode, load, cell, by["loop"], causes))
        finally:
            for backend in backends:
                backend.close()
    report.seconds = clock() - started
    return report


def format_report(report: VerifyReport) -> str:
    """The table, then each finding with its likely causes, as plain text."""
    head = ["mode", "load", "plain client", "3-try loop", f"config ({report.service})"]
    rows: list[list[str]] = []
    keyed: dict[tuple[str, str], dict[str, Cell]] = {}
    for c in report.cells:
        keyed.setdefault((c.mode, f"{c.load.flavour} {c.load.pacing}"), {})[c.contender] = c
    flagged = {(f.mode, f"{f.load.flavour} {f.load.pacing}") for f in report.findings}
    for (mode, load), by in keyed.items():
        row = [mode, load]
        for name in ("plain", "loop", CONFIG):
            got = by.get(name)
            text = (
                "-"
                if got is None
                else f"{100 * got.success_rate:5.1f}% {1000 * got.p99:6.0f} ms "
                f"{got.bad_attempts:4d}"
            )
            if name == CONFIG and (mode, load) in flagged:
                text += "  << worse"
            row.append(text)
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        f"service {report.service!r}: one bad instance of three, "
        f"{report.options.requests} requests per cell, {report.seconds:.0f} s",
        "each cell: success, p99, attempts sent to the bad instance",
        "",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    if report.findings:
        lines.append(
            f"{len(report.findings)} cell(s) where the configuration does worse than the loop:"
        )
        for finding in report.findings:
            lines.append(f"- {finding.headline()}")
            lines += [f"    likely: {cause}" for cause in finding.causes]
    else:
        lines.append("the configuration did no worse than the hand-written loop in any cell run")
    if report.skipped:
        lines.append(
            f"not run (time limit {report.options.time_limit:g} s): " + ", ".join(report.skipped)
        )
    return "\n".join(lines)
