"""OpenTelemetry metrics for a mesh through ``opentelemetry-api`` (the ``[otel]`` extra).

The same measurements as the Prometheus collector, named the OpenTelemetry way
(dotted names, UCUM units, no ``_total``). Counters and the duration histogram
are fed by the mesh's events; the gauges are observed from the mesh whenever
the SDK collects::

    instruments = MeshInstruments(mesh)               # the global MeterProvider
    instruments = MeshInstruments(mesh, meter_provider=provider)

Instruments (name, kind, unit: attributes, each key prefixed ``service_mesh.``):

- ``service_mesh.calls`` counter ``{call}``: service, outcome
- ``service_mesh.attempts`` counter ``{attempt}``: service, outcome
- ``service_mesh.call.duration`` histogram ``s``: service, outcome
- ``service_mesh.rejections`` counter ``{call}``: service, reason
- ``service_mesh.retries`` counter ``{retry}``: service
- ``service_mesh.retry.give_ups`` counter ``{call}``: service
- ``service_mesh.circuit_breaker.rejections`` counter ``{call}``: breaker, reason
- ``service_mesh.circuit_breaker.transitions`` counter ``{transition}``:
  breaker, from_state, to_state
- ``service_mesh.circuit_breaker.state`` observable gauge ``1``: breaker, state
- ``service_mesh.circuit_breaker.failures`` observable gauge ``{failure}``: breaker
- ``service_mesh.instance.picks`` counter ``{pick}``: service, instance
- ``service_mesh.instance.health_changes`` counter ``{change}``: service, instance, healthy
- ``service_mesh.instance.ejections`` counter ``{ejection}``: service, instance, reason
- ``service_mesh.instance.healthy`` observable gauge ``1``: service, instance
- ``service_mesh.instance.ejected`` observable gauge ``1``: service, instance
- ``service_mesh.instance.connections`` observable up-down counter ``{connection}``:
  service, instance
- ``service_mesh.chaos.faults`` counter ``{fault}``: source, kind

Outcomes and the duration histogram's contents are as in the Prometheus collector.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .. import __version__
from ..events import Event
from ..mesh import Mesh
from . import _metrics
from ._extras import missing_extra
from ._listening import MeshListener

try:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
except ImportError as exc:
    raise missing_extra(__name__, "otel", exc) from exc

__all__ = ["METER_NAME", "MeshInstruments"]

METER_NAME = "codomyrmex.service_mesh"
"""The instrumentation scope of every instrument."""

_SERVICE = "service_mesh.service"
_OUTCOME = "service_mesh.outcome"

_NAMES = {
    "calls": ("service_mesh.calls", "{call}"),
    "attempts": ("service_mesh.attempts", "{attempt}"),
    "rejections": ("service_mesh.rejections", "{call}"),
    "circuit_breaker_rejections": ("service_mesh.circuit_breaker.rejections", "{call}"),
    "retries": ("service_mesh.retries", "{retry}"),
    "retry_give_ups": ("service_mesh.retry.give_ups", "{call}"),
    "circuit_breaker_transitions": ("service_mesh.circuit_breaker.transitions", "{transition}"),
    "instance_picks": ("service_mesh.instance.picks", "{pick}"),
    "instance_health_changes": ("service_mesh.instance.health_changes", "{change}"),
    "instance_ejections": ("service_mesh.instance.ejections", "{ejection}"),
    "faults_injected": ("service_mesh.chaos.faults", "{fault}"),
    "circuit_breaker_state": ("service_mesh.circuit_breaker.state", "1"),
    "circuit_breaker_failures": ("service_mesh.circuit_breaker.failures", "{failure}"),
    "instance_healthy": ("service_mesh.instance.healthy", "1"),
    "instance_ejected": ("service_mesh.instance.ejected", "1"),
    "instance_connections": ("service_mesh.instance.connections", "{connection}"),
}
"""The OpenTelemetry name and unit of each counter and gauge of the shared tables (the
concurrency limiter's gauges are Prometheus-only)."""

_Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _keys(labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"service_mesh.{label}" for label in labels)


class MeshInstruments(MeshListener):
    """OpenTelemetry instruments over one :class:`Mesh` (default: the default mesh).

    It subscribes to the mesh when created; :meth:`close` unsubscribes and stops
    the gauges' observations. Events of other components (a chaos strategy, a
    standalone retry policy) are recorded too when they reach :meth:`observe`,
    e.g. through ``mesh.watch(chaos)``.
    """

    def __init__(self, mesh: Mesh | None = None, *, meter_provider: MeterProvider | None = None):
        self._closed = threading.Event()
        meter = get_meter(METER_NAME, __version__, meter_provider)
        self._counters = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        for metric, (labels, documentation) in _metrics.COUNTERS.items():
            name, unit = _NAMES[metric]
            self._counters[metric] = meter.create_counter(name, unit, documentation)
            self._keys[metric] = _keys(labels)
        self._duration = meter.create_histogram(
            "service_mesh.call.duration",
            "s",
            "Duration of call attempts that ran, by outcome.",
            explicit_bucket_boundaries_advisory=list(_metrics.DURATION_BUCKETS),
        )
        for metric, (labels, documentation) in _metrics.GAUGES.items():
            if metric not in _NAMES:
                continue
            name, unit = _NAMES[metric]
            create = (
                meter.create_observable_up_down_counter
                if metric == "instance_connections"
                else meter.create_observable_gauge
            )
            create(name, [self._observer(metric, _keys(labels))], unit, documentation)
        self._listen(mesh)

    def __repr__(self) -> str:
        return f"MeshInstruments({self.mesh!r})"

    def close(self) -> None:
        """Stop recording the mesh's events and observing its state."""
        self._closed.set()
        super().close()

    # -- events -------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Record one event (the mesh-wide listener; subscribe it to other components too)."""
        counted, duration, labels = _metrics.measures(event)
        for measure in counted:
            keys = self._keys[measure.metric]
            self._counters[measure.metric].add(1, dict(zip(keys, measure.labels, strict=True)))
        if duration is not None:
            self._duration.record(duration, {_SERVICE: labels[0], _OUTCOME: labels[1]})

    # -- observed state -------------------------------------------------------------

    def _observer(self, metric: str, keys: tuple[str, ...]) -> _Callback:
        """The callback observing gauge ``metric``, whose attributes are ``keys``."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if self._closed.is_set():
                return
            for values, value in _metrics.read_gauge(self.mesh, metric):
                yield Observation(value, dict(zip(keys, values, strict=True)))

        return observe
