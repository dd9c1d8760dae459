"""Prometheus metrics for a mesh: a ``prometheus_client`` collector (the ``[prometheus]`` extra).

Counters and the latency histogram are fed by the mesh's events; gauges (breaker
state, instance health, in-flight connections) are read from the mesh at scrape
time. Register it like any custom collector::

    collector = MeshCollector(mesh)
    REGISTRY.register(collector)      # or instrument_mesh(mesh)

Metric names (with the default ``namespace="service_mesh"``):

=======================================================  =========  ==============================
name                                                     type       labels
=======================================================  =========  ==============================
``service_mesh_calls_total``                             counter    service, outcome
``service_mesh_attempts_total``                          counter    service, outcome
``service_mesh_call_duration_seconds``                   histogram  service, outcome
``service_mesh_rejections_total``                        counter    service, reason
``service_mesh_retries_total``                           counter    service
``service_mesh_retry_give_ups_total``                    counter    service
``service_mesh_circuit_breaker_rejections_total``        counter    breaker, reason
``service_mesh_circuit_breaker_transitions_total``       counter    breaker, from_state, to_state
``service_mesh_circuit_breaker_state``                   gauge      breaker, state
``service_mesh_circuit_breaker_failures``                gauge      breaker
``service_mesh_instance_picks_total``                    counter    service, instance
``service_mesh_instance_health_changes_total``           counter    service, instance, healthy
``service_mesh_instance_ejections_total``                counter    service, instance, reason
``service_mesh_instance_healthy``                        gauge      service, instance
``service_mesh_instance_ejected``                        gauge      service, instance
``service_mesh_instance_connections``                    gauge      service, instance
``service_mesh_faults_injected_total``                   counter    source, kind
``service_mesh_concurrency_limit``                       gauge      service
``service_mesh_concurrency_in_flight``                   gauge      service
=======================================================  =========  ==============================

``calls_total`` counts each call once, by how it ended: ``success``, ``failure``
(every attempt it was allowed failed) or ``rejected`` (refused by the proxy: its
breaker open, no instance, bulkhead full, a rate or a concurrency limit).
``attempts_total`` counts each attempt (``success``, ``failure``, or ``rejected`` by
one instance's breaker), so ten calls with four retries read 10 calls and 14
attempts. ``retry_give_ups_total`` counts calls that were retried and still failed.
The duration histogram holds the attempts that ran (``success`` and ``failure``).
Series labelled by instance disappear once the instance leaves its service, so pod
churn does not grow them. The concurrency gauges report each service proxy's
``concurrency_limit``: its current (adaptive) limit and the calls holding a place in it.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter
from collections.abc import Iterable, Sequence

from ._extras import missing_extra

try:
    from prometheus_client.core import (
        REGISTRY,
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:
    raise missing_extra(__name__, "prometheus", exc) from exc

from ..events import Event, EventListener
from ..mesh import Mesh, default_mesh
from ._metrics import (
    BREAKER_STATES,
    COUNTERS,
    DURATION_BUCKETS,
    measures,
    read_breakers,
    read_instances,
)

__all__ = ["MeshCollector", "instrument_mesh"]

_Labels = tuple[str, ...]


class _Histogram:
    """Observation counts per bucket (not cumulative), their sum and count."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class MeshCollector:
    """A ``prometheus_client`` custom collector over one :class:`Mesh` (default: the default mesh).

    It subscribes to the mesh when created; :meth:`close` unsubscribes. Events of
    other components (a chaos strategy, a standalone retry policy) are counted
    too when they reach :meth:`observe`, e.g. through ``mesh.watch(chaos)``.
    """

    def __init__(
        self,
        mesh: Mesh | None = None,
        *,
        namespace: str = "service_mesh",
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(set(bounds)) or bounds[0] < 0:
            raise ValueError(f"buckets must be increasing non-negative bounds, got {buckets!r}")
        self.mesh = mesh if mesh is not None else default_mesh()
        self.namespace = namespace
        self._prefix = f"{namespace}_" if namespace else ""
        self._bounds = bounds
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[_Labels]] = {name: Counter() for name in COUNTERS}
        self._durations: dict[_Labels, _Histogram] = {}
        self._listener: EventListener = self.observe
        self.mesh.subscribe(self._listener)

    def __repr__(self) -> str:
        return f"MeshCollector({self.mesh!r}, namespace={self.namespace!r})"

    def close(self) -> None:
        """Stop counting the mesh's events (the gauges keep reading the mesh)."""
        self.mesh.unsubscribe(self._listener)

    # -- events -------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Count one event (the mesh-wide listener; subscribe it to other components too)."""
        counted, duration, labels = measures(event)
        if not counted:
            return
        with self._lock:
            for measure in counted:
                self._counts[measure.metric][measure.labels] += 1
            if duration is not None:
                self._time(labels, duration)

    def _time(self, labels: _Labels, seconds: float) -> None:
        histogram = self._durations.get(labels)
        if histogram is None:
            histogram = self._durations[labels] = _Histogram(len(self._bounds) + 1)
        histogram.counts[bisect.bisect_left(self._bounds, seconds)] += 1
        histogram.sum += seconds

    # -- the collector protocol ----------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        """The metric families without samples (lets a registry check names up front)."""
        return self._families(with_samples=False)

    def collect(self) -> Iterable[Metric]:
        """Every metric family with its current samples."""
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> list[Metric]:
        p = self._prefix
        families: list[Metric] = []
        live = (
            {(i.service, i.instance) for i in read_instances(self.mesh)} if with_samples else set()
        )
        with self._lock:
            for metric, (labels, documentation) in COUNTERS.items():
                counter = CounterMetricFamily(f"{p}{metric}", documentation, labels=labels)
                if with_samples:
                    counts = self._counts[metric]
                    if "instance" in labels:  # forget instances that have left
                        for key in [k for k in counts if (k[0], k[1]) not in live]:
                            del counts[key]
                    for values, count in sorted(counts.items()):
                        counter.add_metric(values, count)
                families.append(counter)
            histogram = HistogramMetricFamily(
                f"{p}call_duration_seconds",
                "Duration of call attempts that ran, by outcome.",
                labels=("service", "outcome"),
                unit="seconds",
            )
            if with_samples:
                for values, observed in sorted(self._durations.items()):
                    histogram.add_metric(values, self._buckets(observed), observed.sum)
            families.append(histogram)
        families.extend(self._gauges(with_samples=with_samples))
        return families

    def _buckets(self, observed: _Histogram) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*self._bounds, math.inf], observed.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), total))
        return buckets

    def _gauges(self, *, with_samples: bool) -> list[Metric]:
        p = self._prefix
        state = GaugeMetricFamily(
            f"{p}circuit_breaker_state",
            "1 for the state each circuit breaker is in, 0 for the others.",
            labels=("breaker", "state"),
        )
        failures = GaugeMetricFamily(
            f"{p}circuit_breaker_failures",
            "Failures a circuit breaker counts now (consecutive, or in its window).",
            labels=("breaker",),
        )
        healthy = GaugeMetricFamily(
            f"{p}instance_healthy",
            "1 if an instance is marked healthy.",
            labels=("service", "instance"),
        )
        ejected = GaugeMetricFamily(
            f"{p}instance_ejected",
            "1 if outlier detection has ejected an instance.",
            labels=("service", "instance"),
        )
        connections = GaugeMetricFamily(
            f"{p}instance_connections",
            "Calls in flight on an instance.",
            labels=("service", "instance"),
        )
        limit = GaugeMetricFamily(
            f"{p}concurrency_limit",
            "The current concurrency limit of a service proxy's (adaptive) limiter.",
            labels=("service",),
        )
        in_flight = GaugeMetricFamily(
            f"{p}concurrency_in_flight",
            "Calls holding a place in a service proxy's concurrency limiter.",
            labels=("service",),
        )
        if with_samples:
            for service, proxy in sorted(self.mesh.services().items()):
                limiter = proxy.concurrency_limit
                if limiter is not None:
                    limit.add_metric((service,), limiter.limit)
                    in_flight.add_metric((service,), limiter.in_flight)
            for breaker in read_breakers(self.mesh):
                for value in BREAKER_STATES:
                    state.add_metric((breaker.name, value), float(value == breaker.state))
                failures.add_metric((breaker.name,), breaker.failure_count)
            for instance in read_instances(self.mesh):
                labels = (instance.service, instance.instance)
                healthy.add_metric(labels, float(instance.healthy))
                ejected.add_metric(labels, float(instance.ejected))
                connections.add_metric(labels, instance.connections)
        return [state, failures, healthy, ejected, connections, limit, in_flight]


def instrument_mesh(
    mesh: Mesh | None = None,
    registry: CollectorRegistry = REGISTRY,
    *,
    namespace: str = "service_mesh",
) -> MeshCollector:
    """Create a :class:`MeshCollector` over ``mesh`` and register it in ``registry``."""
    collector = MeshCollector(mesh, namespace=namespace)
    try:
        registry.register(collector)
    except Exception:
        collector.close()
        raise
    return collector
