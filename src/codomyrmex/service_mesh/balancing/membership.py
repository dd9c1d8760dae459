"""The membership side of a load balancer: registering, updating, removing and ejecting instances.

A mixin of :class:`~.balancer.LoadBalancer` (as :class:`~..events.Publisher` is):
the balancer's own state, its lock and its pool, and the public methods that
change or read who is registered, who is healthy and who is ejected. Every
change is made under the lock and its events are delivered after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from operator import attrgetter

from .._validate import check_str
from ..events import Event, InstanceHealthChanged
from .ejection import Ejections
from .instance import MembershipChange, ServiceInstance
from .pool import Entry, Pool
from .tables import Tables

__all__ = ["Membership"]


class Membership:
    """Mixin giving a :class:`~.balancer.LoadBalancer` its membership methods."""

    __slots__ = ()  # the balancer's own __slots__ holds the state below

    name: str
    _lock: threading.Lock
    _pool: Pool
    _tables: Tables
    _ejections: Ejections

    def _emit(self, event: Event) -> None:
        raise NotImplementedError

    def _flush(self, picked: ServiceInstance | None = None) -> None:
        raise NotImplementedError

    # -- membership -------------------------------------------------------------

    def register(self, instance: ServiceInstance) -> None:
        """Add ``instance``; an id already present is updated in place (connections kept)."""
        if not isinstance(instance, ServiceInstance):
            raise TypeError(f"instance must be a ServiceInstance, got {instance!r}")
        with self._lock:
            entry = self._pool.members.get(instance.id)
            if entry is None:
                entry = self._add_entry(instance)
                self._tables.invalidate()
                self._pool.refresh(entry, ramp=True)
            else:
                entry.inst.update_from(instance)
                self._tables.invalidate()  # the weight may have changed (even on the same object)
                self._set_health(entry, instance.healthy)
        self._flush()

    def deregister(self, instance_id: str) -> bool:
        """Remove an instance; True if it was registered. In-flight calls finish normally."""
        with self._lock:
            if not self._remove_entry(instance_id):
                return False
            self._tables.invalidate()
            self._pool.sync(None)
            return True

    def _add_entry(self, instance: ServiceInstance) -> Entry:
        """Under the lock: a new entry for ``instance`` (the caller refreshes it)."""
        entry = self._pool.add(instance)
        self._ejections.track(entry)
        return entry

    def _remove_entry(self, instance_id: str) -> bool:
        """Under the lock: forget ``instance_id``; False if it was not registered."""
        entry = self._pool.remove(instance_id)
        if entry is None:
            return False
        self._ejections.forget(entry)
        return True

    def update_members(
        self,
        upsert: Iterable[ServiceInstance] = (),
        remove: Iterable[str] = (),
        *,
        update_health: bool = False,
    ) -> MembershipChange:
        """Apply a membership diff in one step, as service discovery does (one lock hold).

        Ids in ``remove`` are deregistered (in-flight calls finish normally). Each
        instance in ``upsert`` is registered when new (starting its slow start) or
        else updated in place: host, port, weight and metadata change on the
        registered object, whose ``connections`` count is kept. Its health is left
        to the operator and health checks unless ``update_health`` is true.
        """
        instances = list(upsert)
        for instance in instances:
            if not isinstance(instance, ServiceInstance):
                raise TypeError(f"upsert must hold ServiceInstances, got {instance!r}")
        removals = [check_str("remove", instance_id) for instance_id in remove]
        added: list[str] = []
        updated: list[str] = []
        removed: list[str] = []
        with self._lock:
            for instance_id in removals:
                if self._remove_entry(instance_id):
                    removed.append(instance_id)
            for instance in instances:
                entry = self._pool.members.get(instance.id)
                if entry is None:
                    self._pool.refresh(self._add_entry(instance), ramp=True)
                    added.append(instance.id)
                    continue
                entry.inst.update_from(instance)
                if update_health:
                    self._set_health(entry, instance.healthy)
                updated.append(instance.id)
            if added or updated or removed:
                self._tables.invalidate()  # membership or weights changed: tables rebuild
            self._pool.sync(None)
        self._flush()
        return MembershipChange(tuple(added), tuple(updated), tuple(removed))

    def mark_healthy(self, instance_id: str, healthy: bool) -> bool:
        """Set an instance's health; True if the id is registered, False (no-op) otherwise.

        Health is the operator's (or a health checker's) word and is separate
        from outlier ejection: an instance is picked when healthy and not ejected.
        """
        if not isinstance(healthy, bool):
            raise TypeError(f"healthy must be a bool, got {healthy!r}")
        with self._lock:
            entry = self._pool.members.get(instance_id)
            if entry is None:
                return False
            self._set_health(entry, healthy)
        self._flush()
        return True

    def _set_health(self, entry: Entry, healthy: bool) -> None:
        changed = entry.inst.healthy != healthy
        entry.inst.healthy = healthy
        self._pool.refresh(entry, ramp=True)
        if changed:
            self._emit(InstanceHealthChanged(self.name, entry.inst.id, healthy))

    def get(self, instance_id: str) -> ServiceInstance | None:
        """The registered instance with this id, or None."""
        entry = self._pool.members.get(instance_id)
        return None if entry is None else entry.inst

    @property
    def instances(self) -> list[ServiceInstance]:
        """All registered instances, in registration order."""
        with self._lock:
            return [entry.inst for entry in self._pool.members.values()]

    @property
    def healthy_instances(self) -> list[ServiceInstance]:
        """The available instances (healthy and not ejected), in registration order."""
        return self._listing(attrgetter("available"))

    @property
    def ejected_instances(self) -> list[ServiceInstance]:
        """The instances outlier detection has ejected right now, in registration order."""
        return self._listing(attrgetter("ejected"))

    def _listing(self, flag: Callable[[Entry], bool]) -> list[ServiceInstance]:
        """The instances whose entry has ``flag``, once due ejections have ended."""
        with self._lock:
            self._ejections.return_due()
            found = [entry.inst for entry in self._pool.members.values() if flag(entry)]
        self._flush()
        return found

    def is_ejected(self, instance_id: str) -> bool:
        """Whether outlier detection has ejected the instance with this id right now."""
        with self._lock:
            self._ejections.return_due()
            entry = self._pool.members.get(instance_id)
            ejected = entry is not None and entry.ejected
        self._flush()
        return ejected

    def load(self, instance_id: str) -> int | None:
        """The load LEAST_CONNECTIONS and POWER_OF_TWO see on an instance, or None if unknown.

        Its calls in flight plus a penalty of one per recent failure in a row (at most
        five): an instance that fails fast is never the least loaded for that reason.
        """
        with self._lock:
            entry = self._pool.members.get(instance_id)
            return None if entry is None else entry.inst.connections + entry.load_penalty

    def has_untried(self, tried: set[str]) -> bool:
        """Whether a pickable instance exists whose id is not in ``tried`` (O(len(tried)))."""
        with self._lock:
            return self._pool.has_untried(tried)

    # -- ejection by a caller (an instance's own circuit breaker) ---------------------

    def eject(self, instance_id: str, reason: str = "instance_breaker") -> bool:
        """Take an instance out of the pool until :meth:`return_instance`; True if it was taken.

        For a caller that judges instances itself (the client integrations' per-instance
        breakers). Unlike :meth:`mark_healthy`, which is the operator's and the health
        checker's word, this never touches ``healthy``: an instance comes back as healthy
        as it is then. False (nothing changes) for an unknown id or an instance already
        ejected, by outlier detection or an earlier call. Publishes :class:`InstanceEjected`
        with ``reason`` and an infinite duration. Panic mode (``panic_threshold``) applies.
        """
        return self._by_caller(instance_id, reason, eject=True)

    def return_instance(self, instance_id: str, reason: str = "instance_breaker") -> bool:
        """Put back an instance taken out by :meth:`eject`; True if it returned.

        An instance that outlier detection has ejected stays out until its ejection ends
        (False). Publishes :class:`InstanceReturned` with ``reason``.
        """
        return self._by_caller(instance_id, reason, eject=False)

    def _by_caller(self, instance_id: str, reason: str, *, eject: bool) -> bool:
        check_str("reason", reason)
        with self._lock:
            entry = self._pool.members.get(instance_id)
            if entry is None:
                return False
            ejections = self._ejections
            done = (ejections.eject_by_caller if eject else ejections.return_by_caller)(
                entry, reason
            )
        self._flush()
        return done
