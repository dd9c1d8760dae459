"""The load balancer: one service's registered instances and the strategy that picks among them.

Every strategy picks in constant or logarithmic time. The pickable instances
(the *pool*: healthy and not ejected by outlier detection, or all of them in
panic mode; see :mod:`.pool`) are kept in registration order, and each
strategy (:mod:`.strategies`) keeps the little extra state it needs up to date
when the pool changes rather than on each pick.

Calls report their outcome back (:meth:`LoadBalancer.release`): PEAK_EWMA
learns latencies from it and outlier detection (:mod:`.ejection`) ejects
instances that keep failing. Only then is a clock read per call; the default
path reads none.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable

from .._validate import check_callable, check_int
from ..errors import ServiceMeshError
from ..events import Event, EventListener, InstancePicked, Publisher, publish
from ._checks import check_percent, check_positive
from .buckets import LoadBuckets
from .connection import ABORTED, Connection
from .ejection import Ejections
from .hashing import MAX_RING_POINTS, is_prime
from .instance import ServiceInstance
from .membership import Membership
from .outlier import DEFAULT_OUTLIER_DETECTION, OutlierDetectionConfig, OutlierDetector
from .pool import Entry, Pool
from .routing import ROUTING_KEY, check_key
from .slow_start import SlowStart, SlowStartConfig
from .strategies import LoadBalancerStrategy, Strategy, StrategySettings, create
from .tables import Tables
from .timer import TIMER

__all__ = ["LoadBalancer"]

_INF = math.inf


def _check_settings(slow_start: object, outlier_detection: object, panic_threshold: float) -> float:
    """Validate the settings ``reconfigure`` can change; returns the panic threshold."""
    if slow_start is not None and not isinstance(slow_start, SlowStartConfig):
        raise TypeError(f"slow_start must be a SlowStartConfig, got {slow_start!r}")
    if outlier_detection is not None and not isinstance(outlier_detection, OutlierDetectionConfig):
        raise TypeError(
            f"outlier_detection must be an OutlierDetectionConfig, got {outlier_detection!r}"
        )
    return check_percent("panic_threshold", panic_threshold)


def _check_tables(
    ring_replicas: int, min_ring_size: int, max_ring_size: int, maglev_table_size: int
) -> None:
    check_int("ring_replicas", ring_replicas, 1)
    check_int("min_ring_size", min_ring_size, 1)
    check_int("max_ring_size", max_ring_size, 1)
    if max_ring_size < min_ring_size:
        raise ValueError(
            f"max_ring_size must be >= min_ring_size ({min_ring_size}), got {max_ring_size!r}"
        )
    check_int("maglev_table_size", maglev_table_size, 3)
    if not is_prime(maglev_table_size):
        raise ValueError(f"maglev_table_size must be a prime, got {maglev_table_size!r}")


class LoadBalancer(Membership, Publisher):
    """Thread-safe registry of one service's instances with a picking strategy.

    ``get_instance()`` returns a healthy registered instance (the object itself)
    or None. Picks never scan all instances: cost at 10,000 instances stays
    within a small factor of the cost at 10.

    Keyword options:

    - ``clock``: seconds from a monotonic origin (for latencies, ejections, slow start).
    - ``slow_start``: a :class:`SlowStartConfig` ramping new or recovered instances up.
    - ``outlier_detection``: an :class:`OutlierDetectionConfig`; instances that keep
      failing are ejected (not picked) for a while, apart from ``mark_healthy``. On by
      default (:data:`~codomyrmex.service_mesh.outlier.DEFAULT_OUTLIER_DETECTION`);
      None turns it off.
    - ``panic_threshold``: percent; when fewer of the registered instances than this
      are available (healthy and not ejected), pick among all of them, as Envoy does.
    - ``ewma_decay``: seconds over which a PEAK_EWMA latency estimate decays.
    - ``ring_replicas``: RING_HASH points of the lightest instance (the others get
      points in proportion to their weight relative to it).
    - ``min_ring_size`` / ``max_ring_size``: RING_HASH rings with fewer or more points in
      all are scaled up or down (Envoy's bounds; only the weights' ratios matter).
    - ``maglev_table_size``: MAGLEV lookup table size (a prime, ideally > 100 x instances).
    - ``timer``: ``timer(delay, callback)`` runs ``callback`` in ``delay`` seconds; outlier
      detection puts each ejection's end on it, so instances return while no call comes
      (default: one shared background thread). It is called under the balancer's lock
      and must only schedule, never run the callback itself.

    The WEIGHTED, RING_HASH and MAGLEV tables cover the registered instances of
    positive weight: health flips and ejections never rebuild them (a pick passes
    over instances that cannot be picked). A change of membership or weight
    rebuilds the table outside the lock, in the picking thread, or in a
    background thread when the pick runs on an event loop; see
    :meth:`build_tables`.

    Events (:meth:`subscribe`): :class:`InstancePicked` for each pick,
    :class:`InstanceHealthChanged`, and :class:`InstanceEjected` / :class:`InstanceReturned`
    (with their reason) from outlier detection; listeners run outside the lock.
    """

    __slots__ = (
        "_attention",
        "_buckets",
        "_clock",
        "_ejections",
        "_ewma_decay",
        "_impl",
        "_lock",
        "_observe",
        "_observe_since",
        "_outbox",
        "_pick",
        "_pool",
        "_rng",
        "_settings",
        "_slow_start",
        "_strategies",
        "_strategy",
        "_subscribers",
        "_success_resets",
        "_tables",
        "_tracking",
        "name",
        "observe_clock",
    )

    observe_clock: Callable[[], float] | None
    """Internal API, for the proxy and its stages (read-only): the clock to read a call's
    start with when the balancer observes latency (PEAK_EWMA), else None. A plain
    attribute, not a property: it is read on every call."""

    def __init__(
        self,
        strategy: LoadBalancerStrategy = LoadBalancerStrategy.ROUND_ROBIN,
        *,
        name: str = "",
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        slow_start: SlowStartConfig | None = None,
        outlier_detection: OutlierDetectionConfig | None = DEFAULT_OUTLIER_DETECTION,
        panic_threshold: float = 0.0,
        ewma_decay: float = 10.0,
        ring_replicas: int = 100,
        maglev_table_size: int = 65537,
        min_ring_size: int = 256,
        max_ring_size: int = MAX_RING_POINTS,
        timer: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        check_callable("clock", clock)
        panic = _check_settings(slow_start, outlier_detection, panic_threshold)
        decay = check_positive("ewma_decay", ewma_decay)
        if timer is not None:
            check_callable("timer", timer)
        _check_tables(ring_replicas, min_ring_size, max_ring_size, maglev_table_size)
        self.name = name
        self._lock = threading.Lock()
        self._pool = Pool(panic)
        self._pool.ramp_clock = None if slow_start is None else clock
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._slow_start = slow_start
        self._ewma_decay = decay
        self._settings = StrategySettings(
            decay, ring_replicas, min_ring_size, max_ring_size, maglev_table_size
        )
        self._subscribers: tuple[EventListener, ...] = ()
        self._outbox: list[Event] = []
        self._ejections = Ejections(
            self._pool,
            outlier_detection,
            clock=clock,
            timer=TIMER if timer is None else timer,
            name=self._name,
            emit=self._emit,
            on_due=self._timed_return,
            changed=self._recheck,
        )
        self._tracking = False  # whether release has more to do than count down
        # Whether a success only needs to reset its instance's failures in a row (outlier
        # detection on consecutive failures alone, a strategy that ignores outcomes).
        self._success_resets = False
        # Set to the clock when a strategy or the detector wants each call's outcome and
        # latency; callers then pass ``start`` and ``outcome`` to :meth:`release`.
        self.observe_clock = None
        self._observe_since = 0.0
        self._observe: Callable[[Entry, float, BaseException | None], None] | None = None
        self._strategies: dict[LoadBalancerStrategy, Strategy] = {}
        # Whether a pick has more to do than pick: a table to build or an ejection to end.
        self._attention = False
        self._tables = Tables(self._lock, self._pool, self._recheck)
        self.strategy = strategy  # sets _strategy, _impl, _pick and _buckets

    def __repr__(self) -> str:
        return (
            f"LoadBalancer(strategy={self._strategy.value}, instances={len(self._pool.members)}, "
            f"healthy={self._pool.available})"
        )

    def __len__(self) -> int:
        return len(self._pool.members)

    def _name(self) -> str:
        return self.name

    def _recheck(self) -> None:
        """The tables or the ejections changed: does a pick need to look at them?"""
        self._attention = self._tables.stale or self._ejections.next_due != _INF

    # -- configuration -----------------------------------------------------------

    @property
    def strategy(self) -> LoadBalancerStrategy:
        """The picking strategy; assigning a new one takes effect for the next pick."""
        return self._strategy

    @strategy.setter
    def strategy(self, value: LoadBalancerStrategy) -> None:
        strategy = LoadBalancerStrategy.parse(value)
        with self._lock:
            impl = self._strategy_of(strategy)
            self._strategy: LoadBalancerStrategy = strategy
            self._impl: Strategy = impl
            pick = impl.pick
            if self._slow_start is not None and impl.slow_start_by_rejection:
                pick = SlowStart(self._slow_start, pick, self._clock, impl.random).pick
            self._pick: Callable[[], Entry | None] = pick
            observing = impl.observes or self._ejections.detector is not None
            if impl.times_calls and self.observe_clock is None:
                # Calls already in flight began without a clock reading: ignore their outcome.
                self._observe_since = self._clock()
            # Only latency-aware picks need each call's start time.
            self.observe_clock = self._clock if impl.times_calls else None
            self._observe = self._observe_outcome if observing else None
            self._tables.use(impl)
            self._buckets: LoadBuckets | None = impl.load_buckets()
            self._pool.use_buckets(self._buckets)
            self._update_tracking()

    def _strategy_of(self, kind: LoadBalancerStrategy) -> Strategy:
        """This balancer's strategy of ``kind`` (kept once made, with its tables)."""
        impl = self._strategies.get(kind)
        if impl is None:
            impl = self._strategies[kind] = create(
                kind, self._pool, self._rng, self._tables, self._clock, self._settings
            )
        return impl

    def _update_tracking(self) -> None:
        self._tracking = (
            self._buckets is not None or self._observe is not None or bool(self._subscribers)
        )
        detector = self._ejections.detector
        self._success_resets = (
            detector is not None
            and detector.config.failure_rate_threshold is None
            and detector.config.success_rate_stdev_factor is None
            and not self._impl.observes
        )

    @property
    def slow_start(self) -> SlowStartConfig | None:
        """The slow-start ramp, or None."""
        return self._slow_start

    @property
    def outlier_detector(self) -> OutlierDetector | None:
        """The outlier detector (its ``config`` and ``stats()``), or None when not configured."""
        return self._ejections.detector

    @property
    def panic_threshold(self) -> float:
        """Percent of available instances below which every registered instance is picked."""
        return self._pool.panic_threshold

    @property
    def panicking(self) -> bool:
        """Whether the balancer is in panic mode (picking among all registered instances)."""
        return self._pool.panic

    def reconfigure(
        self,
        *,
        strategy: LoadBalancerStrategy | None = None,
        outlier_detection: OutlierDetectionConfig | None,
        slow_start: SlowStartConfig | None,
        panic_threshold: float,
    ) -> None:
        """Apply new settings, keeping instances, connection counts and ejections.

        A new outlier config applies to the running detector (ejected instances stay
        out until their time is up); None switches detection off and returns every
        ejected instance. ``strategy`` None keeps the current one.
        """
        panic = _check_settings(slow_start, outlier_detection, panic_threshold)
        with self._lock:
            pool = self._pool
            pool.panic_threshold = panic
            self._slow_start = slow_start
            pool.ramp_clock = None if slow_start is None else self._clock
            if slow_start is None:
                for entry in pool.members.values():
                    entry.ramp_start = None
            self._ejections.reconfigure(outlier_detection)
            pool.sync(None)
            current = self._strategy
        self._flush()
        self.strategy = current if strategy is None else strategy  # rewires the pick path

    def latency_estimate(self, instance_id: str) -> float | None:
        """PEAK_EWMA's current latency estimate (seconds) of an instance, or None if unmeasured."""
        with self._lock:
            entry = self._pool.members.get(instance_id)
            if entry is None or not entry.measured:
                return None
            elapsed = max(self._clock() - entry.ewma_at, 0.0)
            return entry.ewma * math.exp(-elapsed / self._ewma_decay)

    # -- picking ----------------------------------------------------------------

    def get_instance(self, key: str | bytes | None = None) -> ServiceInstance | None:
        """Pick an available instance by the strategy, or None when there is none.

        ``key`` routes RING_HASH and MAGLEV picks (the same key, the same
        instance); other strategies ignore it. See also :func:`routing_key`.
        """
        if key is not None:
            token = ROUTING_KEY.set(check_key(key))
            try:
                return self.get_instance()
            finally:
                ROUTING_KEY.reset(token)
        if self._attention:
            self._settle()
        lock = self._lock
        lock.acquire()
        try:
            if self._attention:
                self._return_if_due()
            entry = self._pick()
        finally:
            lock.release()
        inst = None if entry is None else entry.inst
        if self._subscribers:
            self._flush(inst)
        return inst

    def _settle(self) -> None:
        """Before a pick, outside the lock: bring a stale table up to date."""
        tables = self._tables
        if tables.stale:
            tables.settle()

    def _return_if_due(self) -> None:
        """Before a pick, under the lock: end the ejections whose time is up."""
        ejections = self._ejections
        if ejections.next_due != _INF:
            ejections.return_if_due()

    def connection(self) -> Connection:
        """Pick an instance and count a connection on it until the block ends.

        ``with lb.connection() as instance:`` (or ``async with``) raises
        :class:`NoHealthyInstanceError` when no instance is healthy.
        """
        return Connection(self)

    def acquire(self, tried: set[str] | None = None) -> ServiceInstance | None:
        """Pick (preferring ids not in ``tried``) and count one connection, atomically.

        Internal API, for the proxy and its stages: every instance acquired is
        given back with :meth:`release`.
        """
        if self._attention:  # one test when no table is stale and nothing is ejected
            self._settle()
        lock = self._lock
        lock.acquire()  # explicit acquire/release: measurably cheaper than `with` here
        try:
            if self._attention:
                self._return_if_due()
            entry = self._pick()
            if entry is None:
                return None
            if tried and entry.inst.id in tried:
                entry = self._impl.pick_untried(entry, tried, self._pick)
            inst = entry.inst
            inst.connections += 1
            if self._buckets is not None:
                self._buckets.shift(entry, 1)
            if not self._subscribers:
                return inst
        finally:
            lock.release()
        self._flush(inst)
        return inst

    def release(
        self, inst: ServiceInstance, start: float = 0.0, outcome: BaseException | None = None
    ) -> None:
        """End one connection counted by :meth:`acquire`. Internal API, for the proxy.

        ``outcome`` is None for a success, the exception for a failure, or
        :data:`ABORTED` for a call that ended with neither; ``start`` is the
        ``observe_clock()`` reading when the call began (when observing).
        """
        lock = self._lock
        lock.acquire()
        try:
            if inst.connections > 0:
                inst.connections -= 1
            if not self._tracking:  # no buckets, no observer, no subscriber: done
                return
            if outcome is None and self._success_resets:
                # The success path of outlier detection on failures in a row (no buckets,
                # no latency): no clock, no detector; only an instance that has been
                # failing has a streak to end.
                failing = self._ejections.failing
                if failing:
                    host = failing.pop(inst.id, None)
                    if host is not None and not host.ejected:
                        host.consecutive = 0
            else:
                entry = self._pool.members.get(inst.id)
                if entry is not None and entry.inst is inst:
                    if self._buckets is not None and entry.listed:
                        self._buckets.shift(entry, -1)
                    observe = self._observe
                    if observe is not None:
                        observe(entry, start, outcome)
        finally:
            lock.release()
        if self._subscribers:
            self._flush()

    def _observe_outcome(self, entry: Entry, start: float, outcome: BaseException | None) -> None:
        """Feed one finished call to the strategy and to outlier detection (lock held)."""
        now = self._clock()
        impl = self._impl
        if impl.times_calls and start < self._observe_since:
            return  # began before latencies were measured: no start time to measure from
        if outcome is not None and isinstance(outcome, ServiceMeshError):
            return  # refused by the mesh itself (an open breaker): nothing about the instance
        aborted = outcome is ABORTED
        if impl.observes:
            impl.observe(entry, start, now, outcome, aborted)
        if not aborted:
            self._ejections.record(entry, outcome, now)

    def _timed_return(self) -> None:
        """The ejection timer's callback: return the instances due, publish it."""
        with self._lock:
            self._ejections.return_due()
        self._flush()

    # -- the tables over the members --------------------------------------------------

    def build_tables(self) -> None:
        """Bring the strategy's table (WEIGHTED, RING_HASH, MAGLEV) up to date now.

        The table is built in this thread from a snapshot of the members, outside
        the lock (picks go on meanwhile, with the previous table), then swapped
        in. Picks do this on their own after a change of membership; call it to
        pay the cost ahead, e.g. ``await loop.run_in_executor(None, lb.build_tables)``
        after registering many instances from async code. A no-op when the table
        is current or another thread is building it.
        """
        self._tables.build()

    # -- events -----------------------------------------------------------------

    def _subscribers_changed(self) -> None:
        if not self._subscribers:
            self._outbox = []
        self._update_tracking()

    def _emit(self, event: Event) -> None:
        """Queue an event for delivery once the lock is released (lock held)."""
        if self._subscribers:
            self._outbox.append(event)

    def _flush(self, picked: ServiceInstance | None = None) -> None:
        """Deliver queued events (and a pick) to the subscribers, outside the lock."""
        subscribers = self._subscribers
        if not subscribers:
            return
        events: list[Event] = []
        if self._outbox:
            with self._lock:
                events, self._outbox = self._outbox, []
        if picked is not None:
            events.append(InstancePicked(self.name, picked.id))
        for event in events:
            publish(subscribers, event)
