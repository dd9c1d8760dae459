"""The fault matrix: one bad instance of three, each fault mode, mesh against plain clients.

For each fault mode of :mod:`.faults`, three real backends run on 127.0.0.1
(two healthy, one faulty) and the same load goes through each contender:

- ``plain``: httpx, a random backend per request, no retry;
- ``loop``: httpx with a hand-written loop: up to three tries, each on another
  backend in random order, each with a 0.5 s timeout;
- every mesh set-up given (a name and a function that builds a :class:`Mesh`
  serving ``SERVICE`` from the three instances), through ``MeshTransport`` /
  ``AsyncMeshTransport`` on a client with httpx's default settings (its timeout,
  like every contender's, is ``client_timeout``: 5 s, httpx's default, unless told).

Load is ``requests`` GETs with at most ``concurrency`` in flight, paced at
``rate`` per second or sent as a burst, from threads (sync) or tasks (async).
Each cell reports the success rate, the p99 latency over all requests, and the
attempts sent to the bad instance. Needs the ``[httpx]`` extra.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._validate import check_int, check_number
from ..load_balancer import ServiceInstance
from ..mesh import Mesh
from .faults import HEALTHY, MODES, FaultBackend, FaultSpec

try:
    import httpx
except ImportError as exc:
    from ..integrations._extras import missing_extra

    raise missing_extra(__name__, "httpx", exc) from exc

from ..integrations.httpx import AsyncMeshTransport, MeshTransport

__all__ = ["SERVICE", "Cell", "Load", "MeshSetup", "run_cell", "run_matrix"]

SERVICE = "orders"
"""The service name the mesh set-ups serve (requests go to ``http://orders/``)."""

MeshSetup = Callable[[Sequence[ServiceInstance]], Mesh]
"""Builds a mesh that serves :data:`SERVICE` from the given instances."""

LOOP_TRIES = 3
LOOP_TIMEOUT = 0.5
PLAIN_TIMEOUT = 5.0  # httpx's default: every contender's client timeout unless told otherwise


@dataclass(frozen=True)
class Load:
    """What one cell sends."""

    requests: int = 600
    concurrency: int = 16
    rate: float | None = 100.0
    """Requests started per second; None sends them as a burst."""
    flavour: str = "sync"
    """``"sync"`` (threads) or ``"async"`` (tasks)."""

    def __post_init__(self) -> None:
        check_int("requests", self.requests, 1)
        check_int("concurrency", self.concurrency, 1)
        if self.rate is not None:
            check_number("rate", self.rate, 0.0)
            if self.rate <= 0:
                raise ValueError(f"rate must be > 0 or None, got {self.rate!r}")
        if self.flavour not in ("sync", "async"):
            raise ValueError(f"flavour must be 'sync' or 'async', got {self.flavour!r}")

    @property
    def pacing(self) -> str:
        return "burst" if self.rate is None else f"{self.rate:g}/s"


@dataclass
class Cell:
    """The outcome of one contender under one fault mode and one load."""

    mode: str
    contender: str
    load: Load
    successes: int = 0
    latencies: list[float] = field(default_factory=list)
    bad_attempts: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.load.requests

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else math.nan


class _Counter:
    """Attempts per backend port, counted where they leave the client."""

    def __init__(self) -> None:
        self.by_port: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, port: int | None) -> None:
        if port is not None:
            with self._lock:
                self.by_port[port] = self.by_port.get(port, 0) + 1


