"""The fault matrix through the gRPC integration (sync and ``grpc.aio``), at the defaults.

One bad instance of three (real ``grpc.server`` backends, each its own process on
127.0.0.1: :mod:`grpc_backends`), in each gRPC fault mode. The mesh runs at its
defaults (instances registered, a default ``ServiceProxy``); each call gets a gRPC
``timeout`` of 0.6 s, its deadline, which the protocol layer splits into attempts of
0.2 s. Each cell must reach 99%, and the mesh must do at least as well as a plain gRPC
client (grpc's own ``round_robin`` over the three, same deadline) and a hand-written
retry loop (three attempts of 0.2 s, one instance after the other).

Bounded: 40 calls per cell, one in flight, then a burst of 8 in flight.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc.aio")

from grpc_backends import (  # noqa: E402
    GRPC_MODES,
    HEALTHY,
    STREAM,
    UNARY,
    GrpcFaultBackend,
    GrpcFaultSpec,
)

from codomyrmex.service_mesh import LoadBalancer, Mesh, ServiceInstance, ServiceProxy  # noqa: E402
from codomyrmex.service_mesh.integrations.grpc import aio_mesh_channel, mesh_channel  # noqa: E402

REQUESTS = 40
BURST = 8
DEADLINE = 0.6  # the gRPC timeout of one call
ATTEMPT = DEADLINE / 3  # what the hand-written loop gives each of its three attempts


@pytest.fixture(scope="module", params=GRPC_MODES)
def pool(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[int]]]:
    mode = request.param
    specs = [GrpcFaultSpec(mode), GrpcFaultSpec(HEALTHY), GrpcFaultSpec(HEALTHY)]
    backends = [GrpcFaultBackend(spec) for spec in specs]
    try:
        yield mode, [b.port for b in backends]
    finally:
        for backend in backends:
            backend.close()


def default_mesh(ports: list[int]) -> Mesh:
    mesh = Mesh()
    balancer = LoadBalancer()
    for i, port in enumerate(ports):
        balancer.register(ServiceInstance(f"orders-{i}", "127.0.0.1", port))
    mesh.register_service(ServiceProxy("orders", balancer))
    return mesh


def drive_sync(one: Callable[[], bool], in_flight: int) -> int:
    with ThreadPoolExecutor(in_flight) as threads:
        return sum(threads.map(lambda _: one(), range(REQUESTS)))


def drive_async(one: Callable[[], Any], in_flight: int) -> int:
    gate = asyncio.Semaphore(in_flight)

    async def gated() -> bool:
        async with gate:
            return bool(await one())

    async def main() -> int:
        return sum(await asyncio.gather(*(gated() for _ in range(REQUESTS))))

    return asyncio.run(main())


def mesh_sync(ports: list[int], in_flight: int, method: str = UNARY) -> int:
    channel = mesh_channel(default_mesh(ports), "orders")
    call = channel.unary_unary(UNARY)
    stream = channel.unary_stream(STREAM)

    def one() -> bool:
        try:
            if method == STREAM:
                return list(stream(b"x", timeout=DEADLINE)) == [b"0", b"1", b"2"]
            return bool(call(b"x", timeout=DEADLINE) == b"ok")
        except grpc.RpcError:
            return False

    try:
        return drive_sync(one, in_flight)
    finally:
        channel.close()


def mesh_aio(ports: list[int], in_flight: int, method: str = UNARY) -> int:
    async def run() -> int:
        async with aio_mesh_channel(default_mesh(ports), "orders") as channel:
            call = channel.unary_unary(UNARY)
            stream = channel.unary_stream(STREAM)

            async def one() -> bool:
                try:
                    if method == STREAM:
                        got = [m async for m in stream(b"x", timeout=DEADLINE)]
                        return got == [b"0", b"1", b"2"]
                    return bool(await call(b"x", timeout=DEADLINE) == b"ok")
                except grpc.RpcError:
                    return False

            gate = asyncio.Semaphore(in_flight)

            async def gated() -> bool:
                async with gate:
                    return await one()

            return sum(await asyncio.gather(*(gated() for _ in range(REQUESTS))))

    return asyncio.run(run())


def plain(ports: list[int]) -> int:
    """grpc alone: its own round_robin over the three instances, the same deadline."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    channel = grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
    call = channel.unary_unary(UNARY)

    def one() -> bool:
        try:
            return bool(call(b"x", timeout=DEADLINE) == b"ok")
        except grpc.RpcError:
            return False

    try:
        return drive_sync(one, 1)
    finally:
        channel.close()


def hand_written(ports: list[int]) -> int:
    """Three attempts of a third of the deadline each, one instance after the other."""
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    calls = itertools.cycle([channel.unary_unary(UNARY) for channel in channels])

    def one() -> bool:
        for _ in range(3):
            try:
                if next(calls)(b"x", timeout=ATTEMPT) == b"ok":
                    return True
            except grpc.RpcError:
                continue
        return False

    try:
        return drive_sync(one, 1)
    finally:
        for channel in channels:
            channel.close()


CLIENTS = {"grpc-sync": mesh_sync, "grpc-aio": mesh_aio}
CELLS = [(client, n) for n in (1, BURST) for client in CLIENTS]


@pytest.mark.parametrize(("client", "in_flight"), CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
def test_one_bad_grpc_instance_of_three_at_the_defaults(pool, client: str, in_flight: int) -> None:
    mode, ports = pool
    successes = CLIENTS[client](ports, in_flight)
    assert successes >= 0.99 * REQUESTS, (mode, client, in_flight, successes)


@pytest.mark.parametrize("client", list(CLIENTS))
def test_unary_stream_calls_survive_the_bad_instance(pool, client: str) -> None:
    mode, ports = pool
    successes = CLIENTS[client](ports, 1, STREAM)
    assert successes >= 0.99 * REQUESTS, (mode, client, successes)


PLAIN_LOSES = {"hang", "flaky", "unavailable", "pushback"}
"""Modes in which plain grpc (round_robin, no retry policy) fails some calls: the fault
is real there, and the mesh must do strictly better."""


def test_the_mesh_does_at_least_as_well_as_plain_grpc_and_a_retry_loop(pool) -> None:
    mode, ports = pool
    others = {"plain": plain(ports), "hand-written": hand_written(ports)}
    mesh = mesh_sync(ports, 1)
    assert mesh >= max(others.values()), (mode, mesh, others)
    if mode in PLAIN_LOSES:
        assert mesh > others["plain"], (mode, mesh, others)
