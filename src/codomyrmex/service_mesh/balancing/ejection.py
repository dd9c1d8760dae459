"""Ejection: an :class:`~.outlier.OutlierDetector`'s decisions applied to a balancer's pool.

The detector decides who is ejected and for how long; this module takes those
instances out of the pool, puts each ejection's end on the timer (so an instance
returns while no call comes), and queues the
:class:`~codomyrmex.service_mesh.events.InstanceEjected` and
:class:`~codomyrmex.service_mesh.events.InstanceReturned` events. It also
carries a caller's own ejections (``LoadBalancer.eject``), which last until the
caller returns the instance.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

from ..events import Event, InstanceEjected, InstanceReturned
from .outlier import (
    EJECTION_TIME_ELAPSED,
    SUCCESS_RATE,
    HostState,
    OutlierDetectionConfig,
    OutlierDetector,
)
from .pool import Entry, Pool

__all__ = ["Ejections"]

Timer = Callable[[float, Callable[[], None]], object]


def _return_callback(ref: weakref.ref[Ejections]) -> Callable[[], None]:
    """A timer callback that does not keep its balancer alive."""

    def fire() -> None:
        ejections = ref()
        if ejections is not None:
            ejections._on_due()

    return fire


class Ejections:
    """Who is ejected from one balancer's pool, and until when (internal API).

    Every method is called with the balancer's lock held. ``next_due`` is the
    earliest scheduled return (``inf``: none), so a pick checks for returns with
    one comparison; ``failing`` holds the instances with failures in a row, by id.
    """

    __slots__ = (
        "__weakref__",
        "_changed",
        "_clock",
        "_emit",
        "_name",
        "_on_due",
        "_pool",
        "_timer",
        "detector",
        "failing",
        "next_due",
    )

    def __init__(
        self,
        pool: Pool,
        config: OutlierDetectionConfig | None,
        *,
        clock: Callable[[], float],
        timer: Timer,
        name: Callable[[], str],
        emit: Callable[[Event], None],
        on_due: Callable[[], None],
        changed: Callable[[], None],
    ) -> None:
        """``name`` reads the balancer's name for events, ``emit`` queues an event (lock
        held), ``on_due`` is the timer's callback (it takes the lock and calls
        :meth:`return_due`, then delivers the events) and ``changed`` is called when
        ``next_due`` changes."""
        self._pool = pool
        self.detector = None if config is None else OutlierDetector(config)
        self.failing: dict[str, HostState] = {}
        self.next_due = math.inf
        self._clock = clock
        self._timer = timer
        self._name = name
        self._emit = emit
        self._on_due = on_due
        self._changed = changed

    # -- membership ------------------------------------------------------------------

    def track(self, entry: Entry) -> None:
        """Give a newly registered entry its outlier state."""
        if self.detector is not None:
            entry.outlier = self.detector.host(entry.inst.id)

    def forget(self, entry: Entry) -> None:
        """Drop a deregistered entry's outlier state."""
        if entry.outlier is not None and self.detector is not None:
            self.detector.forget(entry.outlier)
            self.failing.pop(entry.inst.id, None)

    def reconfigure(self, config: OutlierDetectionConfig | None) -> None:
        """Apply a new config to the running detector; None returns every ejected entry."""
        detector = self.detector
        members = self._pool.members.values()
        if config is None and detector is not None:
            self.detector = None
            self.next_due = math.inf
            self._changed()
            for entry in members:
                entry.outlier = None
                if entry.ejected:
                    entry.ejected = False
                    self._pool.refresh(entry, ramp=False)
                    self._emit(InstanceReturned(self._name(), entry.inst.id, "reconfigured"))
        elif config is not None and detector is None:
            self.detector = OutlierDetector(config)
            for entry in members:
                entry.outlier = HostState(entry.inst.id)
        elif config is not None and detector is not None:
            detector.config = config

    # -- outcomes --------------------------------------------------------------------

    def record(self, entry: Entry, outcome: BaseException | None, now: float) -> None:
        """Count one finished call (not aborted) of ``entry``; eject it if it is an outlier."""
        detector = self.detector
        host = entry.outlier
        if detector is None or host is None:
            return
        if detector.next_due <= now:
            self.return_due()
        if detector.next_sweep <= now:  # this call belongs to the next interval
            self._sweep(detector, now)
        failed = outcome is not None and detector.is_failure(outcome)
        reason = detector.record(host, failed, now)
        if host.consecutive:
            self.failing[host.instance_id] = host
        else:
            self.failing.pop(host.instance_id, None)
        if reason is not None:
            self._eject(detector, entry, reason, now)

    def _eject(self, detector: OutlierDetector, entry: Entry, reason: str, now: float) -> None:
        """Eject an instance (within ``max_ejection_percent``) and time its return."""
        if entry.outlier is None or entry.outlier.ejected:
            return
        if not detector.may_eject(len(self._pool.members)):
            detector.refused()
            return
        duration = detector.eject(entry.outlier, now)
        self.next_due = detector.next_due
        self._changed()
        entry.ejected = True
        self._pool.refresh(entry, ramp=False)
        self._emit(InstanceEjected(self._name(), entry.inst.id, reason, duration))
        self._timer(duration, _return_callback(weakref.ref(self)))

    def _sweep(self, detector: OutlierDetector, now: float) -> None:
        """End a success-rate interval: eject the instances well below the others' rate."""
        members = self._pool.members
        for host in detector.sweep(now):
            entry = members.get(host.instance_id)
            if entry is not None and entry.outlier is host:
                self._eject(detector, entry, SUCCESS_RATE, now)

    # -- returns ---------------------------------------------------------------------

    def return_if_due(self) -> None:
        """Return ejected instances whose time is up (something is ejected)."""
        if self.next_due <= self._clock():
            self.return_due()

    def return_due(self) -> None:
        """Put back in service every ejected instance whose ejection has ended."""
        detector = self.detector
        if detector is None or detector.next_due == math.inf:
            return
        returned = detector.pop_due(self._clock())
        self.next_due = detector.next_due
        self._changed()
        members = self._pool.members
        for host in returned:
            entry = members.get(host.instance_id)
            if entry is None or entry.outlier is not host:
                continue
            entry.ejected = False
            self._pool.refresh(entry, ramp=False)
            self._emit(InstanceReturned(self._name(), host.instance_id, EJECTION_TIME_ELAPSED))

    # -- a caller's own ejections ------------------------------------------------------

    def eject_by_caller(self, entry: Entry, reason: str) -> bool:
        """Take ``entry`` out until :meth:`return_by_caller`; False if already ejected."""
        if entry.ejected:
            return False
        entry.ejected = True
        self._pool.refresh(entry, ramp=False)
        self._emit(InstanceEjected(self._name(), entry.inst.id, reason, math.inf))
        return True

    def return_by_caller(self, entry: Entry, reason: str) -> bool:
        """Put back ``entry`` taken out by :meth:`eject_by_caller`; False if it stays out."""
        if not entry.ejected:
            return False
        if entry.outlier is not None and entry.outlier.ejected:
            return False  # the detector's ejection: it ends on the detector's timer
        entry.ejected = False
        self._pool.refresh(entry, ramp=True)
        self._emit(InstanceReturned(self._name(), entry.inst.id, reason))
        return True
