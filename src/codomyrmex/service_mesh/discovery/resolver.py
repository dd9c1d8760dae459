"""The resolver seam: one balancer's membership kept in step with an external source.

A *source* (DNS, etcd, a Redis registry, or your own) tells a :class:`Resolver`
what the instances are; the resolver turns that into a diff and applies it to its
:class:`~codomyrmex.service_mesh.LoadBalancer` in one step with
:meth:`LoadBalancer.update_members`: in-flight counts are kept, new instances start
their slow start, weights and metadata change in place.

Sources feed the resolver from their own threads, never from a caller's, so a pick
never waits on I/O; it only ever takes the balancer's lock, which an update holds
for the length of the diff.

A failing source never empties the pool: the resolver keeps the last list it
knew to be good, reports how stale it is (:meth:`Resolver.status`), logs one
WARNING per outage and one INFO when the source answers again. Right after an
outage, removals that a full listing implies are held for ``removal_grace``
seconds (owners re-register after a restart of the source); explicit removals
(a deregistration, a deleted key) apply at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._validate import check_bool, check_callable, check_instance, check_number
from ..load_balancer import LoadBalancer, MembershipChange, ServiceInstance

__all__ = ["Resolver", "ResolverStatus", "Source"]

logger = logging.getLogger("codomyrmex.service_mesh.discovery")


@runtime_checkable
class Source(Protocol):
    """Where one service's instances live.

    ``start(resolver)`` begins delivering to the resolver from the source's own
    thread(s) (:meth:`Resolver.replace` for a full listing, :meth:`Resolver.upsert`
    and :meth:`Resolver.remove` for single changes, :meth:`Resolver.failed` when
    the source cannot be reached); ``stop()`` ends that. ``refresh(resolver)``
    does one full listing now, on the caller's thread, and raises if it cannot.
    """

    @property
    def description(self) -> str:
        """What and where, for status output (``"dns SRV _http._tcp.orders @10.0.0.2:53"``)."""
        ...

    def start(self, resolver: Resolver) -> None: ...

    def stop(self) -> None: ...

    def refresh(self, resolver: Resolver) -> None: ...


@dataclass(frozen=True, slots=True)
class ResolverStatus:
    """A resolver's state at one moment (:meth:`Resolver.status`)."""

    source: str
    """The source's description."""
    ok: bool
    """False while the source is failing (the last known good list is in use)."""
    instances: int
    """How many instances the resolver keeps in the balancer."""
    age: float | None
    """Seconds since the source last confirmed the list (None: never)."""
    stale: float
    """Seconds the list has been stale: the outage so far, 0.0 while the source answers."""
    error: str | None
    """The last failure, while failing."""
    updates: int
    """Diffs applied so far."""
    held: int
    """Instances kept only by the grace period after an outage."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types (for ``Mesh.status()``)."""
        return {
            "source": self.source,
            "ok": self.ok,
            "instances": self.instances,
            "age": None if self.age is None else round(self.age, 3),
            "stale": round(self.stale, 3),
            "error": self.error,
            "updates": self.updates,
            "held": self.held,
        }


_Fingerprint = tuple[str, int, float, bool | None, dict[str, Any]]


def _fingerprint(instance: ServiceInstance, health: bool) -> _Fingerprint:
    """What the resolver applied of an instance; equal fingerprints mean nothing to update."""
    healthy = instance.healthy if health else None
    return (instance.host, instance.port, instance.weight, healthy, instance.metadata)


