"""OpenTelemetry metrics for a mesh through ``opentelemetry-api`` (the ``[otel]`` extra).

The same measurements as the Prometheus collector, named the OpenTelemetry way
(dotted names, UCUM units, no ``_total``). Counters and the duration histogram
are fed by the mesh's events; the gauges are observed from the mesh whenever
the SDK collects::

    instruments = MeshInstruments(mesh)               # the global MeterProvider
    instruments = MeshInstruments(mesh, meter_provider=provider)

Instruments (name, kind, unit: attributes, each key prefixed ``service_mesh.``):

- ``service_mesh.calls`` counter ``{call}``: service, outcome
- ``service_mesh.call.duration`` histogram ``s``: service, outcome
- ``service_mesh.rejections`` counter ``{call}``: source, reason
- ``service_mesh.retries`` counter ``{retry}``: service
- ``service_mesh.retry.give_ups`` counter ``{call}``: service
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
- ``service_mesh.chaos.faults`` counter ``{fault}``: source, fault

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
from ..events import (
    CallFailed,
    CallRejected,
    CallSucceeded,
    Event,
    EventListener,
    FaultInjected,
    InstanceEjected,
    InstanceHealthChanged,
    InstancePicked,
    RetryGaveUp,
    RetryScheduled,
    StateTransition,
)
from ..mesh import Mesh, default_mesh
from ._metrics import (
    BREAKER_STATES,
    DURATION_BUCKETS,
    failed_outcome,
    is_proxy_rejection,
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
_SOURCE = "service_mesh.source"
_REASON = "service_mesh.reason"


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
        self._calls = meter.create_counter(
            "service_mesh.calls", "{call}", "Call attempts through a service proxy, by outcome."
        )
        self._duration = meter.create_histogram(
            "service_mesh.call.duration",
            "s",
            "Duration of call attempts that ran, by outcome.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self._rejections = meter.create_counter(
            "service_mesh.rejections", "{call}", "Calls refused without running, by who and why."
        )
        self._retries = meter.create_counter(
            "service_mesh.retries", "{retry}", "Retries scheduled."
        )
        self._give_ups = meter.create_counter(
            "service_mesh.retry.give_ups", "{call}", "Calls that failed for good after retrying."
        )
        self._transitions = meter.create_counter(
            "service_mesh.circuit_breaker.transitions",
            "{transition}",
            "Circuit breaker state transitions.",
        )
        self._picks = meter.create_counter(
            "service_mesh.instance.picks", "{pick}", "Instances picked by a load balancer."
        )
        self._health_changes = meter.create_counter(
            "service_mesh.instance.health_changes",
            "{change}",
            "Instances marked healthy or unhealthy.",
        )
        self._ejections = meter.create_counter(
            "service_mesh.instance.ejections", "{ejection}", "Instances ejected as outliers."
        )
        self._faults = meter.create_counter(
            "service_mesh.chaos.faults", "{fault}", "Faults injected by chaos strategies."
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
        if isinstance(event, CallSucceeded):
            attributes = {_SERVICE: event.source, _OUTCOME: "success"}
            self._calls.add(1, attributes)
            self._duration.record(event.duration, attributes)
        elif isinstance(event, CallFailed):
            outcome = failed_outcome(event)
            attributes = {_SERVICE: event.source, _OUTCOME: outcome}
            self._calls.add(1, attributes)
            if outcome == "failure":
                self._duration.record(event.duration, attributes)
        elif isinstance(event, CallRejected):
            self._rejections.add(1, {_SOURCE: event.source, _REASON: event.reason})
            if is_proxy_rejection(event):
                self._calls.add(1, {_SERVICE: event.source, _OUTCOME: "rejected"})
        elif isinstance(event, InstancePicked):
            self._picks.add(1, {_SERVICE: event.source, _INSTANCE: event.instance_id})
        elif isinstance(event, RetryScheduled):
            self._retries.add(1, {_SERVICE: event.source})
        elif isinstance(event, RetryGaveUp):
            self._give_ups.add(1, {_SERVICE: event.source})
        elif isinstance(event, StateTransition):
            self._transitions.add(
                1,
                {
                    _BREAKER: event.source,
                    "service_mesh.from_state": event.old.value,
                    "service_mesh.to_state": event.new.value,
                },
            )
        elif isinstance(event, InstanceHealthChanged):
            self._health_changes.add(
                1,
                {
                    _SERVICE: event.source,
                    _INSTANCE: event.instance_id,
                    "service_mesh.healthy": event.healthy,
                },
            )
        elif isinstance(event, InstanceEjected):
            self._ejections.add(
                1, {_SERVICE: event.source, _INSTANCE: event.instance_id, _REASON: event.reason}
            )
        elif isinstance(event, FaultInjected):
            self._faults.add(1, {_SOURCE: event.source, "service_mesh.fault": event.kind})

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
