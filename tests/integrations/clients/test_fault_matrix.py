"""The fault matrix (issue #14): one bad instance of three, real backends on 127.0.0.1.

Every fault mode of :mod:`codomyrmex.service_mesh.verify.faults` (hang, refuse, reset,
500 on half the requests, 503 on all, slow, flap), sync and async, paced and burst,
through the mesh at its defaults and as the README's quick start sets it up, next to
a plain client and a hand-written three-try loop in the same run. It asserts:

- at least 99% success for the mesh set-ups (two healthy instances always exist);
- no fewer successes than the hand-written loop;
- a p99 no worse than the plain client's, with a small allowance for noise.

Bounded: every request has a timeout and the loads are small, so the whole matrix
ends by itself (one to two minutes on a busy two-core machine).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from codomyrmex.service_mesh import LoadBalancer, Mesh, ServiceInstance, ServiceProxy
from codomyrmex.service_mesh.verify.faults import MODES
from codomyrmex.service_mesh.verify.matrix import SERVICE, Cell, Load, run_matrix, table

REQUESTS = 60
LOADS = [
    Load(REQUESTS, 8, 200.0, "sync"),
    Load(REQUESTS, 8, None, "sync"),
    Load(REQUESTS, 8, 200.0, "async"),
    Load(REQUESTS, 8, None, "async"),
]
CLIENT_TIMEOUT = 1.0
P99_FACTOR = 1.5
P99_SLACK = 0.2  # seconds: burst latencies on a loaded two-core machine vary this much


def defaults(instances: Sequence[ServiceInstance]) -> Mesh:
    """The mesh at its defaults: a ServiceProxy given nothing but its instances."""
    mesh = Mesh()
    proxy = mesh.register_service(ServiceProxy(SERVICE))
    for instance in instances:
        proxy.load_balancer.register(instance)
    return mesh


def readme(instances: Sequence[ServiceInstance]) -> Mesh:
    """The README's quick start, as written there (its load balancer, then the proxy)."""
    lb = LoadBalancer()
    for instance in instances:
        lb.register(instance)
    mesh = Mesh()
    mesh.register_service(ServiceProxy(SERVICE, load_balancer=lb))
    return mesh


SETUPS = {"defaults": defaults, "readme": readme}


@pytest.fixture(scope="module")
def cells() -> list[Cell]:
    # Every contender's client times out after 1 s (httpx's default is 5 s): the mesh takes
    # its attempt timeout from it, and a hang costs the plain client 1 s, not 5.
    matrix = run_matrix(SETUPS, LOADS, modes=MODES, client_timeout=CLIENT_TIMEOUT)
    print("\n" + table(matrix))  # shown with -s, and in the log of a failing run
    return matrix


def _by(cells: list[Cell], mode: str, load: Load) -> dict[str, Cell]:
    return {c.contender: c for c in cells if c.mode == mode and c.load == load}


@pytest.mark.parametrize("mode", MODES)
def test_the_mesh_routes_around_one_bad_instance(cells: list[Cell], mode: str) -> None:
    problems = []
    for load in LOADS:
        by = _by(cells, mode, load)
        plain, loop = by["plain"], by["loop"]
        for name in SETUPS:
            got = by[name]
            where = f"{name} / {mode} / {load.flavour} {load.pacing}"
            if got.success_rate < 0.99:
                problems.append(f"{where}: success {got.success_rate:.1%} < 99%")
            if got.successes < loop.successes:
                problems.append(f"{where}: {got.successes} successes < loop's {loop.successes}")
            allowed = max(plain.p99 * P99_FACTOR, plain.p99 + P99_SLACK)
            if got.p99 > allowed:
                problems.append(
                    f"{where}: p99 {got.p99 * 1000:.0f} ms > plain's "
                    f"{plain.p99 * 1000:.0f} ms (+ noise: {allowed * 1000:.0f} ms)"
                )
    assert not problems, "\n".join(problems) + "\n" + table(cells)


def test_the_baselines_show_the_fault(cells: list[Cell]) -> None:
    """The matrix can fail: the plain client does suffer where a request hits the bad one."""
    for mode in ("hang", "refuse", "reset", "error503"):
        for load in LOADS:
            plain = _by(cells, mode, load)["plain"]
            assert plain.success_rate < 0.9, (mode, load, plain.success_rate)
            assert plain.bad_attempts > 0
