"""Typed events the mesh's components publish, and the one way they are delivered.

Components keep a tuple of subscribers and build an event only when the tuple
is non-empty, so publishing costs one truth test when nobody listens. A
subscriber that raises is logged and never breaks the call that caused the event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ._validate import check_callable

if TYPE_CHECKING:
    from .breaker.state import CircuitState

__all__ = [
    "CallFailed",
    "CallRejected",
    "CallSucceeded",
    "Event",
    "EventListener",
    "FaultInjected",
    "InstanceEjected",
    "InstanceEvent",
    "InstanceHealthChanged",
    "InstancePicked",
    "InstanceReturned",
    "LimitChanged",
    "RetryGaveUp",
    "RetryScheduled",
    "StateTransition",
    "ThresholdCrossed",
    "add_listener",
    "publish",
    "remove_listener",
]

logger = logging.getLogger("codomyrmex.service_mesh")


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event. ``source`` names the breaker, service or policy."""

    source: str


@dataclass(frozen=True, slots=True)
class InstanceEvent(Event):
    """Base class of the events about one instance of service ``source``."""

    instance_id: str


# -- calls through a service proxy ---------------------------------------------


@dataclass(frozen=True, slots=True)
class CallRejected(Event):
    """A call was refused without running; ``reason`` says by what.

    Reasons: ``"circuit_open"``, ``"half_open_full"``, ``"forced_open"``,
    ``"no_healthy_instance"``, ``"bulkhead_full"``, ``"concurrency_limit"``,
    ``"rate_limit"``, ``"retry_budget"`` (a retry the budget refused: the call then
    ends with its failure).
    """

    reason: str
    by_breaker: bool = False
    """True when a circuit breaker refused (``source`` is the breaker's name); False when
    a service proxy did (``source`` is the service's name)."""


@dataclass(frozen=True, slots=True)
class CallSucceeded(InstanceEvent):
    """A call through a service proxy succeeded on ``instance_id``."""

    duration: float
    """Seconds the successful attempt took."""
    attempts: int
    """Attempts the call made, the successful one included."""


@dataclass(frozen=True, slots=True)
class CallFailed(InstanceEvent):
    """One attempt of a call failed on ``instance_id`` after ``duration`` seconds."""

    duration: float
    error: BaseException


# -- instances of a load balancer ----------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceReturned(InstanceEvent):
    """An ejected instance is pickable again."""

    reason: str
    """Why: ``"ejection_time_elapsed"``, ``"reconfigured"`` (outlier detection turned
    off) or the reason given to ``LoadBalancer.return_instance``."""


@dataclass(frozen=True, slots=True)
class InstancePicked(InstanceEvent):
    """The load balancer of ``source`` picked ``instance_id``."""


@dataclass(frozen=True, slots=True)
class InstanceHealthChanged(InstanceEvent):
    """An instance was marked healthy or unhealthy."""

    healthy: bool


@dataclass(frozen=True, slots=True)
class InstanceEjected(InstanceEvent):
    """An instance was taken out of its balancer's picks."""

    reason: str
    """Why: an outlier detection measure (``"consecutive_failures"``, ...) or the reason
    given to ``LoadBalancer.eject`` (e.g. ``"instance_breaker"``)."""
    duration: float
    """Seconds until it returns (infinite until ``return_instance`` for ``eject``)."""


# -- concurrency limits --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitChanged(Event):
    """Adaptive concurrency limiter ``source`` moved its limit from ``old`` to ``new``;
    ``in_flight`` calls were running then."""

    old: int
    new: int
    in_flight: int


# -- retries -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    """Retry number ``attempt`` (1-based) will start after ``delay`` seconds.

    ``error`` is the failure retried, or None when a result was rejected.
    """

    attempt: int
    delay: float
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class RetryGaveUp(Event):
    """A call failed for good after ``attempts`` attempts; ``error`` is what it raises
    (None when the last result was rejected and is returned)."""

    attempts: int
    error: BaseException | None


# -- chaos ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultInjected(Event):
    """Chaos strategy ``source`` hit a call.

    ``kind`` is ``"exception"`` (``error`` is raised), ``"result"`` (the call is
    replaced by the configured result) or ``"latency"`` (the call runs late);
    ``delay`` is the latency added first, in seconds (0.0 for none).
    """

    kind: str
    delay: float
    error: BaseException | None


# -- circuit breakers ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThresholdCrossed(Event):
    """A METRICS_ONLY breaker's counts crossed the threshold that would have opened it.

    Published once per crossing (again only after the counts fell back below), for
    shadow-mode alerting. ``measure`` is ``"failures"`` (consecutive mode),
    ``"failure_rate"`` or ``"slow_call_rate"`` (percentages, window mode).
    """

    measure: str
    value: float
    threshold: float


@dataclass(frozen=True, slots=True)
class StateTransition(Event):
    """A circuit breaker moved from ``old`` to ``new``."""

    old: CircuitState
    new: CircuitState


EventListener = Callable[[Event], None]
"""Receives every event of the component (or mesh) it subscribed to."""


def publish(listeners: tuple[EventListener, ...], event: Event) -> None:
    """Deliver ``event`` to each listener; a listener that raises is logged, not propagated."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            logger.exception("event listener %r raised on %r", listener, event)


_L = TypeVar("_L")


def add_listener(listeners: tuple[_L, ...], listener: _L) -> tuple[_L, ...]:
    """``listeners`` with ``listener`` appended; TypeError naming it when it is not callable."""
    check_callable("listener", listener)
    return (*listeners, listener)


def remove_listener(listeners: tuple[_L, ...], listener: object) -> tuple[_L, ...]:
    """``listeners`` without ``listener``, compared with ``==`` (so a bound method passed
    anew matches); an unknown listener is ignored."""
    return tuple(x for x in listeners if x != listener)


class Publisher:
    """Mixin giving a component ``subscribe`` / ``unsubscribe`` over its plain tuple
    ``_subscribers``, changed under its ``_lock``.

    Hot paths keep testing ``self._subscribers`` with one truth test; a component that
    keeps state derived from its subscribers overrides :meth:`_subscribers_changed`.
    """

    __slots__ = ()  # the component's own __slots__ holds ``_subscribers`` and ``_lock``

    _subscribers: tuple[EventListener, ...]
    _lock: threading.Lock

    def subscribe(self, listener: EventListener) -> None:
        """Deliver this component's events to ``listener`` (the class documents which);
        a listener that raises is logged and never breaks the call that caused the event."""
        with self._lock:
            self._subscribers = add_listener(self._subscribers, listener)  # type: ignore[misc]
            self._subscribers_changed()

    def unsubscribe(self, listener: EventListener) -> None:
        """Stop delivering events to ``listener`` (compared with ``==``, so a bound method
        passed anew matches); unknown listeners are ignored."""
        with self._lock:
            self._subscribers = remove_listener(self._subscribers, listener)  # type: ignore[misc]
            self._subscribers_changed()

    def _subscribers_changed(self) -> None:
        """Run under the lock after each (un)subscribe; nothing by default."""
