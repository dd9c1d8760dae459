"""OpenTelemetry instruments, read back through the SDK's in-memory metric reader.

Each test has its own MeterProvider (never the global one); durations come from
a fake clock, so histogram sums and bucket counts are exact.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import FakeClock

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Metric,
    Sum,
)

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    LoadBalancer,
    Mesh,
    NoHealthyInstanceError,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.chaos import Chaos
from codomyrmex.service_mesh.events import Event
from codomyrmex.service_mesh.integrations.otel import METER_NAME, MeshInstruments
from codomyrmex.service_mesh.outlier import OutlierDetectionConfig


class Boom(Exception):
    pass


class Reader:
    """A MeterProvider with an in-memory reader, and its metrics by name."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        assert data is not None
        found: dict[str, Metric] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == METER_NAME
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    def close(self) -> None:
        self.provider.shutdown()


@pytest.fixture
def otel() -> Any:
    reader = Reader()
    yield reader
    reader.close()


def points(metric: Metric) -> dict[frozenset[tuple[str, Any]], Any]:
    return {frozenset((p.attributes or {}).items()): p for p in metric.data.data_points}


def point(metric: Metric, **attributes: Any) -> Any:
    key = frozenset((f"service_mesh.{k}", v) for k, v in attributes.items())
    return points(metric).get(key)


def _service(
    mesh: Mesh,
    clock: FakeClock,
    name: str,
    *ids: str,
    threshold: int = 5,
    retries: int = 0,
    balancer: LoadBalancer | None = None,
) -> ServiceProxy:
    balancer = balancer if balancer is not None else LoadBalancer(name=name, clock=clock)
    for n, instance_id in enumerate(ids):
        balancer.register(ServiceInstance(instance_id, "127.0.0.1", 9000 + n))
    breaker = CircuitBreaker(
        name, CircuitBreakerConfig(failure_threshold=threshold, timeout_seconds=30.0), clock=clock
    )
    policy = RetryPolicy(max_retries=retries, initial_delay=0.5, jitter=False, sleep=clock.sleep)
    return mesh.register_service(ServiceProxy(name, balancer, breaker, policy, clock=clock))


def test_instruments_have_dotted_names_units_and_kinds(clock: FakeClock, otel: Reader) -> None:
    mesh = Mesh()
    svc = _service(mesh, clock, "svc", "s1")
    MeshInstruments(mesh, meter_provider=otel.provider)
    svc.call(lambda instance: instance.id)

    metrics = otel.metrics()
    expected = {
        "service_mesh.calls": ("{call}", Sum),
        "service_mesh.call.duration": ("s", Histogram),
        "service_mesh.instance.picks": ("{pick}", Sum),
        "service_mesh.circuit_breaker.state": ("1", Gauge),
        "service_mesh.circuit_breaker.failures": ("{failure}", Gauge),
        "service_mesh.instance.healthy": ("1", Gauge),
        "service_mesh.instance.ejected": ("1", Gauge),
        "service_mesh.instance.connections": ("{connection}", Sum),
    }
    for name, (unit, kind) in expected.items():
        assert metrics[name].unit == unit, name
        assert isinstance(metrics[name].data, kind), name
    assert metrics["service_mesh.calls"].data.is_monotonic
    assert not metrics["service_mesh.instance.connections"].data.is_monotonic
    assert all("_total" not in name for name in metrics)


