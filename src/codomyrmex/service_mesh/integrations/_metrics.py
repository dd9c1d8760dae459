"""What the metric integrations (prometheus, otel) share: how events and mesh state read
as measurements. Standard library only; each backend names and exports them its own way.
"""

from __future__ import annotations

from typing import NamedTuple

from ..circuit_breaker import CircuitState
from ..errors import CircuitOpenError
from ..events import (
    CallFailed,
    CallRejected,
    CallSucceeded,
    Event,
    FaultInjected,
    InstanceEjected,
    InstanceHealthChanged,
    InstancePicked,
    RetryGaveUp,
    RetryScheduled,
    StateTransition,
)
from ..mesh import Mesh

BREAKER_STATES: tuple[str, ...] = tuple(state.value for state in CircuitState)
"""Every breaker state, so a state gauge reports 0 for the states a breaker is not in."""

COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "calls": (("service", "outcome"), "Calls through a service proxy, by final outcome."),
    "attempts": (("service", "outcome"), "Attempts of proxy calls, by outcome."),
    "rejections": (("service", "reason"), "Calls a service proxy refused, by reason."),
    "circuit_breaker_rejections": (("breaker", "reason"), "Calls a circuit breaker refused."),
    "retries": (("service",), "Retries scheduled."),
    "retry_give_ups": (("service",), "Calls that were retried and still failed."),
    "circuit_breaker_transitions": (
        ("breaker", "from_state", "to_state"),
        "Circuit breaker state transitions.",
    ),
    "instance_picks": (("service", "instance"), "Instances picked by a service's load balancer."),
    "instance_health_changes": (
        ("service", "instance", "healthy"),
        "Instances marked healthy or unhealthy.",
    ),
    "instance_ejections": (
        ("service", "instance", "reason"),
        "Instances ejected by outlier detection.",
    ),
    "faults_injected": (("source", "kind"), "Faults injected by chaos strategies, by kind."),
}  # fmt: skip
"""Every counter the event stream feeds: its labels (one kind of thing each) and help text."""


class Measure(NamedTuple):
    """One increment of counter ``metric`` (a key of :data:`COUNTERS`) at ``labels``."""

    metric: str
    labels: tuple[str, ...]


def measures(event: Event) -> tuple[list[Measure], float | None, tuple[str, ...]]:
    """What one event counts: its counter increments, and an attempt duration to observe
    (with its ``(service, outcome)`` labels), or None.

    Calls are counted once, by how they end: ``success`` (:class:`CallSucceeded`),
    ``failure`` (:class:`RetryGaveUp`: every attempt allowed failed) or ``rejected``
    (refused by the proxy: its breaker open, no instance, bulkhead full, a limit).
    Attempts are counted each: ``success``, ``failure`` or ``rejected`` (an attempt
    refused by one instance's breaker).
    """
    labels: tuple[str, ...]
    if isinstance(event, CallSucceeded):
        labels = (event.source, "success")
        return [Measure("calls", labels), Measure("attempts", labels)], event.duration, labels
    if isinstance(event, CallFailed):
        labels = (event.source, failed_outcome(event))
        duration = event.duration if labels[1] == "failure" else None
        return [Measure("attempts", labels)], duration, labels
    if isinstance(event, RetryGaveUp):
        counted = [Measure("calls", (event.source, "failure"))]
        if event.attempts > 1:
            counted.append(Measure("retry_give_ups", (event.source,)))
        return counted, None, ()
    if isinstance(event, CallRejected):
        if event.by_breaker:
            return [Measure("circuit_breaker_rejections", (event.source, event.reason))], None, ()
        counted = [Measure("rejections", (event.source, event.reason))]
        if event.reason != "retry_budget":  # a refused retry: the call ends as a failure
            counted.append(Measure("calls", (event.source, "rejected")))
        return counted, None, ()
    if isinstance(event, RetryScheduled):
        return [Measure("retries", (event.source,))], None, ()
    if isinstance(event, InstancePicked):
        return [Measure("instance_picks", (event.source, event.instance_id))], None, ()
    if isinstance(event, StateTransition):
        labels = (event.source, event.old.value, event.new.value)
        return [Measure("circuit_breaker_transitions", labels)], None, ()
    if isinstance(event, InstanceHealthChanged):
        healthy = "true" if event.healthy else "false"
        labels = (event.source, event.instance_id, healthy)
        return [Measure("instance_health_changes", labels)], None, ()
    if isinstance(event, InstanceEjected):
        labels = (event.source, event.instance_id, event.reason)
        return [Measure("instance_ejections", labels)], None, ()
    if isinstance(event, FaultInjected):
        return [Measure("faults_injected", (event.source, event.kind))], None, ()
    return [], None, ()


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


GAUGES: dict[str, tuple[tuple[str, ...], str]] = {
    "circuit_breaker_state": (
        ("breaker", "state"),
        "1 for the state each circuit breaker is in, 0 for the others.",
    ),
    "circuit_breaker_failures": (
        ("breaker",),
        "Failures a circuit breaker counts now (consecutive, or in its window).",
    ),
    "instance_healthy": (("service", "instance"), "1 if an instance is marked healthy."),
    "instance_ejected": (
        ("service", "instance"),
        "1 if outlier detection has ejected an instance.",
    ),
    "instance_connections": (("service", "instance"), "Calls in flight on an instance."),
    "concurrency_limit": (
        ("service",),
        "The current concurrency limit of a service proxy's (adaptive) limiter.",
    ),
    "concurrency_in_flight": (
        ("service",),
        "Calls holding a place in a service proxy's concurrency limiter.",
    ),
}  # fmt: skip
"""Every gauge read from the mesh when a backend collects: its labels and help text."""

Sample = tuple[tuple[str, ...], int]
"""One gauge sample: its label values (in the order of :data:`GAUGES`) and its value."""


def read_gauge(mesh: Mesh, metric: str) -> list[Sample]:
    """The samples of gauge ``metric`` (a key of :data:`GAUGES`) as the mesh is now."""
    samples: list[Sample] = []
    if metric.startswith("circuit_breaker_"):
        for name, breaker in sorted(mesh.circuit_breakers().items()):
            state = breaker.state.value
            if metric == "circuit_breaker_failures":
                samples.append(((name,), breaker.failure_count))
            else:
                samples += [((name, value), int(value == state)) for value in BREAKER_STATES]
    elif metric.startswith("instance_"):
        for service, proxy in sorted(mesh.services().items()):
            balancer = proxy.load_balancer
            ejected = {instance.id for instance in balancer.ejected_instances}
            for instance in balancer.instances:
                if metric == "instance_healthy":
                    value = int(instance.healthy)
                elif metric == "instance_ejected":
                    value = int(instance.id in ejected)
                else:
                    value = instance.connections
                samples.append(((service, instance.id), value))
    else:
        for service, proxy in sorted(mesh.services().items()):
            limiter = proxy.concurrency_limit
            if limiter is not None:
                value = limiter.limit if metric == "concurrency_limit" else limiter.in_flight
                samples.append(((service,), value))
    return samples


def live_instances(mesh: Mesh) -> set[tuple[str, str]]:
    """``(service, instance id)`` of every instance of the mesh now."""
    return {
        (service, instance.id)
        for service, proxy in mesh.services().items()
        for instance in proxy.load_balancer.instances
    }