class Resolver:
    """Keeps ``balancer`` in step with ``source``; thread-safe, usable from sync and async code.

    - ``removal_grace``: seconds after an outage during which a full listing
      removes nothing (ids it lacks are *held*); 0 removes at once.
    - ``allow_empty``: whether a full listing with no instances may empty the
      pool. When false (the default), an empty listing counts as a failure of the
      source and the last known good list stays.
    - ``update_health``: whether the source's ``healthy`` flag overrides the
      balancer's (sources that publish health, such as a registry); otherwise
      health belongs to the operator and health checks.
    - ``clock``: seconds from a monotonic origin, for ages and the grace period.

    Only instances this resolver added are ever removed, so instances
    registered on the balancer by hand stay.
    """

    def __init__(
        self,
        source: Source,
        balancer: LoadBalancer,
        *,
        removal_grace: float = 0.0,
        allow_empty: bool = False,
        update_health: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(source, Source):  # a Protocol: no check_instance
            raise TypeError(f"source must be a discovery Source, got {source!r}")
        check_instance("balancer", balancer, LoadBalancer)
        self.removal_grace = check_number("removal_grace", removal_grace, 0.0)
        self.allow_empty = check_bool("allow_empty", allow_empty)
        self.update_health = check_bool("update_health", update_health)
        self.source = source
        self.balancer = balancer
        self._clock = check_callable("clock", clock)
        self._lock = threading.RLock()
        self._known: dict[str, _Fingerprint] = {}  # id -> what was applied
        self._held: dict[str, float] = {}  # id -> when a listing first lacked it
        self._hold_until = -float("inf")
        self._ok = True
        self._outage_since: float | None = None
        self._error: str | None = None
        self._confirmed_at: float | None = None
        self._updates = 0
        self._running = False

    def __repr__(self) -> str:
        return f"Resolver({self.source.description!r}, instances={len(self._known)}, ok={self._ok})"

    # -- life cycle -------------------------------------------------------------

    def start(self) -> Resolver:
        """Start the source delivering (idempotent); returns self."""
        with self._lock:
            if self._running:
                return self
            self._running = True
        self.source.start(self)
        return self

    def stop(self) -> None:
        """Stop the source; the balancer keeps the instances it has."""
        with self._lock:
            if not self._running:
                return
            self._running = False
        self.source.stop()

    close = stop

    @property
    def running(self) -> bool:
        return self._running

    def __enter__(self) -> Resolver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Resolver:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    def refresh(self) -> bool:
        """List the source now, on this thread; False (and the list kept) if it failed."""
        try:
            self.source.refresh(self)
        except Exception as exc:
            self.failed(exc)
            return False
        return self._ok

    async def arefresh(self) -> bool:
        """:meth:`refresh` from async code, on a worker thread (the event loop never blocks)."""
        return await asyncio.to_thread(self.refresh)

    # -- what sources call --------------------------------------------------------

    def replace(self, instances: Iterable[ServiceInstance]) -> MembershipChange:
        """The source's full, current listing: apply the difference to the balancer."""
        listed: dict[str, ServiceInstance] = {}
        for instance in instances:
            if not isinstance(instance, ServiceInstance):
                raise TypeError(f"instances must hold ServiceInstances, got {instance!r}")
            listed[instance.id] = instance
        with self._lock:
            if not listed and self._known and not self.allow_empty:
                self.failed("the source listed no instances")
                return MembershipChange()
            now = self._clock()
            self._confirm(now)
            health = self.update_health
            upsert = [
                inst
                for inst in listed.values()
                if self._known.get(inst.id) != _fingerprint(inst, health)
            ]
            missing = [i for i in self._known if i not in listed]
            held = {i: self._held.get(i, now) for i in missing}
            holding = now < self._hold_until
            grace = self.removal_grace
            gone = [i for i, since in held.items() if not holding or now - since >= grace]
            for instance_id in gone:
                del held[instance_id]
            self._held = held
            return self._apply(upsert, gone)

    def upsert(self, instance: ServiceInstance) -> MembershipChange:
        """One instance added or changed."""
        check_instance("instance", instance, ServiceInstance)
        with self._lock:
            self._held.pop(instance.id, None)
            if self._known.get(instance.id) == _fingerprint(instance, self.update_health):
                return MembershipChange()
            return self._apply([instance], [])

    def remove(self, instance_id: str) -> MembershipChange:
        """One instance gone (deregistered, its key deleted or expired): removed at once."""
        with self._lock:
            self._held.pop(instance_id, None)
            if instance_id not in self._known:
                return MembershipChange()
            return self._apply([], [instance_id])

    def failed(self, error: BaseException | str) -> None:
        """The source cannot be reached (or answered nonsense): keep the last known good list."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        with self._lock:
            self._error = reason
            if not self._ok:
                logger.debug("%s: still failing (%s)", self.source.description, reason)
                return
            self._ok = False
            self._outage_since = self._clock()
            kept = len(self._known)
        logger.warning(
            "%s: discovery source failing (%s); keeping the %d instances last known",
            self.source.description,
            reason,
            kept,
            extra={"discovery_outage": True},
        )

    # -- reading ---------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self._ok

    @property
    def known(self) -> list[str]:
        """The ids this resolver keeps in the balancer."""
        with self._lock:
            return list(self._known)

    def status(self) -> ResolverStatus:
        with self._lock:
            now = self._clock()
            age = None if self._confirmed_at is None else max(now - self._confirmed_at, 0.0)
            stale = 0.0
            if not self._ok and self._outage_since is not None:
                since = self._outage_since
                if self._confirmed_at is not None:
                    since = min(since, self._confirmed_at)
                stale = max(now - since, 0.0)
            return ResolverStatus(
                source=self.source.description,
                ok=self._ok,
                instances=len(self._known),
                age=age,
                stale=stale,
                error=None if self._ok else self._error,
                updates=self._updates,
                held=len(self._held),
            )

    # -- internals (lock held) -----------------------------------------------------

    def _confirm(self, now: float) -> None:
        self._confirmed_at = now
        if self._ok:
            return
        self._ok = True
        since = self._outage_since
        self._outage_since = None
        self._error = None
        self._hold_until = now + self.removal_grace
        logger.info(
            "%s: discovery source answering again after %.1f s",
            self.source.description,
            0.0 if since is None else now - since,
        )

    def _apply(self, upsert: list[ServiceInstance], remove: list[str]) -> MembershipChange:
        if not upsert and not remove:
            return MembershipChange()
        change = self.balancer.update_members(upsert, remove, update_health=self.update_health)
        health = self.update_health
        for instance_id in remove:
            self._known.pop(instance_id, None)
        for instance in upsert:
            fingerprint = _fingerprint(instance, health)
            if fingerprint[4]:  # a copy: the balancer's instance shares the source's dict
                fingerprint = (*fingerprint[:4], dict(fingerprint[4]))
            self._known[instance.id] = fingerprint
        self._updates += 1
        return change
