"""What the metric integrations (prometheus, otel) share: how events and mesh state read
as measurements. Standard library only; each backend names and exports them its own way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from ..circuit_breaker import CircuitState
from ..errors import CircuitOpenError
from ..events import CallFailed, CallRejected
from ..mesh import Mesh

BREAKER_STATES: tuple[str, ...] = tuple(state.value for state in CircuitState)
"""Every breaker state, so a state gauge reports 0 for the states a breaker is not in."""

BREAKER_REJECTIONS = frozenset({"circuit_open", "half_open_full", "forced_open"})
""":class:`CallRejected` reasons a breaker publishes (the others come from a proxy)."""

DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
"""Upper bounds, in seconds, of the call duration histogram (Prometheus' defaults)."""


def failed_outcome(event: CallFailed) -> str:
    """``"rejected"``: the attempt's breaker refused it; ``"failure"``: it ran and failed."""
    return "rejected" if isinstance(event.error, CircuitOpenError) else "failure"


def is_proxy_rejection(event: CallRejected) -> bool:
    """Whether a rejection refused a whole call at the proxy (no instance, bulkhead, budget)."""
    return event.reason not in BREAKER_REJECTIONS


class BreakerReading(NamedTuple):
    name: str
    state: str
    failure_count: int


class InstanceReading(NamedTuple):
    service: str
    instance: str
    healthy: bool
    ejected: bool
    connections: int


def read_breakers(mesh: Mesh) -> Iterator[BreakerReading]:
    """The mesh's breakers as they are now."""
    for name, breaker in sorted(mesh.circuit_breakers().items()):
        yield BreakerReading(name, breaker.state.value, breaker.failure_count)


def read_instances(mesh: Mesh) -> Iterator[InstanceReading]:
    """Every instance of every service of the mesh as it is now."""
    for service, proxy in sorted(mesh.services().items()):
        balancer = proxy.load_balancer
        ejected = {instance.id for instance in balancer.ejected_instances}
        for instance in balancer.instances:
            yield InstanceReading(
                service,
                instance.id,
                instance.healthy,
                instance.id in ejected,
                instance.connections,
            )
