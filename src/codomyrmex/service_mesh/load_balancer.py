"""Load balancer: the registered instances of one service and the strategy that picks among them.

Every strategy picks in constant or logarithmic time: the healthy instances are
kept in registration order, and each strategy keeps the little extra state it
needs (a round-robin cursor, cumulative weights, buckets of instances by
connection count) up to date when membership changes rather than on each pick.
"""

from __future__ import annotations

import random
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any

from ._validate import check_int, check_number, check_str
from .errors import NoHealthyInstanceError

__all__ = ["ABORTED", "LoadBalancer", "LoadBalancerStrategy", "ServiceInstance"]


class _Aborted(BaseException):
    """Marks a call that ended with neither success nor failure (e.g. cancelled)."""


ABORTED = _Aborted()
"""The ``outcome`` passed to ``LoadBalancer._release`` for a call that was cut short."""


class LoadBalancerStrategy(Enum):
    """How a load balancer chooses among healthy instances."""

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    WEIGHTED = "weighted"
    LEAST_CONNECTIONS = "least_connections"

    @classmethod
    def parse(cls, value: Any, field_name: str = "strategy") -> LoadBalancerStrategy:
        """Accept a member, its value (``"round_robin"``) or its name (``"ROUND_ROBIN"``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if value in (member.value, member.name):
                    return member
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"{field_name} must be one of {choices}; got {value!r}")
        raise TypeError(f"{field_name} must be a LoadBalancerStrategy, got {value!r}")


@dataclass(slots=True)
class ServiceInstance:
    """One reachable copy of a service. ``connections`` is kept current by the library."""

    id: str
    host: str
    port: int
    weight: float = 1
    healthy: bool = True
    connections: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_str("id", self.id)
        check_str("host", self.host)
        check_int("port", self.port, 1)
        if self.port > 65535:
            raise ValueError(f"port must be <= 65535, got {self.port!r}")
        check_number("weight", self.weight, 0.0)
        if not isinstance(self.healthy, bool):
            raise TypeError(f"healthy must be a bool, got {self.healthy!r}")
        check_int("connections", self.connections, 0)
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {self.metadata!r}")

    @property
    def address(self) -> str:
        """``"host:port"``."""
        return f"{self.host}:{self.port}"


class _Entry:
    """The balancer's bookkeeping for one registered instance."""

    __slots__ = ("inst", "lc_count", "lc_pos", "listed", "seq")

    def __init__(self, inst: ServiceInstance, seq: int) -> None:
        self.inst = inst
        self.seq = seq
        self.listed = False  # in the healthy list (and the connection buckets, if kept)
        self.lc_count = 0
        self.lc_pos = 0


def _seq_of(entry: _Entry) -> int:
    return entry.seq