class _Counting(httpx.BaseTransport):
    def __init__(self, counter: _Counter) -> None:
        self._counter = counter
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._counter.add(request.url.port)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class _AsyncCounting(httpx.AsyncBaseTransport):
    def __init__(self, counter: _Counter) -> None:
        self._counter = counter
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._counter.add(request.url.port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _instances(ports: Sequence[int]) -> list[ServiceInstance]:
    return [ServiceInstance(f"{SERVICE}-{i}", "127.0.0.1", p) for i, p in enumerate(ports)]


# -- one request per contender ------------------------------------------------------


def _plain_sync(client: httpx.Client, ports: Sequence[int], rng: random.Random) -> bool:
    try:
        response = client.get(f"http://127.0.0.1:{rng.choice(ports)}/")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _loop_sync(client: httpx.Client, ports: Sequence[int], rng: random.Random) -> bool:
    order = list(ports)
    rng.shuffle(order)
    for port in order[:LOOP_TRIES]:
        try:
            response = client.get(f"http://127.0.0.1:{port}/", timeout=LOOP_TIMEOUT)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            return True
    return False


def _mesh_sync(client: httpx.Client, ports: Sequence[int], rng: random.Random) -> bool:
    try:
        response = client.get(f"http://{SERVICE}/")
    except httpx.HTTPError:
        return False
    except Exception:  # a mesh rejection (open breaker, no instance): a failed request
        return False
    return response.status_code == 200


async def _plain_async(client: httpx.AsyncClient, ports: Sequence[int], rng: random.Random) -> bool:
    try:
        url = f"http://127.0.0.1:{rng.choice(ports)}/"
        response = await client.get(url)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def _loop_async(client: httpx.AsyncClient, ports: Sequence[int], rng: random.Random) -> bool:
    order = list(ports)
    rng.shuffle(order)
    for port in order[:LOOP_TRIES]:
        try:
            response = await client.get(f"http://127.0.0.1:{port}/", timeout=LOOP_TIMEOUT)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            return True
    return False


async def _mesh_async(client: httpx.AsyncClient, ports: Sequence[int], rng: random.Random) -> bool:
    try:
        response = await client.get(f"http://{SERVICE}/")
    except httpx.HTTPError:
        return False
    except Exception:  # a mesh rejection (open breaker, no instance): a failed request
        return False
    return response.status_code == 200


# -- driving the load -----------------------------------------------------------------


def _drive_sync(
    load: Load, one: Callable[[], bool], cell: Cell, clock: Callable[[], float]
) -> None:
    lock = threading.Lock()

    def timed() -> None:
        began = clock()
        ok = one()
        took = clock() - began
        with lock:
            cell.latencies.append(took)
            cell.successes += ok

    with ThreadPoolExecutor(load.concurrency) as pool:
        started = clock()
        for n in range(load.requests):
            if load.rate is not None:
                wait = started + n / load.rate - clock()
                if wait > 0:
                    time.sleep(wait)  # pacing the load generator, not moving a test's time
            pool.submit(timed)


async def _drive_async(
    load: Load, one: Callable[[], Awaitable[bool]], cell: Cell, clock: Callable[[], float]
) -> None:
    gate = asyncio.Semaphore(load.concurrency)

    async def timed() -> None:
        try:
            began = clock()
            ok = await one()
            cell.latencies.append(clock() - began)
            cell.successes += ok
        finally:
            gate.release()

    tasks = []
    started = clock()
    for n in range(load.requests):
        if load.rate is not None:
            wait = started + n / load.rate - clock()
            if wait > 0:
                await asyncio.sleep(wait)
        await gate.acquire()
        tasks.append(asyncio.create_task(timed()))
    await asyncio.gather(*tasks)


def _transport_options(setup: MeshSetup) -> dict[str, Any]:
    """Transport keyword arguments a set-up asks for (``setup.transport_options``, e.g. a
    user's configured failure statuses and breaker per instance); none by default."""
    return dict(getattr(setup, "transport_options", None) or {})


def run_cell(
    mode: str,
    contender: str,
    load: Load,
    ports: Sequence[int],
    bad_port: int,
    setup: MeshSetup | None = None,
    *,
    seed: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    client_timeout: float = PLAIN_TIMEOUT,
) -> Cell:
    """Send ``load`` through one contender (``"plain"``, ``"loop"`` or a mesh ``setup``)."""
    cell = Cell(mode, contender, load)
    counter = _Counter()
    rng = random.Random(seed)
    rng_lock = threading.Lock()

    def locked_rng() -> random.Random:
        with rng_lock:
            return random.Random(rng.random())

    limits = httpx.Limits(max_connections=load.concurrency * 4)
    if load.flavour == "sync":
        transport: httpx.BaseTransport = _Counting(counter)
        call = _plain_sync if contender == "plain" else _loop_sync
        if setup is not None:
            options = _transport_options(setup)
            transport = MeshTransport(setup(_instances(ports)), transport=transport, **options)
            call = _mesh_sync
        with httpx.Client(transport=transport, limits=limits, timeout=client_timeout) as client:
            _drive_sync(load, lambda: call(client, ports, locked_rng()), cell, clock)
    else:

        async def main() -> None:
            atransport: httpx.AsyncBaseTransport = _AsyncCounting(counter)
            acall = _plain_async if contender == "plain" else _loop_async
            if setup is not None:
                options = _transport_options(setup)
                atransport = AsyncMeshTransport(
                    setup(_instances(ports)), transport=atransport, **options
                )
                acall = _mesh_async
            async with httpx.AsyncClient(
                transport=atransport, limits=limits, timeout=client_timeout
            ) as aclient:
                await _drive_async(load, lambda: acall(aclient, ports, locked_rng()), cell, clock)

        asyncio.run(main())
    cell.bad_attempts = counter.by_port.get(bad_port, 0)
    return cell


def run_matrix(
    setups: dict[str, MeshSetup],
    loads: Iterable[Load],
    *,
    modes: Iterable[str] = MODES,
    baselines: Iterable[str] = ("plain", "loop"),
    slow_seconds: float = 0.3,
    flap_seconds: float = 2.0,
    seed: int = 1,
    client_timeout: float = PLAIN_TIMEOUT,
) -> list[Cell]:
    """Every contender under every mode and load, one bad instance of three each time."""
    cells: list[Cell] = []
    loads = list(loads)
    for mode in modes:
        bad = FaultSpec(mode, slow_seconds, flap_seconds)
        specs = [bad, FaultSpec(HEALTHY), FaultSpec(HEALTHY)]
        backends = [FaultBackend(spec) for spec in specs]
        try:
            ports = [b.port for b in backends]
            for load in loads:
                for contender in baselines:
                    cells.append(
                        run_cell(
                            mode,
                            contender,
                            load,
                            ports,
                            ports[0],
                            seed=seed,
                            client_timeout=client_timeout,
                        )
                    )
                for name, setup in setups.items():
                    cells.append(
                        run_cell(
                            mode,
                            name,
                            load,
                            ports,
                            ports[0],
                            setup,
                            seed=seed,
                            client_timeout=client_timeout,
                        )
                    )
        finally:
            for backend in backends:
                backend.close()
    return cells


def table(cells: Sequence[Cell]) -> str:
    """A Markdown table: one row per mode and load, success / p99 / bad attempts per contender."""
    contenders = list(dict.fromkeys(c.contender for c in cells))
    header = "| mode | load | " + " | ".join(contenders) + " |"
    rows = [header, "|" + "---|" * (len(contenders) + 2)]
    keyed: dict[tuple[str, str, str], dict[str, Cell]] = {}
    for c in cells:
        keyed.setdefault((c.mode, c.load.flavour, c.load.pacing), {})[c.contender] = c
    for (mode, flavour, pacing), by in keyed.items():
        parts = []
        for name in contenders:
            got = by.get(name)
            parts.append(
                "-"
                if got is None
                else f"{100 * got.success_rate:.1f}% · {1000 * got.p99:.0f} ms · {got.bad_attempts}"
            )
        rows.append(f"| {mode} | {flavour} {pacing} | " + " | ".join(parts) + " |")
    return "\n".join(rows)