def test_calls_latency_retries_and_breaker_state(clock: FakeClock, otel: Reader) -> None:
    mesh = Mesh()
    orders = _service(mesh, clock, "orders", "o1", "o2", threshold=1, retries=1)
    MeshInstruments(mesh, meter_provider=otel.provider)

    def taking(seconds: float, fail: bool = False) -> Any:
        def handler(instance: ServiceInstance) -> str:
            clock.advance(seconds)
            if fail:
                raise Boom
            return instance.id

        return handler

    orders.call(taking(0.02))
    orders.call(taking(0.3))
    with pytest.raises(Boom):
        orders.call(taking(2.0, fail=True))

    metrics = otel.metrics()
    calls = metrics["service_mesh.calls"]
    assert point(calls, service="orders", outcome="success").value == 2
    assert point(calls, service="orders", outcome="failure").value == 1  # one call
    attempts = metrics["service_mesh.attempts"]
    assert point(attempts, service="orders", outcome="failure").value == 2  # two attempts
    assert point(attempts, service="orders", outcome="success").value == 2
    assert point(metrics["service_mesh.retries"], service="orders").value == 1
    assert point(metrics["service_mesh.retry.give_ups"], service="orders").value == 1
    transitions = metrics["service_mesh.circuit_breaker.transitions"]
    assert point(transitions, breaker="orders", from_state="closed", to_state="open").value == 1
    picks = metrics["service_mesh.instance.picks"]
    assert point(picks, service="orders", instance="o1").value == 2

    duration = point(metrics["service_mesh.call.duration"], service="orders", outcome="success")
    assert duration.count == 2
    assert duration.sum == pytest.approx(0.32)
    assert duration.min == pytest.approx(0.02)
    assert duration.max == pytest.approx(0.3)
    bounds = list(duration.explicit_bounds)
    assert bounds[:3] == [0.005, 0.01, 0.025]
    assert duration.bucket_counts[bounds.index(0.025)] == 1  # (0.01, 0.025]
    assert duration.bucket_counts[bounds.index(0.5)] == 1  # (0.25, 0.5]

    state = metrics["service_mesh.circuit_breaker.state"]
    assert point(state, breaker="orders", state="open").value == 1
    assert point(state, breaker="orders", state="closed").value == 0
    assert point(metrics["service_mesh.circuit_breaker.failures"], breaker="orders").value == 1


def test_rejections_health_connections_ejections_and_faults(clock: FakeClock, otel: Reader) -> None:
    mesh = Mesh()
    balancer = LoadBalancer(
        name="db",
        clock=clock,
        outlier_detection=OutlierDetectionConfig(
            consecutive_failures=1, base_ejection_time=60.0, max_ejection_percent=100.0
        ),
    )
    db = _service(mesh, clock, "db", "d1", "d2", balancer=balancer, threshold=10)
    chaos = Chaos("d1-down", rate=1.0, exception=Boom, applies_to=lambda i: i.id == "d1")
    mesh.watch(chaos)
    instruments = MeshInstruments(mesh, meter_provider=otel.provider)

    with pytest.raises(Boom):
        db.call(chaos.wrap(lambda instance: instance.id))  # d1 fails and is ejected
    inside: list[Any] = []

    def look(instance: ServiceInstance) -> None:
        connections = otel.metrics()["service_mesh.instance.connections"]
        inside.append(point(connections, service="db", instance=instance.id).value)

    db.call(look)
    db.load_balancer.mark_healthy("d2", False)
    with pytest.raises(NoHealthyInstanceError):
        db.call(look)

    metrics = otel.metrics()
    assert inside == [1]
    assert (
        point(metrics["service_mesh.instance.connections"], service="db", instance="d2").value == 0
    )
    assert point(metrics["service_mesh.instance.ejected"], service="db", instance="d1").value == 1
    assert point(metrics["service_mesh.instance.healthy"], service="db", instance="d2").value == 0
    (ejection,) = metrics["service_mesh.instance.ejections"].data.data_points
    assert ejection.attributes["service_mesh.instance"] == "d1"
    rejections = metrics["service_mesh.rejections"]
    assert point(rejections, service="db", reason="no_healthy_instance").value == 1
    assert point(metrics["service_mesh.calls"], service="db", outcome="rejected").value == 1
    assert (
        point(metrics["service_mesh.chaos.faults"], source="d1-down", kind="exception").value == 1
    )
    changes = metrics["service_mesh.instance.health_changes"]
    assert point(changes, service="db", instance="d2", healthy="false").value == 1

    instruments.close()
    assert db.circuit_breaker._subscribers == ()
    after = otel.metrics()
    assert (
        "service_mesh.circuit_breaker.state" not in after
        or not after["service_mesh.circuit_breaker.state"].data.data_points
    )


def test_the_global_provider_by_default_and_other_events_are_ignored() -> None:
    mesh = Mesh()
    instruments = MeshInstruments(mesh)  # the global provider: a no-op unless an app set one
    instruments.observe(Event("anything"))
    instruments.close()
    assert mesh._subscribers == ()
