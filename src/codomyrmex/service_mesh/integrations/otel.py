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
from collections.abc import Iterable

from ._extras import missing_extra

try:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
except ImportError as exc:
    raise missing_extra(__name__, "otel", exc) from exc

from .. import __version__
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

__all__ = ["METER_NAME", "MeshInstruments"]

METER_NAME = "codomyrmex.service_mesh"
"""The instrumentation scope of every instrument."""

_SERVICE = "service_mesh.service"
_INSTANCE = "service_mesh.instance"
_BREAKER = "service_mesh.breaker"
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
}
"""The OpenTelemetry name and unit of each counter of the shared table."""


class MeshInstruments:
    """OpenTelemetry instruments over one :class:`Mesh` (default: the default mesh).

    It subscribes to the mesh when created; :meth:`close` unsubscribes and stops
    the gauges' observations. Events of other components (a chaos strategy, a
    standalone retry policy) are recorded too when they reach :meth:`observe`,
    e.g. through ``mesh.watch(chaos)``.
    """

    def __init__(self, mesh: Mesh | None = None, *, meter_provider: MeterProvider | None = None):
        self.mesh = mesh if mesh is not None else default_mesh()
        self._closed = threading.Event()
        meter = get_meter(METER_NAME, __version__, meter_provider)
        self._counters = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        for metric, (labels, documentation) in COUNTERS.items():
            name, unit = _NAMES[metric]
            self._counters[metric] = meter.create_counter(name, unit, documentation)
            self._keys[metric] = tuple(f"service_mesh.{label}" for label in labels)
        self._duration = meter.create_histogram(
            "service_mesh.call.duration",
            "s",
            "Duration of call attempts that ran, by outcome.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        meter.create_observable_gauge(
            "service_mesh.circuit_breaker.state",
            [self._observe_breaker_states],
            "1",
            "1 for the state each circuit breaker is in, 0 for the others.",
        )
        meter.create_observable_gauge(
            "service_mesh.circuit_breaker.failures",
            [self._observe_breaker_failures],
            "{failure}",
            "Failures a circuit breaker counts now (consecutive, or in its window).",
        )
        meter.create_observable_gauge(
            "service_mesh.instance.healthy",
            [self._observe_healthy],
            "1",
            "1 if an instance is marked healthy.",
        )
        meter.create_observable_gauge(
            "service_mesh.instance.ejected",
            [self._observe_ejected],
            "1",
            "1 if outlier detection has ejected an instance.",
        )
        meter.create_observable_up_down_counter(
            "service_mesh.instance.connections",
            [self._observe_connections],
            "{connection}",
            "Calls in flight on an instance.",
        )
        self._listener: EventListener = self.observe
        self.mesh.subscribe(self._listener)

    def __repr__(self) -> str:
        return f"MeshInstruments({self.mesh!r})"

    def close(self) -> None:
        """Stop recording the mesh's events and observing its state."""
        self._closed.set()
        self.mesh.unsubscribe(self._listener)

    # -- events -------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Record one event (the mesh-wide listener; subscribe it to other components too)."""
        counted, duration, labels = measures(event)
        for measure in counted:
            keys = self._keys[measure.metric]
            self._counters[measure.metric].add(1, dict(zip(keys, measure.labels, strict=True)))
        if duration is not None:
            self._duration.record(duration, {_SERVICE: labels[0], _OUTCOME: labels[1]})

    # -- observed state -------------------------------------------------------------

    def _observe_breaker_states(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed.is_set():
            return
        for breaker in read_breakers(self.mesh):
            for state in BREAKER_STATES:
                yield Observation(
                    int(state == breaker.state),
                    {_BREAKER: breaker.name, "service_mesh.state": state},
                )

    def _observe_breaker_failures(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed.is_set():
            return
        for breaker in read_breakers(self.mesh):
            yield Observation(breaker.failure_count, {_BREAKER: breaker.name})

    def _observe_healthy(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed.is_set():
            return
        for instance in read_instances(self.mesh):
            attributes = {_SERVICE: instance.service, _INSTANCE: instance.instance}
            yield Observation(int(instance.healthy), attributes)

    def _observe_ejected(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed.is_set():
            return
        for instance in read_instances(self.mesh):
            attributes = {_SERVICE: instance.service, _INSTANCE: instance.instance}
            yield Observation(int(instance.ejected), attributes)

    def _observe_connections(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed.is_set():
            return
        for instance in read_instances(self.mesh):
            attributes = {_SERVICE: instance.service, _INSTANCE: instance.instance}
            yield Observation(instance.connections, attributes)