class LoadBalancer:
    """Thread-safe registry of one service's instances with a picking strategy.

    ``get_instance()`` returns a healthy registered instance (the object itself)
    or None. Picks never scan all instances: cost at 10,000 instances stays
    within a small factor of the cost at 10.
    """

    __slots__ = (
        "_buckets",
        "_cum",
        "_entries",
        "_healthy",
        "_lock",
        "_min_count",
        "_observe_clock",
        "_pick",
        "_random",
        "_rng",
        "_rr",
        "_seq",
        "_strategy",
        "_tick",
        "_total_weight",
        "name",
    )

    def __init__(
        self,
        strategy: LoadBalancerStrategy = LoadBalancerStrategy.ROUND_ROBIN,
        *,
        name: str = "",
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        self.name = name
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._healthy: list[_Entry] = []
        self._seq = 0
        self._rr = 0
        self._tick = 0
        self._cum: list[float] | None = None
        self._total_weight = 0.0
        self._buckets: dict[int, list[_Entry]] | None = None
        self._min_count = 0
        self._rng = rng if rng is not None else random.Random()
        # Set to a clock when a strategy or detector wants each call's outcome and latency;
        # callers then pass ``start`` and ``outcome`` to :meth:`_release`.
        self._observe_clock: Callable[[], float] | None = None
        self._random = self._rng.random
        self._strategy = LoadBalancerStrategy.ROUND_ROBIN
        self._pick: Callable[[], _Entry | None] = self._pick_round_robin
        self.strategy = strategy

    def __repr__(self) -> str:
        return (
            f"LoadBalancer(strategy={self._strategy.value}, instances={len(self._entries)}, "
            f"healthy={len(self._healthy)})"
        )

    def __len__(self) -> int:
        return len(self._entries)

    # -- configuration -----------------------------------------------------------

    @property
    def strategy(self) -> LoadBalancerStrategy:
        """The picking strategy; assigning a new one takes effect for the next pick."""
        return self._strategy

    @strategy.setter
    def strategy(self, value: LoadBalancerStrategy) -> None:
        strategy = LoadBalancerStrategy.parse(value)
        pickers = {
            LoadBalancerStrategy.ROUND_ROBIN: self._pick_round_robin,
            LoadBalancerStrategy.RANDOM: self._pick_random,
            LoadBalancerStrategy.WEIGHTED: self._pick_weighted,
            LoadBalancerStrategy.LEAST_CONNECTIONS: self._pick_least_connections,
        }
        with self._lock:
            self._strategy = strategy
            self._pick = pickers[strategy]
            self._buckets = None
            if strategy is LoadBalancerStrategy.LEAST_CONNECTIONS:
                self._buckets = {}
                for entry in self._healthy:
                    self._bucket_add(entry, entry.inst.connections)

    # -- membership -------------------------------------------------------------

    def register(self, instance: ServiceInstance) -> None:
        """Add ``instance``; an id already present is updated in place (connections kept)."""
        if not isinstance(instance, ServiceInstance):
            raise TypeError(f"instance must be a ServiceInstance, got {instance!r}")
        with self._lock:
            entry = self._entries.get(instance.id)
            if entry is None:
                entry = _Entry(instance, self._seq)
                self._seq += 1
                self._entries[instance.id] = entry
                if instance.healthy:
                    self._list(entry)
                return
            current = entry.inst
            if current is not instance:
                current.host = instance.host
                current.port = instance.port
                current.weight = instance.weight
                current.metadata = instance.metadata
            self._cum = None
            self._set_health(entry, instance.healthy)

    def deregister(self, instance_id: str) -> bool:
        """Remove an instance; True if it was registered. In-flight calls finish normally."""
        with self._lock:
            entry = self._entries.pop(instance_id, None)
            if entry is None:
                return False
            if entry.listed:
                self._unlist(entry)
            return True

    def mark_healthy(self, instance_id: str, healthy: bool) -> bool:
        """Set an instance's health; True if the id is registered, False (no-op) otherwise."""
        if not isinstance(healthy, bool):
            raise TypeError(f"healthy must be a bool, got {healthy!r}")
        with self._lock:
            entry = self._entries.get(instance_id)
            if entry is None:
                return False
            self._set_health(entry, healthy)
            return True

    def get(self, instance_id: str) -> ServiceInstance | None:
        """The registered instance with this id, or None."""
        entry = self._entries.get(instance_id)
        return None if entry is None else entry.inst

    @property
    def instances(self) -> list[ServiceInstance]:
        """All registered instances, in registration order."""
        with self._lock:
            return [entry.inst for entry in self._entries.values()]

    @property
    def healthy_instances(self) -> list[ServiceInstance]:
        """The healthy instances, in registration order."""
        with self._lock:
            return [entry.inst for entry in self._healthy]

    # -- picking ----------------------------------------------------------------

    def get_instance(self) -> ServiceInstance | None:
        """Pick a healthy instance by the strategy, or None when there is none."""
        lock = self._lock
        lock.acquire()
        try:
            entry = self._pick()
        finally:
            lock.release()
        return None if entry is None else entry.inst

    def connection(self) -> Connection:
        """Pick an instance and count a connection on it until the block ends.

        ``with lb.connection() as instance:`` (or ``async with``) raises
        :class:`NoHealthyInstanceError` when no instance is healthy.
        """
        return Connection(self)

    def _acquire(self, tried: set[str] | None = None) -> ServiceInstance | None:
        """Pick (preferring ids not in ``tried``) and count one connection, atomically."""
        lock = self._lock
        lock.acquire()  # explicit acquire/release: measurably cheaper than `with` here
        try:
            entry = self._pick()
            if entry is None:
                return None
            if tried and entry.inst.id in tried:
                entry = self._pick_untried(entry, tried)
            inst = entry.inst
            inst.connections += 1
            if self._buckets is not None:
                self._bucket_shift(entry, 1)
            return inst
        finally:
            lock.release()

    def _release(
        self, inst: ServiceInstance, start: float = 0.0, outcome: BaseException | None = None
    ) -> None:
        """End one connection counted by :meth:`_acquire`.

        ``outcome`` is None for a success, the exception for a failure, or
        :data:`ABORTED` for a call that ended with neither; ``start`` is the
        ``_observe_clock()`` reading when the call began (when observing).
        """
        lock = self._lock
        lock.acquire()
        try:
            if inst.connections > 0:
                inst.connections -= 1
            if self._buckets is not None:
                entry = self._entries.get(inst.id)
                if entry is not None and entry.inst is inst and entry.listed:
                    self._bucket_shift(entry, -1)
        finally:
            lock.release()

    def _pick_round_robin(self) -> _Entry | None:
        healthy = self._healthy
        if not healthy:
            return None
        i = self._rr
        if i >= len(healthy):
            i = 0
        self._rr = i + 1
        return healthy[i]

    def _pick_random(self) -> _Entry | None:
        healthy = self._healthy
        if not healthy:
            return None
        return healthy[int(self._random() * len(healthy))]

    def _pick_weighted(self) -> _Entry | None:
        cum = self._cum
        if cum is None:
            cum = self._build_weights()
        total = self._total_weight
        if total <= 0.0:
            return None
        i = bisect_right(cum, self._random() * total)
        if i >= len(cum):  # rounding put the draw on the total: take the last weighted one
            i = bisect_left(cum, total)
        return self._healthy[i]

    def _pick_least_connections(self) -> _Entry | None:
        buckets = self._buckets
        if not buckets:
            return None
        bucket = buckets[self._min_count]
        self._tick += 1
        return bucket[self._tick % len(bucket)]

    def _pick_untried(self, picked: _Entry, tried: set[str]) -> _Entry:
        """A retry's pick: an instance not tried yet in this call, if a usable one exists."""
        for _ in range(3):
            entry = self._pick()
            if entry is not None and entry.inst.id not in tried:
                return entry
        weighted = self._strategy is LoadBalancerStrategy.WEIGHTED
        for entry in self._healthy:
            if entry.inst.id not in tried and not (weighted and entry.inst.weight <= 0):
                return entry
        return picked

    # -- bookkeeping (lock held) ------------------------------------------------

    def _set_health(self, entry: _Entry, healthy: bool) -> None:
        entry.inst.healthy = healthy
        if healthy and not entry.listed:
            self._list(entry)
        elif not healthy and entry.listed:
            self._unlist(entry)

    def _list(self, entry: _Entry) -> None:
        healthy = self._healthy
        pos = bisect_left(healthy, entry.seq, key=_seq_of)
        healthy.insert(pos, entry)
        if pos < self._rr:
            self._rr += 1
        entry.listed = True
        self._cum = None
        if self._buckets is not None:
            self._bucket_add(entry, entry.inst.connections)

    def _unlist(self, entry: _Entry) -> None:
        healthy = self._healthy
        pos = bisect_left(healthy, entry.seq, key=_seq_of)
        del healthy[pos]
        if pos < self._rr:
            self._rr -= 1
        entry.listed = False
        self._cum = None
        if self._buckets is not None:
            self._bucket_remove(entry)

    def _build_weights(self) -> list[float]:
        cum: list[float] = []
        total = 0.0
        for entry in self._healthy:
            total += entry.inst.weight
            cum.append(total)
        self._cum = cum
        self._total_weight = total
        return cum

    def _bucket_add(self, entry: _Entry, count: int) -> None:
        buckets = self._buckets
        assert buckets is not None
        if not buckets or count < self._min_count:
            self._min_count = count
        bucket = buckets.get(count)
        if bucket is None:
            bucket = buckets[count] = []
        entry.lc_count = count
        entry.lc_pos = len(bucket)
        bucket.append(entry)

    def _bucket_remove(self, entry: _Entry) -> None:
        buckets = self._buckets
        assert buckets is not None
        count = entry.lc_count
        bucket = buckets[count]
        last = bucket.pop()
        if last is not entry:
            bucket[entry.lc_pos] = last
            last.lc_pos = entry.lc_pos
        if not bucket:
            del buckets[count]
            if count == self._min_count and buckets:
                self._min_count = min(buckets)

    def _bucket_shift(self, entry: _Entry, delta: int) -> None:
        """Move an entry to the bucket of ``count + delta`` (delta is +1 or -1) in O(1)."""
        buckets = self._buckets
        assert buckets is not None
        old = entry.lc_count
        new = old + delta
        if new < 0:
            return
        bucket = buckets[old]
        last = bucket.pop()
        if last is not entry:
            bucket[entry.lc_pos] = last
            last.lc_pos = entry.lc_pos
        emptied = not bucket
        if emptied:
            del buckets[old]
        target = buckets.get(new)
        if target is None:
            target = buckets[new] = []
        entry.lc_count = new
        entry.lc_pos = len(target)
        target.append(entry)
        if new < self._min_count or (emptied and old == self._min_count):
            self._min_count = new


class Connection:
    """One counted connection, as a context manager; see :meth:`LoadBalancer.connection`."""

    __slots__ = ("_balancer", "_instance", "_start")

    def __init__(self, balancer: LoadBalancer) -> None:
        self._balancer = balancer
        self._instance: ServiceInstance | None = None
        self._start = 0.0

    def __enter__(self) -> ServiceInstance:
        balancer = self._balancer
        instance = balancer._acquire()
        if instance is None:
            raise NoHealthyInstanceError(balancer.name)
        self._instance = instance
        timer = balancer._observe_clock
        self._start = 0.0 if timer is None else timer()
        return instance

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._instance is not None:
            if exc is None or isinstance(exc, Exception):
                self._balancer._release(self._instance, self._start, exc)
            else:
                self._balancer._release(self._instance, self._start, ABORTED)
            self._instance = None

    async def __aenter__(self) -> ServiceInstance:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
