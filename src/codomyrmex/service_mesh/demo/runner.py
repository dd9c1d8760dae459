"""The demo's three runs: the same request stream from a plain client, from a plain client
with a hand-written 3-try retry loop, and through the mesh.

The mesh's settings come from a configuration file: ``demo/mesh.toml`` in the
package by default (the same file as ``examples/mesh.toml`` in the repository),
or the one given with ``--config``; its ``catalog`` service is the demo's.

The stream is fixed by the seed: each request's path, the backend the plain
client picks for it at random, and the moments (as positions in the stream) at
which a backend dies, comes back or starts. Requests start at a steady rate,
at most ``concurrency`` at a time, and the backends are reset between runs, so
both runs meet the same faults at the same points.

Every attempt either client makes goes through a counting transport, which is
where "sent to a dead backend" (the backend was down when the attempt left)
and "sent to an open breaker" (the backend's breaker was OPEN then) are counted.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import random
import socket
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from ..circuit_breaker import CircuitBreaker, CircuitState
from ..config import ConfigError, MeshConfig, build_proxy, load_config
from ..integrations.httpx import AsyncMeshTransport
from ..load_balancer import ServiceInstance
from ..mesh import Mesh
from .backends import BACKENDS, BackendFarm, BackendSpec, RemoteBackend
from .options import DemoOptions

__all__ = [
    "SERVICE",
    "DemoOptions",
    "DemoResult",
    "RunStats",
    "RunView",
    "build_mesh",
    "demo_settings",
    "load_demo_config",
    "run_demo",
]

SERVICE = "catalog"
"""The service name the mesh run sends its requests to (``http://catalog/...``)."""

DEFAULT_CONFIG = str(Path(__file__).with_name("mesh.toml"))
"""The demo's own settings (a copy of the repository's ``examples/mesh.toml``)."""
CLIENT_TIMEOUT = 5.0
LOOP_TRIES = 3
LOOP_TIMEOUT = 0.5
"""The hand-written loop: up to three tries, each on another backend, 0.5 s each."""


def load_demo_config(path: str | None = None) -> MeshConfig:
    """The demo's configuration (``path`` or the default); ConfigError when it is unusable."""
    config = load_config(path or DEFAULT_CONFIG)
    if SERVICE not in config.services:
        where = config.source or "the configuration"
        raise ConfigError([f"{where}: services.{SERVICE}: missing; the demo sends to it"])
    return config


def demo_settings(config: MeshConfig) -> dict[str, Any]:
    """The settings the demo's mesh runs with, for the live view and the report."""
    return {"source": config.source, "sections": config.describe(SERVICE)}


@dataclass
class RunStats:
    """What one run has measured so far; the live view reads it while the run goes on."""

    name: str
    total: int
    backends: list[str]
    with_breakers: bool = False
    """Whether the run had breakers (``open_breaker_requests`` means nothing otherwise)."""
    started: float = 0.0
    finished: float = 0.0
    sent: int = 0
    """Requests started (each makes one attempt or more)."""
    done: int = 0
    succeeded: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    dead_backend_requests: int = 0
    open_breaker_requests: int = 0
    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    """Per request: seconds since the run started, latency in seconds, success."""
    events: list[tuple[float, str]] = field(default_factory=list)
    """Faults as they happened: seconds since the run started, what."""
    transitions: list[tuple[float, str, str]] = field(default_factory=list)
    """Breaker transitions: seconds since the run started, breaker, new state."""

    def __post_init__(self) -> None:
        for name in self.backends:
            self.attempts.setdefault(name, 0)
            self.failures.setdefault(name, 0)
            self.in_flight.setdefault(name, 0)

    @property
    def elapsed(self) -> float:
        if not self.started:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started

    @property
    def success_rate(self) -> float:
        """Percent of finished requests that succeeded (100 before any finished)."""
        return 100.0 * self.succeeded / self.done if self.done else 100.0

    @property
    def retries(self) -> int:
        """Attempts beyond one per request (counted as they leave)."""
        return max(0, sum(self.attempts.values()) - self.sent)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(latency for _, latency, _ in self.samples)
        return {
            "requests": self.done,
            "succeeded": self.succeeded,
            "failed": self.done - self.succeeded,
            "success_rate": round(self.success_rate, 2),
            "p50_ms": round(1000 * percentile(latencies, 50), 1),
            "p99_ms": round(1000 * percentile(latencies, 99), 1),
            "dead_backend_requests": self.dead_backend_requests,
            "open_breaker_requests": self.open_breaker_requests if self.with_breakers else None,
            "attempts": sum(self.attempts.values()),
            "retries": self.retries,
            "duration_s": round(self.elapsed, 2),
            "backends": {
                name: {"attempts": self.attempts[name], "failures": self.failures[name]}
                for name in self.backends
            },
        }


def percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


Refresh = Callable[[], None]
"""Redraws a view; the run calls it from its own event loop, a few times a second."""

REFRESH_SECONDS = 0.125


class RunView(Protocol):
    """Something that shows a run while it goes on (the CLI's live view).

    ``watch`` is entered around a run and yields the function that redraws the view.
    The run calls it from its event loop between requests: a drawing thread would
    contend with the loop for the interpreter lock and inflate the latencies measured.
    """

    def watch(
        self, stats: RunStats, farm: BackendFarm, mesh: Mesh | None, status_url: str | None
    ) -> AbstractContextManager[Refresh]: ...


@dataclass
class DemoResult:
    """The three runs' measurements, the mesh's settings, and the machine-readable summary."""

    options: DemoOptions
    specs: list[BackendSpec]
    ports: list[int]
    plain: RunStats
    mesh: RunStats
    status_url: str | None
    servers_stopped: bool = False
    loop: RunStats | None = None
    """The plain client with a hand-written 3-try retry loop (0.5 s per try)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The mesh's settings: ``source`` (the file) and ``sections`` (what it sets)."""

    def runs(self) -> list[tuple[str, RunStats]]:
        """(key, stats) of each run, in the order they ran."""
        runs = [("plain", self.plain)]
        if self.loop is not None:
            runs.append(("loop", self.loop))
        return [*runs, ("mesh", self.mesh)]

    def summary(self) -> dict[str, Any]:
        return {
            "options": asdict(self.options),
            "service": SERVICE,
            "status_url": self.status_url,
            "settings": self.settings,
            "backends": [
                {"name": spec.name, "role": spec.role, "port": port}
                for spec, port in zip(self.specs, self.ports, strict=True)
            ],
            "runs": {key: stats.summary() for key, stats in self.runs()},
            "servers_stopped": self.servers_stopped,
        }


@dataclass(frozen=True)
class _Event:
    index: int
    backend: RemoteBackend
    action: str  # "stop" or "start"

    @property
    def label(self) -> str:
        return f"{self.backend.spec.name} {'down' if self.action == 'stop' else 'up'}"


def _schedule(farm: BackendFarm, total: int) -> list[_Event]:
    """The faults of the scenario as positions in the request stream."""
    events = []
    for backend in farm.backends:
        spec = backend.spec
        if spec.down_between is not None:
            down, up = spec.down_between
            events.append(_Event(int(down * total), backend, "stop"))
            events.append(_Event(int(up * total), backend, "start"))
        if spec.start_at is not None:
            events.append(_Event(int(spec.start_at * total), backend, "start"))
    return sorted(events, key=lambda e: e.index)


class _Counting(httpx.AsyncBaseTransport):
    """The transport under both clients: counts every attempt per backend as it leaves."""

    def __init__(
        self,
        stats: RunStats,
        farm: BackendFarm,
        limits: httpx.Limits,
        breaker_of: Callable[[str], CircuitBreaker | None] = lambda name: None,
    ) -> None:
        self._stats = stats
        self._by_port = farm.by_port()
        self._breaker_of = breaker_of
        self._inner = httpx.AsyncHTTPTransport(limits=limits)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stats = self._stats
        backend = self._by_port[request.url.port or 80]
        name = backend.spec.name
        stats.attempts[name] += 1
        if not backend.up:
            stats.dead_backend_requests += 1
        breaker = self._breaker_of(name)
        if breaker is not None and breaker.state is CircuitState.OPEN:
            stats.open_breaker_requests += 1
        stats.in_flight[name] += 1
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            stats.failures[name] += 1
            raise
        finally:
            stats.in_flight[name] -= 1
        if response.status_code >= 500:
            stats.failures[name] += 1
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def build_mesh(farm: BackendFarm, config: MeshConfig | None = None) -> Mesh:
    """The mesh of the demo: the configuration's ``catalog`` service, one instance per
    backend, and (when configured) a breaker per instance, created up front so that the
    live view can show it."""
    config = config or load_demo_config()
    instances = [ServiceInstance(b.spec.name, "127.0.0.1", b.port) for b in farm.backends]
    mesh = Mesh()
    mesh.register_service(build_proxy(config.service(SERVICE), instances=instances))
    instance_breaker = config.transport_options().get("instance_breaker")
    if instance_breaker is not None:
        for backend in farm.backends:
            mesh.circuit_breaker(f"{SERVICE}/{backend.spec.name}", instance_breaker)
    return mesh


async def _drive(
    stats: RunStats,
    farm: BackendFarm,
    options: DemoOptions,
    send: Callable[[int], Any],
    refresh: Refresh | None,
) -> None:
    """Start request ``i`` at ``i / rate`` seconds (at most ``concurrency`` at a time)."""
    events = _schedule(farm, options.requests)
    interval = 1.0 / options.rate
    loop = asyncio.get_running_loop()
    origin = loop.time()
    stats.started = time.perf_counter()
    next_index = 0

    def apply_due(i: int) -> None:
        # Blocks the loop for the millisecond the child takes: no request leaves meanwhile.
        while events and events[0].index <= i:
            event = events.pop(0)
            if event.action == "stop":
                farm.stop(event.backend.spec.name)
            else:
                farm.start(event.backend.spec.name)
            stats.events.append((time.perf_counter() - stats.started, event.label))

    async def worker() -> None:
        nonlocal next_index
        while next_index < options.requests:
            i = next_index
            next_index += 1
            wait = origin + i * interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if events and events[0].index <= i:
                apply_due(i)
            began = time.perf_counter()
            stats.sent += 1
            ok = await send(i)
            ended = time.perf_counter()
            stats.samples.append((began - stats.started, ended - began, ok))
            stats.done += 1
            stats.succeeded += ok

    async def redraw(refresh: Refresh) -> None:
        while True:
            refresh()
            await asyncio.sleep(REFRESH_SECONDS)

    painter = None if refresh is None else asyncio.ensure_future(redraw(refresh))
    try:
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    finally:
        stats.finished = time.perf_counter()
        if painter is not None:
            painter.cancel()
        if refresh is not None:
            refresh()


async def _client_run(
    stats: RunStats,
    farm: BackendFarm,
    options: DemoOptions,
    paths: list[str],
    orders: list[list[int]],
    refresh: Refresh | None = None,
    *,
    tries: int,
    timeout: float,
) -> None:
    """A plain httpx client: request ``i`` tries the backends ``orders[i]`` in turn, up to
    ``tries`` of them, ``timeout`` seconds each. One try is the plain client; three tries
    of 0.5 s each is the fair baseline, the hand-written retry loop."""
    limits = httpx.Limits(max_connections=options.concurrency)
    transport = _Counting(stats, farm, limits)
    backends = farm.backends

    async with httpx.AsyncClient(transport=transport, timeout=CLIENT_TIMEOUT) as client:

        async def send(i: int) -> bool:
            for pick in orders[i][:tries]:
                url = f"http://127.0.0.1:{backends[pick].port}{paths[i]}"
                try:
                    response = await client.get(url, timeout=timeout)
                except httpx.HTTPError:
                    continue
                if response.status_code < 500:
                    return True
            return False

        await _drive(stats, farm, options, send, refresh)


async def _mesh_run(
    stats: RunStats,
    farm: BackendFarm,
    options: DemoOptions,
    mesh: Mesh,
    paths: list[str],
    refresh: Refresh | None = None,
    transport_options: dict[str, Any] | None = None,
) -> None:
    limits = httpx.Limits(max_connections=options.concurrency)

    def breaker_of(name: str) -> CircuitBreaker | None:
        return mesh.get_circuit_breaker(f"{SERVICE}/{name}")

    transport = AsyncMeshTransport(
        mesh,
        transport=_Counting(stats, farm, limits, breaker_of),
        **(transport_options or {}),
    )
    async with httpx.AsyncClient(transport=transport, timeout=CLIENT_TIMEOUT) as client:

        async def send(i: int) -> bool:
            try:
                response = await client.get(f"http://{SERVICE}{paths[i]}")
            except Exception:  # the mesh's own refusals too, not only httpx errors
                return False
            return response.status_code < 500

        await _drive(stats, farm, options, send, refresh)


def _watch_breakers(mesh: Mesh, stats: RunStats) -> None:
    def record(breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        if stats.started:
            stats.transitions.append((time.perf_counter() - stats.started, breaker.name, new.value))

    for breaker in mesh.circuit_breakers().values():
        breaker.add_listener(record)


def ports_closed(ports: list[int]) -> bool:
    """Whether every port refuses connections on 127.0.0.1 (nothing listens there any more)."""
    for port in ports:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            continue
        except OSError:
            return False
        return False
    return True


def _skip_missing_sniffio() -> None:
    """Make a missing ``sniffio`` fail to import at once, as it does after the first try.

    httpcore 1.x imports it on every async request; when it is not installed each of
    those imports searches ``sys.path`` again, which costs both clients about 0.4 ms
    of CPU per request and skews the demo's latencies.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def run_demo(
    options: DemoOptions | None = None,
    view: RunView | None = None,
    config: MeshConfig | None = None,
) -> DemoResult:
    """Start the backends, run the stream three times (plain, loop, mesh), stop everything.

    ``config`` is the mesh's configuration (by default :func:`load_demo_config`).
    Every server the demo started is stopped before this returns or raises
    (``KeyboardInterrupt`` included).
    """
    from ..integrations.status_http import serve_status

    options = options or DemoOptions()
    config = config or load_demo_config()
    _skip_missing_sniffio()
    rng = random.Random(options.seed)
    paths = [f"/items/{rng.randrange(100_000)}" for _ in range(options.requests)]
    picks = [rng.randrange(len(BACKENDS)) for _ in range(options.requests)]
    orders = []
    for pick in picks:  # the plain client's one try, and the loop's first
        rest = [n for n in range(len(BACKENDS)) if n != pick]
        rng.shuffle(rest)
        orders.append([pick, *rest])
    names = [spec.name for spec in BACKENDS]
    plain = RunStats("plain client", options.requests, names)
    loop = RunStats("plain client, 3-try retry loop", options.requests, names)
    meshed = RunStats("through the mesh", options.requests, names, with_breakers=True)
    status = None
    farm = BackendFarm(seed=options.seed)
    try:
        mesh = build_mesh(farm, config)
        _watch_breakers(mesh, meshed)
        if options.status_port is not None:
            try:
                status = serve_status(mesh, "127.0.0.1", options.status_port, monitor=True)
            except OSError:  # the port is taken: any free one will do
                status = serve_status(mesh, "127.0.0.1", 0, monitor=True)
        result = DemoResult(
            options,
            list(BACKENDS),
            farm.ports,
            plain,
            meshed,
            status.url if status else None,
            loop=loop,
            settings=demo_settings(config),
        )

        def watching(
            stats: RunStats, with_mesh: Mesh | None
        ) -> AbstractContextManager[Refresh | None]:
            if view is None:
                return nullcontext(None)
            return view.watch(stats, farm, with_mesh, result.status_url)

        for stats, tries, timeout in ((plain, 1, CLIENT_TIMEOUT), (loop, LOOP_TRIES, LOOP_TIMEOUT)):
            farm.reset()
            with watching(stats, None) as refresh:
                run = _client_run(
                    stats, farm, options, paths, orders, refresh, tries=tries, timeout=timeout
                )
                asyncio.run(run)
        farm.reset()
        transport_options = config.transport_options()
        with watching(meshed, mesh) as refresh:
            asyncio.run(_mesh_run(meshed, farm, options, mesh, paths, refresh, transport_options))
    finally:
        if status is not None:
            status.close()
        farm.close()
    result.servers_stopped = ports_closed(farm.ports)
    return result
