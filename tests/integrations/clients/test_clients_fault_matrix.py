"""The fault matrix through every HTTP client integration, at the mesh's defaults.

One bad instance of three (real fault backends, each its own process on 127.0.0.1;
:mod:`codomyrmex.service_mesh.verify.faults`), in each fault mode; the same load
through httpx (sync and async), requests (sync) and aiohttp (async), each with the
mesh at its defaults (instances registered, a default ``ServiceProxy``) and the
client's own timeout set to 0.2 s, which the protocol layer turns into the attempt
timeout (and three times that into the call's deadline). Each cell must reach 99%.

Bounded: 40 requests per cell, one in flight, then a burst of 8 in flight (the
service breaker judges whole calls, so concurrent failures of the bad instance do
not open it).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")
aiohttp = pytest.importorskip("aiohttp")

from codomyrmex.service_mesh import (  # noqa: E402
    LoadBalancer,
    Mesh,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.integrations.aiohttp import MeshMiddleware  # noqa: E402
from codomyrmex.service_mesh.integrations.httpx import (  # noqa: E402
    AsyncMeshTransport,
    MeshTransport,
)
from codomyrmex.service_mesh.integrations.requests import MeshAdapter  # noqa: E402
from codomyrmex.service_mesh.verify.faults import (  # noqa: E402
    HEALTHY,
    MODES,
    FaultBackend,
    FaultSpec,
)

REQUESTS = 40
BURST = 8
CLIENT_TIMEOUT = 0.2
URL = "http://orders/"


@pytest.fixture(scope="module", params=MODES)
def pool(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[int]]]:
    mode = request.param
    bad = FaultSpec(mode, slow_seconds=0.3, flap_seconds=0.5)
    specs = [bad, FaultSpec(HEALTHY), FaultSpec(HEALTHY)]
    backends = [FaultBackend(spec) for spec in specs]
    try:
        yield mode, [b.port for b in backends]
    finally:
        for backend in backends:
            backend.close()


def default_mesh(ports: list[int]) -> Mesh:
    """The mesh at its defaults: the instances registered, a default proxy."""
    mesh = Mesh()
    balancer = LoadBalancer()
    for i, port in enumerate(ports):
        balancer.register(ServiceInstance(f"orders-{i}", "127.0.0.1", port))
    mesh.register_service(ServiceProxy("orders", balancer))
    return mesh


IN_FLIGHT = 1  # set per test (one in flight, or a burst)


def drive_sync(one: Callable[[], bool]) -> int:
    with ThreadPoolExecutor(IN_FLIGHT) as threads:
        return sum(threads.map(lambda _: one(), range(REQUESTS)))


def drive_async(one: Callable[[], Any]) -> int:
    async def main() -> int:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def gated() -> bool:
            async with gate:
                return bool(await one())

        return sum(await asyncio.gather(*(gated() for _ in range(REQUESTS))))

    return asyncio.run(main())


def httpx_sync(mesh: Mesh) -> int:
    with httpx.Client(transport=MeshTransport(mesh), timeout=CLIENT_TIMEOUT) as client:

        def one() -> bool:
            try:
                return client.get(URL).status_code == 200
            except Exception:
                return False

        return drive_sync(one)


def httpx_async(mesh: Mesh) -> int:
    async def run() -> int:
        transport = AsyncMeshTransport(mesh)
        async with httpx.AsyncClient(transport=transport, timeout=CLIENT_TIMEOUT) as client:

            async def one() -> bool:
                try:
                    return (await client.get(URL)).status_code == 200
                except Exception:
                    return False

            gate = asyncio.Semaphore(IN_FLIGHT)

            async def gated() -> bool:
                async with gate:
                    return await one()

            return sum(await asyncio.gather(*(gated() for _ in range(REQUESTS))))

    return asyncio.run(run())


def requests_sync(mesh: Mesh) -> int:
    session = requests.Session()
    session.mount("http://orders", MeshAdapter(mesh, pool_maxsize=BURST))

    def one() -> bool:
        try:
            return session.get(URL, timeout=CLIENT_TIMEOUT).status_code == 200
        except Exception:
            return False

    try:
        return drive_sync(one)
    finally:
        session.close()


def aiohttp_async(mesh: Mesh) -> int:
    async def run() -> int:
        timeout = aiohttp.ClientTimeout(total=3 * CLIENT_TIMEOUT)  # the call's deadline
        async with aiohttp.ClientSession(
            middlewares=(MeshMiddleware(mesh),), timeout=timeout
        ) as session:

            async def one() -> bool:
                try:
                    async with session.get(URL) as response:
                        await response.read()
                        return response.status == 200
                except Exception:
                    return False

            gate = asyncio.Semaphore(IN_FLIGHT)

            async def gated() -> bool:
                async with gate:
                    return await one()

            return sum(await asyncio.gather(*(gated() for _ in range(REQUESTS))))

    return asyncio.run(run())


CLIENTS = {
    "httpx-sync": httpx_sync,
    "httpx-async": httpx_async,
    "requests-sync": requests_sync,
    "aiohttp-async": aiohttp_async,
}


CELLS = [(client, n) for n in (1, BURST) for client in CLIENTS]


@pytest.mark.parametrize(("client", "in_flight"), CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
def test_one_bad_instance_of_three_at_the_defaults(
    pool, client: str, in_flight: int, monkeypatch
) -> None:
    mode, ports = pool
    monkeypatch.setattr(sys.modules[__name__], "IN_FLIGHT", in_flight)
    successes = CLIENTS[client](default_mesh(ports))
    assert successes >= 0.99 * REQUESTS, (mode, client, successes)
