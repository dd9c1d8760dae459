"""Prometheus metrics for a mesh: a ``prometheus_client`` collector (the ``[prometheus]`` extra).

Counters and the latency histogram are fed by the mesh's events; gauges (breaker
state, instance health, in-flight connections) are read from the mesh at scrape
time. Register it like any custom collector::

    collector = MeshCollector(mesh)
    REGISTRY.register(collector)      # or instrument_mesh(mesh)

Metric names, each prefixed ``service_mesh_`` (the default ``namespace``), with their labels:

- calls: counters ``calls_total``, ``attempts_total`` and the histogram
  ``call_duration_seconds`` (service, outcome); ``rejections_total`` (service, reason);
  ``retries_total`` and ``retry_give_ups_total`` (service).
- circuit breakers: counters ``circuit_breaker_rejections_total`` (breaker, reason) and
  ``circuit_breaker_transitions_total`` (breaker, from_state, to_state); gauges
  ``circuit_breaker_state`` (breaker, state) and ``circuit_breaker_failures`` (breaker).
- instances: counters ``instance_picks_total`` (service, instance),
  ``instance_health_changes_total`` (..., healthy) and ``instance_ejections_total``
  (..., reason); gauges ``instance_healthy``, ``instance_ejected`` and
  ``instance_connections`` (service, instance).
- chaos: counter ``faults_injected_total`` (source, kind).
- concurrency limits: gauges ``concurrency_limit`` and ``concurrency_in_flight`` (service).

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

from ..events import Event
from ..mesh import Mesh
from . import _metrics
from ._extras import missing_extra
from ._listening import MeshListener
from ._metrics import COUNTERS, DURATION_BUCKETS

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

__all__ = ["MeshCollector", "instrument_mesh"]

_Labels = tuple[str, ...]


class _Histogram:
    """Observation counts per bucket (not cumulative), their sum and count."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class MeshCollector(MeshListener):
    """A ``prometheus_client`` custom collector over one :class:`Mesh` (default: the default mesh).

    It subscribes to the mesh when created; :meth:`close` unsubscribes (the gauges
    keep reading the mesh). Events of
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
        self.namespace = namespace
        self._prefix = f"{namespace}_" if namespace else ""
        self._bounds = bounds
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[_Labels]] = {name: Counter() for name in COUNTERS}
        self._durations: dict[_Labels, _Histogram] = {}
        self._listen(mesh)

    def __repr__(self) -> str:
        return f"MeshCollector({self.mesh!r}, namespace={self.namespace!r})"

    # -- events -------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Count one event (the mesh-wide listener; subscribe it to other components too)."""
        counted, duration, labels = _metrics.measures(event)
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
        live = _metrics.live_instances(self.mesh) if with_samples else set()
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
        families: list[Metric] = []
        for metric, (labels, documentation) in _metrics.GAUGES.items():
            gauge = GaugeMetricFamily(f"{self._prefix}{metric}", documentation, labels=labels)
            if with_samples:
                for values, value in _metrics.read_gauge(self.mesh, metric):
                    gauge.add_metric(values, value)
            families.append(gauge)
        return families


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
