"""Load balancer: the registered instances of one service and the strategy that picks among them.

Every strategy picks in constant or logarithmic time. The pickable instances
(the *pool*: healthy and not ejected by outlier detection, or all of them in
panic mode) are kept in registration order, and each strategy keeps the little
extra state it needs (a round-robin cursor, an alias table of weights, buckets
of instances by connection count, a hash ring or Maglev table) up to date when
the pool changes rather than on each pick.

Calls report their outcome back (:meth:`LoadBalancer._release`): PEAK_EWMA
learns latencies from it and outlier detection ejects instances that keep
failing. Only then is a clock read per call; the default path reads none.
"""

from __future__ import annotations

import math
import random
import threading
import time
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from operator import attrgetter
from typing import Any

from . import _strategies, _timers
from ._hashing import (
    MAX_RING_POINTS,
    OWNER_MASK,
    POSITION_BITS,
    build_maglev,
    build_ring,
    is_prime,
    key_hash,
    maglev_params,
    ring_lookup,
    ring_points,
)
from ._strategies import alias_table, on_event_loop, ring_counts
from ._validate import check_callable, check_int, check_number, check_str
from .errors import NoHealthyInstanceError, ServiceMeshError
from .events import (
    Event,
    EventListener,
    InstanceEjected,
    InstanceHealthChanged,
    InstancePicked,
    InstanceReturned,
    Publisher,
    publish,
)
from .outlier import (
    DEFAULT_OUTLIER_DETECTION,
    EJECTION_TIME_ELAPSED,
    SUCCESS_RATE,
    HostState,
    OutlierDetectionConfig,
    OutlierDetector,
)

__all__ = [
    "ABORTED",
    "LoadBalancer",
    "LoadBalancerStrategy",
    "MembershipChange",
    "ServiceInstance",
    "SlowStartConfig",
    "current_routing_key",
    "routing_key",
]


class _Aborted(BaseException):
    """Marks a call that ended with neither success nor failure (e.g. cancelled)."""


ABORTED = _Aborted()
"""The ``outcome`` passed to ``LoadBalancer._release`` for a call that was cut short."""

_ROUTING_KEY: ContextVar[str | bytes | None] = ContextVar(
    "codomyrmex_service_mesh_routing_key", default=None
)


def _check_key(key: Any) -> str | bytes:
    if not isinstance(key, (str, bytes)):
        raise TypeError(f"key must be a str or bytes, got {key!r}")
    return key


@contextmanager
def routing_key(key: str | bytes) -> Iterator[None]:
    """Route the calls made inside the block by ``key`` (RING_HASH and MAGLEV).

    ``with routing_key("user-42"): proxy.call(handler)`` sends every call for
    that user to the same instance while membership is stable. The key lives in
    a context variable, so it follows the code through threads' and tasks' own
    contexts and never leaks between concurrent calls.
    """
    token = _ROUTING_KEY.set(_check_key(key))
    try:
        yield
    finally:
        _ROUTING_KEY.reset(token)


def current_routing_key() -> str | bytes | None:
    """The key set by the innermost enclosing :func:`routing_key` block, or None."""
    return _ROUTING_KEY.get()


class LoadBalancerStrategy(Enum):
    """How a load balancer chooses among healthy instances.

    The spec's four (ROUND_ROBIN, RANDOM, WEIGHTED, LEAST_CONNECTIONS) plus
    POWER_OF_TWO (least-loaded of two random picks), PEAK_EWMA (Finagle's
    latency-aware pick) and the consistent hashes RING_HASH and MAGLEV.
    """

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    WEIGHTED = "weighted"
    LEAST_CONNECTIONS = "least_connections"
    POWER_OF_TWO = "power_of_two"
    PEAK_EWMA = "peak_ewma"
    RING_HASH = "ring_hash"
    MAGLEV = "maglev"

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


_RR = LoadBalancerStrategy.ROUND_ROBIN
_RANDOM = LoadBalancerStrategy.RANDOM
_WEIGHTED = LoadBalancerStrategy.WEIGHTED
_LEAST = LoadBalancerStrategy.LEAST_CONNECTIONS
_P2C = LoadBalancerStrategy.POWER_OF_TWO
_EWMA = LoadBalancerStrategy.PEAK_EWMA
_RING = LoadBalancerStrategy.RING_HASH
_MAGLEV = LoadBalancerStrategy.MAGLEV
_HASHING = frozenset({_RING, _MAGLEV})
_USES_WEIGHT = frozenset({_WEIGHTED, _P2C, _EWMA, _RING, _MAGLEV})
_SLOW_START_BY_REJECTION = frozenset({_RR, _RANDOM, _WEIGHTED, _P2C, _EWMA})
_TABLED = frozenset({_WEIGHTED, _RING, _MAGLEV})  # strategies with a table over the members
_DRAWS = 64  # alias draws before WEIGHTED falls back to a walk over the pickable instances
_SLOW_START_TRIES = 32
_UNMEASURED_PENALTY = 1e12  # PEAK_EWMA cost of a busy instance with no latency sample yet
_FAILURE_LATENCY = 1.0  # PEAK_EWMA: a failed call counts as at least this slow (Finagle)
_MAX_LOAD_PENALTY = 5  # LEAST_CONNECTIONS / POWER_OF_TWO: phantom calls of a failing instance
_PENALISED = frozenset({_LEAST, _P2C})
_UNTRIED_WALK = 256  # slots a keyed pick walks along a ring or table for a pickable instance
_KEY_SHIFT = 64 - POSITION_BITS  # a 64-bit key hash -> a ring position


@dataclass(frozen=True, slots=True)
class SlowStartConfig:
    """Ramp a newly registered or newly healthy instance's weight up over ``window`` seconds.

    Envoy's formula: the effective weight is ``weight * max(min_weight_percent / 100,
    (elapsed / window) ** (1 / aggression))``. Applies to ROUND_ROBIN, RANDOM,
    WEIGHTED, POWER_OF_TWO and PEAK_EWMA: a pick of a ramping instance is kept
    with the probability of that factor (else the strategy picks again), so its
    share grows with the factor whether or not it wins comparisons. The hash
    strategies keep key affinity and LEAST_CONNECTIONS keeps its exact minimum.
    """

    window: float
    """Seconds until an instance takes its full share."""
    aggression: float = 1.0
    """1.0 ramps linearly; larger values ramp faster at the start."""
    min_weight_percent: float = 10.0
    """The share (percent of the full weight) an instance starts from."""

    def __post_init__(self) -> None:
        window = check_number("window", self.window, 0.0)
        if window <= 0.0:
            raise ValueError(f"window must be > 0, got {self.window!r}")
        aggression = check_number("aggression", self.aggression, 0.0)
        if aggression <= 0.0:
            raise ValueError(f"aggression must be > 0, got {self.aggression!r}")
        percent = check_number("min_weight_percent", self.min_weight_percent, 0.0)
        if percent <= 0.0 or percent > 100.0:
            raise ValueError(
                f"min_weight_percent must be in (0, 100], got {self.min_weight_percent!r}"
            )

    def factor(self, elapsed: float) -> float:
        """The fraction of its weight an instance has ``elapsed`` seconds into its ramp."""
        if elapsed >= self.window:
            return 1.0
        ramp: float = (max(elapsed, 0.0) / self.window) ** (1.0 / self.aggression)
        return max(self.min_weight_percent / 100.0, ramp)


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


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """What :meth:`LoadBalancer.update_members` did: the ids added, updated and removed."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


class _Entry:
    """The balancer's bookkeeping for one registered instance."""

    __slots__ = (
        "available",
        "ejected",
        "ewma",
        "ewma_at",
        "inst",
        "lc_count",
        "lc_pos",
        "listed",
        "load_penalty",
        "maglev",
        "measured",
        "outlier",
        "points",
        "ramp_start",
        "seq",
    )

    def __init__(self, inst: ServiceInstance, seq: int) -> None:
        self.inst = inst
        self.seq = seq
        self.listed = False  # in the pool (and the connection buckets, if kept)
        self.available = False  # healthy and not ejected
        self.ejected = False
        self.lc_count = 0
        self.lc_pos = 0
        # Phantom in-flight calls of an instance that has been failing: a fast failure must
        # not make it look least loaded (one per failure in a row, up to _MAX_LOAD_PENALTY).
        self.load_penalty = 0
        self.ewma = 0.0  # PEAK_EWMA latency estimate (seconds) as of ``ewma_at``
        self.ewma_at = 0.0
        self.measured = False
        self.ramp_start: float | None = None  # slow start began here (None: full weight)
        self.outlier: HostState | None = None
        self.points: list[int] | None = None  # cached ring positions
        self.maglev: tuple[int, int] | None = None  # cached Maglev (offset, skip)


def _seq_of(entry: _Entry) -> int:
    return entry.seq


def _return_callback(ref: weakref.ref[LoadBalancer]) -> Callable[[], None]:
    """A timer callback that does not keep its balancer alive."""

    def fire() -> None:
        balancer = ref()
        if balancer is not None:
            balancer._timed_return()

    return fire


def _update_in_place(current: ServiceInstance, instance: ServiceInstance) -> None:
    """Give the registered ``current`` the address, weight and metadata of ``instance``
    (the same id), keeping its connection count."""
    if current is not instance:
        current.host = instance.host
        current.port = instance.port
        current.weight = instance.weight
        current.metadata = instance.metadata


def _check_settings(slow_start: object, outlier_detection: object, panic_threshold: float) -> float:
    """Validate the settings ``reconfigure`` can change; returns the panic threshold."""
    if slow_start is not None and not isinstance(slow_start, SlowStartConfig):
        raise TypeError(f"slow_start must be a SlowStartConfig, got {slow_start!r}")
    if outlier_detection is not None and not isinstance(outlier_detection, OutlierDetectionConfig):
        raise TypeError(
            f"outlier_detection must be an OutlierDetectionConfig, got {outlier_detection!r}"
        )
    panic = check_number("panic_threshold", panic_threshold, 0.0)
    if panic > 100.0:
        raise ValueError(
            f"panic_threshold must be a percentage (0 to 100), got {panic_threshold!r}"
        )
    return panic


class LoadBalancer(Publisher):
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
        "__weakref__",
        "_alias",
        "_available",
        "_base_pick",
        "_buckets",
        "_building",
        "_clock",
        "_detector",
        "_entries",
        "_ewma_decay",
        "_failing",
        "_inner_pick",
        "_lock",
        "_maglev",
        "_maglev_size",
        "_max_ring",
        "_min_count",
        "_min_ring",
        "_next_due",
        "_observe",
        "_observe_clock",
        "_observe_since",
        "_outbox",
        "_panic",
        "_panic_threshold",
        "_pick",
        "_pool",
        "_positive",
        "_random",
        "_ring",
        "_ring_replicas",
        "_rng",
        "_rr",
        "_rr_seq",
        "_seq",
        "_slow_start",
        "_strategy",
        "_subscribers",
        "_success_resets",
        "_tables_gen",
        "_tables_stale",
        "_tick",
        "_timer",
        "_tracking",
        "name",
    )

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
        decay = check_number("ewma_decay", ewma_decay, 0.0)
        if decay <= 0.0:
            raise ValueError(f"ewma_decay must be > 0, got {ewma_decay!r}")
        check_int("ring_replicas", ring_replicas, 1)
        if timer is not None:
            check_callable("timer", timer)
        check_int("min_ring_size", min_ring_size, 1)
        check_int("max_ring_size", max_ring_size, 1)
        if max_ring_size < min_ring_size:
            raise ValueError(
                f"max_ring_size must be >= min_ring_size ({min_ring_size}), got {max_ring_size!r}"
            )
        check_int("maglev_table_size", maglev_table_size, 3)
        if not is_prime(maglev_table_size):
            raise ValueError(f"maglev_table_size must be a prime, got {maglev_table_size!r}")
        self.name = name
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._pool: list[_Entry] = []
        self._available = 0
        self._panic = False
        self._panic_threshold = panic
        self._seq = 0
        self._rr = 0
        self._rr_seq = -1
        self._tick = 0
        # Tables over the members, each tagged with the membership generation it was built for.
        self._alias: tuple[list[float], list[int], list[_Entry], int] | None = None
        self._positive: list[_Entry] | None = None  # the pool's entries of positive weight
        self._ring: tuple[Any, Any, int, list[_Entry], int] | None = None
        self._maglev: tuple[Any, list[_Entry], int] | None = None
        self._tables_gen = 0
        self._tables_stale = False
        self._building = False
        self._min_ring = min_ring_size
        self._max_ring = max_ring_size
        self._timer = _timers.TIMER if timer is None else timer
        self._buckets: dict[int, list[_Entry]] | None = None
        self._min_count = 0
        self._rng = rng if rng is not None else random.Random()
        self._random = self._rng.random
        self._clock = clock
        self._slow_start = slow_start
        self._detector = None if outlier_detection is None else OutlierDetector(outlier_detection)
        self._ewma_decay = decay
        self._ring_replicas = ring_replicas
        self._maglev_size = maglev_table_size
        self._subscribers: tuple[EventListener, ...] = ()
        self._outbox: list[Event] = []
        self._tracking = False  # whether _release has more to do than count down
        # Whether a success only needs to reset its instance's failures in a row (outlier
        # detection on consecutive failures alone, a strategy that ignores outcomes).
        self._success_resets = False
        self._failing: dict[str, HostState] = {}  # instances with failures in a row, by id
        self._next_due = math.inf  # the detector's next scheduled return (inf: none)
        # Set to the clock when a strategy or the detector wants each call's outcome and
        # latency; callers then pass ``start`` and ``outcome`` to :meth:`_release`.
        self._observe_clock: Callable[[], float] | None = None
        self._observe_since = 0.0
        self._observe: Callable[[_Entry, float, BaseException | None], None] | None = None
        self._strategy = _RR
        self._base_pick: Callable[[], _Entry | None] = self._pick_round_robin
        self._inner_pick: Callable[[], _Entry | None] = self._pick_round_robin
        self._pick: Callable[[], _Entry | None] = self._pick_round_robin
        self.strategy = strategy

    def __repr__(self) -> str:
        return (
            f"LoadBalancer(strategy={self._strategy.value}, instances={len(self._entries)}, "
            f"healthy={self._available})"
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
        pickers: dict[LoadBalancerStrategy, Callable[[], _Entry | None]] = {
            _RR: self._pick_round_robin,
            _RANDOM: self._pick_random,
            _WEIGHTED: self._pick_weighted,
            _LEAST: self._pick_least_connections,
            _P2C: self._pick_power_of_two,
            _EWMA: self._pick_peak_ewma,
            _RING: self._pick_ring_hash,
            _MAGLEV: self._pick_maglev,
        }
        with self._lock:
            self._strategy = strategy
            pick = self._base_pick = pickers[strategy]
            if self._slow_start is not None and strategy in _SLOW_START_BY_REJECTION:
                pick = self._pick_slow_start
            self._inner_pick = pick
            self._pick = pick
            observing = strategy is _EWMA or strategy in _PENALISED or self._detector is not None
            timing = strategy is _EWMA  # only latency-aware picks need each call's start time
            if timing and self._observe_clock is None:
                # Calls already in flight began without a clock reading: ignore their outcome.
                self._observe_since = self._clock()
            self._observe_clock = self._clock if timing else None
            self._observe = self._observe_outcome if observing else None
            self._update_stale()
            self._buckets = None
            if strategy is _LEAST:
                self._buckets = {}
                for entry in self._pool:
                    self._bucket_add(entry, entry.inst.connections + entry.load_penalty)
            self._update_tracking()

    def _update_tracking(self) -> None:
        self._tracking = (
            self._buckets is not None or self._observe is not None or bool(self._subscribers)
        )
        detector = self._detector
        self._success_resets = (
            detector is not None
            and detector.config.failure_rate_threshold is None
            and detector.config.success_rate_stdev_factor is None
            and self._strategy is not _EWMA
            and self._strategy not in _PENALISED
        )

    @property
    def slow_start(self) -> SlowStartConfig | None:
        """The slow-start ramp, or None."""
        return self._slow_start

    @property
    def outlier_detector(self) -> OutlierDetector | None:
        """The outlier detector (its ``config`` and ``stats()``), or None when not configured."""
        return self._detector

    @property
    def panic_threshold(self) -> float:
        """Percent of available instances below which every registered instance is picked."""
        return self._panic_threshold

    @property
    def panicking(self) -> bool:
        """Whether the balancer is in panic mode (picking among all registered instances)."""
        return self._panic

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
            self._panic_threshold = panic
            self._slow_start = slow_start
            if slow_start is None:
                for entry in self._entries.values():
                    entry.ramp_start = None
            detector = self._detector
            if outlier_detection is None and detector is not None:
                self._detector = None
                for entry in self._entries.values():
                    entry.outlier = None
                    if entry.ejected:
                        entry.ejected = False
                        self._refresh(entry, ramp=False)
                        self._emit(InstanceReturned(self.name, entry.inst.id, "reconfigured"))
            elif outlier_detection is not None and detector is None:
                self._detector = OutlierDetector(outlier_detection)
                for entry in self._entries.values():
                    entry.outlier = HostState(entry.inst.id)
            elif outlier_detection is not None and detector is not None:
                detector.config = outlier_detection
            self._sync_pool(None)
            current = self._strategy
        self._flush()
        self.strategy = current if strategy is None else strategy  # rewires the pick path

    # -- events -----------------------------------------------------------------

    def _subscribers_changed(self) -> None:
        if not self._subscribers:
            self._outbox = []
        self._update_tracking()

    # -- membership -------------------------------------------------------------

    def register(self, instance: ServiceInstance) -> None:
        """Add ``instance``; an id already present is updated in place (connections kept)."""
        if not isinstance(instance, ServiceInstance):
            raise TypeError(f"instance must be a ServiceInstance, got {instance!r}")
        with self._lock:
            entry = self._entries.get(instance.id)
            if entry is None:
                entry = self._add_entry(instance)
                self._invalidate_members()
                self._refresh(entry, ramp=True)
            else:
                _update_in_place(entry.inst, instance)
                self._invalidate_members()  # the weight may have changed (even on the same object)
                self._set_health(entry, instance.healthy)
        self._flush()

    def deregister(self, instance_id: str) -> bool:
        """Remove an instance; True if it was registered. In-flight calls finish normally."""
        with self._lock:
            if not self._remove_entry(instance_id):
                return False
            self._invalidate_members()
            self._sync_pool(None)
            return True

    def _add_entry(self, instance: ServiceInstance) -> _Entry:
        """Under the lock: a new entry for ``instance`` (the caller refreshes it)."""
        entry = _Entry(instance, self._seq)
        self._seq += 1
        self._entries[instance.id] = entry
        if self._detector is not None:
            entry.outlier = self._detector.host(instance.id)
        return entry

    def _remove_entry(self, instance_id: str) -> bool:
        """Under the lock: forget ``instance_id``; False if it was not registered."""
        entry = self._entries.pop(instance_id, None)
        if entry is None:
            return False
        if entry.available:
            self._available -= 1
            entry.available = False
        if entry.outlier is not None and self._detector is not None:
            self._detector.forget(entry.outlier)
            self._failing.pop(instance_id, None)
        if entry.listed:
            self._unlist(entry)
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
                entry = self._entries.get(instance.id)
                if entry is None:
                    self._refresh(self._add_entry(instance), ramp=True)
                    added.append(instance.id)
                    continue
                _update_in_place(entry.inst, instance)
                if update_health:
                    self._set_health(entry, instance.healthy)
                updated.append(instance.id)
            if added or updated or removed:
                self._invalidate_members()  # membership or weights changed: tables rebuild
            self._sync_pool(None)
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
            entry = self._entries.get(instance_id)
            if entry is None:
                return False
            self._set_health(entry, healthy)
        self._flush()
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
        """The available instances (healthy and not ejected), in registration order."""
        return self._listing(attrgetter("available"))

    @property
    def ejected_instances(self) -> list[ServiceInstance]:
        """The instances outlier detection has ejected right now, in registration order."""
        return self._listing(attrgetter("ejected"))

    def _listing(self, flag: Callable[[_Entry], bool]) -> list[ServiceInstance]:
        """The instances whose entry has ``flag``, once due ejections have ended."""
        with self._lock:
            self._return_due()
            found = [entry.inst for entry in self._entries.values() if flag(entry)]
        self._flush()
        return found

    def is_ejected(self, instance_id: str) -> bool:
        """Whether outlier detection has ejected the instance with this id right now."""
        with self._lock:
            self._return_due()
            entry = self._entries.get(instance_id)
            ejected = entry is not None and entry.ejected
        self._flush()
        return ejected

    def latency_estimate(self, instance_id: str) -> float | None:
        """PEAK_EWMA's current latency estimate (seconds) of an instance, or None if unmeasured."""
        with self._lock:
            entry = self._entries.get(instance_id)
            if entry is None or not entry.measured:
                return None
            elapsed = max(self._clock() - entry.ewma_at, 0.0)
            return entry.ewma * math.exp(-elapsed / self._ewma_decay)

    def load(self, instance_id: str) -> int | None:
        """The load LEAST_CONNECTIONS and POWER_OF_TWO see on an instance, or None if unknown.

        Its calls in flight plus a penalty of one per recent failure in a row (at most
        five): an instance that fails fast is never the least loaded for that reason.
        """
        with self._lock:
            entry = self._entries.get(instance_id)
            return None if entry is None else entry.inst.connections + entry.load_penalty

    def has_untried(self, tried: set[str]) -> bool:
        """Whether a pickable instance exists whose id is not in ``tried`` (O(len(tried)))."""
        with self._lock:
            entries = self._entries
            pooled = 0
            for instance_id in tried:
                entry = entries.get(instance_id)
                if entry is not None and entry.listed:
                    pooled += 1
            return len(self._pool) > pooled

    # -- picking ----------------------------------------------------------------

    def get_instance(self, key: str | bytes | None = None) -> ServiceInstance | None:
        """Pick an available instance by the strategy, or None when there is none.

        ``key`` routes RING_HASH and MAGLEV picks (the same key, the same
        instance); other strategies ignore it. See also :func:`routing_key`.
        """
        if key is not None:
            token = _ROUTING_KEY.set(_check_key(key))
            try:
                return self.get_instance()
            finally:
                _ROUTING_KEY.reset(token)
        if self._tables_stale:
            self._settle_tables()
        lock = self._lock
        lock.acquire()
        try:
            if self._next_due != math.inf:
                self._return_if_due()
            entry = self._pick()
        finally:
            lock.release()
        inst = None if entry is None else entry.inst
        if self._subscribers:
            self._flush(inst)
        return inst

    def connection(self) -> Connection:
        """Pick an instance and count a connection on it until the block ends.

        ``with lb.connection() as instance:`` (or ``async with``) raises
        :class:`NoHealthyInstanceError` when no instance is healthy.
        """
        return Connection(self)

    def _acquire(self, tried: set[str] | None = None) -> ServiceInstance | None:
        """Pick (preferring ids not in ``tried``) and count one connection, atomically."""
        if self._tables_stale:
            self._settle_tables()
        lock = self._lock
        lock.acquire()  # explicit acquire/release: measurably cheaper than `with` here
        try:
            if self._next_due != math.inf:  # an ejection may have ended: one compare if none
                self._return_if_due()
            entry = self._pick()
            if entry is None:
                return None
            if tried and entry.inst.id in tried:
                entry = self._pick_untried(entry, tried)
            inst = entry.inst
            inst.connections += 1
            if self._buckets is not None:
                self._bucket_shift(entry, 1)
            if not self._subscribers:
                return inst
        finally:
            lock.release()
        self._flush(inst)
        return inst

    acquire = _acquire
    """Public name of :meth:`_acquire`, for the proxy and the stages (internal API)."""

    @property
    def observe_clock(self) -> Callable[[], float] | None:
        """The clock to read a call's start with when the balancer observes latency
        (PEAK_EWMA, slow start, outlier detection), else None. Internal API for the proxy.
        """
        return self._observe_clock

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
            if not self._tracking:  # no buckets, no observer, no subscriber: done
                return
            if outcome is None and self._success_resets:
                # The success path of outlier detection on failures in a row (no buckets,
                # no latency): no clock, no detector; only an instance that has been
                # failing has a streak to end.
                failing = self._failing
                if failing:
                    host = failing.pop(inst.id, None)
                    if host is not None and not host.ejected:
                        host.consecutive = 0
            else:
                entry = self._entries.get(inst.id)
                if entry is not None and entry.inst is inst:
                    if self._buckets is not None and entry.listed:
                        self._bucket_shift(entry, -1)
                    observe = self._observe
                    if observe is not None:
                        observe(entry, start, outcome)
        finally:
            lock.release()
        if self._subscribers:
            self._flush()

    release = _release
    """Public name of :meth:`_release`, for the proxy and the stages (internal API)."""

    # -- strategies (lock held) ---------------------------------------------------

    def _pick_round_robin(self) -> _Entry | None:
        pool = self._pool
        if not pool:
            return None
        i = self._rr
        if i >= len(pool):
            i = 0
        self._rr = i + 1
        entry = pool[i]
        self._rr_seq = entry.seq
        return entry

    def _pick_random(self) -> _Entry | None:
        pool = self._pool
        if not pool:
            return None
        return pool[int(self._random() * len(pool))]

    def _pick_weighted(self) -> _Entry | None:
        """Walker's alias method over the members: O(1) draws until one is pickable."""
        alias = self._alias
        if alias is None:
            alias = self._build_inline()
            assert alias is not None
        prob, other, entries, _ = alias
        n = len(prob)
        if not n or not self._pool:
            return None
        draw = self._random
        for _ in range(_DRAWS):
            u = draw() * n
            i = int(u)
            entry: _Entry = entries[i] if u - i < prob[i] else entries[other[i]]
            if entry.listed and entry.inst.weight > 0:
                return entry
        return self._weighted_walk()

    def _weighted_walk(self) -> _Entry | None:
        """A weighted draw by a walk over the pickable instances (when few members are)."""
        positive = self._positive if self._positive is not None else self._build_positive()
        if not positive:
            return None
        relative = _strategies.relative_weights([e.inst.weight for e in positive])
        target = self._random() * math.fsum(relative)
        for entry, weight in zip(positive, relative, strict=True):
            target -= weight
            if target < 0.0:
                return entry
        return positive[-1]

    def _pick_least_connections(self) -> _Entry | None:
        buckets = self._buckets
        if not buckets:
            return None
        bucket = buckets[self._min_count]
        self._tick += 1
        return bucket[self._tick % len(bucket)]

    def _pick_power_of_two(self) -> _Entry | None:
        """Two independent uniform draws; the one with fewer connections per weight wins.

        The cost is ``(connections + 1) / weight``, the first draw winning ties. Idle,
        with distinct weights, the k-th heaviest of n gets ``(2(n - k) + 1) / n**2`` of
        the picks (weights 1, 2, 3: 1/9, 3/9, 5/9), so shares are not in proportion to
        weight as with Envoy's weighted least request; WEIGHTED gives those.
        """
        pool = self._positive
        if pool is None:
            pool = self._build_positive()
        n = len(pool)
        if not n:
            return None
        draw = self._random
        a = pool[int(draw() * n)]
        b = pool[int(draw() * n)]
        if a is b:
            return a
        wa = a.inst.weight
        wb = b.inst.weight
        # (connections + penalty + 1) / weight, cross-multiplied; the first draw wins ties.
        load_a = a.inst.connections + a.load_penalty + 1
        load_b = b.inst.connections + b.load_penalty + 1
        if load_b * wa < load_a * wb:
            return b
        return a

    def _pick_peak_ewma(self) -> _Entry | None:
        """Two distinct random instances; the lower ``latency EWMA x (connections + 1) / weight``.

        Distinct, as in Finagle: the costliest instance is never picked, so a
        stuck one gets no calls until its estimate has decayed.
        """
        pool = self._positive
        if pool is None:
            pool = self._build_positive()
        n = len(pool)
        if n < 2:
            return pool[0] if n else None
        draw = self._random
        i = int(draw() * n)
        j = int(draw() * (n - 1))
        a = pool[i]
        b = pool[j + 1 if j >= i else j]
        now = self._clock()
        if self._ewma_cost(b, now) < self._ewma_cost(a, now):
            return b
        return a

    def _ewma_cost(self, entry: _Entry, now: float) -> float:
        pending = entry.inst.connections
        if not entry.measured:
            # No latency yet: free while idle, then one call at a time (Finagle's penalty).
            return _UNMEASURED_PENALTY + pending if pending else 0.0
        estimate = entry.ewma
        elapsed = now - entry.ewma_at
        if elapsed > 0.0:
            estimate *= math.exp(-elapsed / self._ewma_decay)
        return estimate * (pending + 1) / entry.inst.weight

    def _pick_ring_hash(self) -> _Entry | None:
        """The owner of the key's place on the ring, or the next pickable one along it."""
        ring = self._ring
        if ring is None:
            ring = self._build_inline()
            assert ring is not None
        points, starts, shift, entries, _ = ring
        if not entries:
            return None
        key = _ROUTING_KEY.get()
        if key is None:
            position = self._rng.getrandbits(POSITION_BITS)
        else:
            position = key_hash(key) >> _KEY_SHIFT
        entry: _Entry = entries[points[ring_lookup(points, starts, shift, position)] & OWNER_MASK]
        if entry.listed and entry.inst.weight > 0:
            return entry
        start = ring_lookup(points, starts, shift, position)
        size = len(points)
        for step in range(1, min(size, _UNTRIED_WALK)):
            entry = entries[points[(start + step) % size] & OWNER_MASK]
            if entry.listed and entry.inst.weight > 0:
                return entry
        return self._hash_fallback(position)

    def _pick_maglev(self) -> _Entry | None:
        """The owner of the key's slot, or of the next slot along the table that is pickable."""
        maglev = self._maglev
        if maglev is None:
            maglev = self._build_inline()
            assert maglev is not None
        table, entries, _ = maglev
        if not entries:
            return None
        key = _ROUTING_KEY.get()
        size = len(table)
        slot = int(self._random() * size) if key is None else key_hash(key) % size
        entry: _Entry = entries[table[slot]]
        if entry.listed and entry.inst.weight > 0:
            return entry
        for step in range(1, min(size, _UNTRIED_WALK)):
            entry = entries[table[(slot + step) % size]]
            if entry.listed and entry.inst.weight > 0:
                return entry
        return self._hash_fallback(slot)

    def _hash_fallback(self, position: int) -> _Entry | None:
        """A pickable instance chosen by the key alone, when a walk found none nearby."""
        positive = self._positive if self._positive is not None else self._build_positive()
        return positive[position % len(positive)] if positive else None

    def _pick_slow_start(self) -> _Entry | None:
        """The strategy's pick; a ramping instance is kept with the chance of its ramp factor."""
        pick = self._base_pick
        entry = pick()
        if entry is None or entry.ramp_start is None:
            return entry
        now = self._clock()
        for _ in range(_SLOW_START_TRIES):
            if entry.ramp_start is None or self._random() < self._ramp(entry, now):
                return entry
            retry = pick()
            if retry is None:
                break
            entry = retry
        return entry

    def _return_if_due(self) -> None:
        """Return ejected instances whose time is up (lock held; something is ejected)."""
        if self._next_due <= self._clock():
            self._return_due()

    def _pick_untried(self, picked: _Entry, tried: set[str]) -> _Entry:
        """A retry's pick: an instance not tried yet in this call, if a usable one exists."""
        if self._strategy in _HASHING and _ROUTING_KEY.get() is not None:
            entry = self._walk_untried(tried)
            if entry is not None:
                return entry
        if self._buckets is not None:  # least connections: the least loaded untried one
            for count in sorted(self._buckets):
                for entry in self._buckets[count]:
                    if entry.inst.id not in tried:
                        return entry
            return picked
        for _ in range(3):
            entry = self._pick()
            if entry is not None and entry.inst.id not in tried:
                return entry
        weighted = self._strategy in _USES_WEIGHT
        for entry in self._pool:
            if entry.inst.id not in tried and not (weighted and entry.inst.weight <= 0):
                return entry
        return picked

    def _walk_untried(self, tried: set[str]) -> _Entry | None:
        """Walk on along the ring or table from the key's place to an instance not yet tried."""
        key = _ROUTING_KEY.get()
        assert key is not None
        hashed = key_hash(key)
        owners: Iterator[int]
        entries: list[_Entry]
        if self._strategy is _RING:
            if self._ring is None:
                return None
            points, starts, shift, entries, _ = self._ring
            size = len(points)
            if not size:
                return None
            start = ring_lookup(points, starts, shift, hashed >> _KEY_SHIFT)
            owners = (
                points[(start + step) % size] & OWNER_MASK
                for step in range(min(size, _UNTRIED_WALK))
            )
        else:
            if self._maglev is None:
                return None
            table, entries, _ = self._maglev
            size = len(table)
            start = hashed % size
            owners = (table[(start + step) % size] for step in range(min(size, _UNTRIED_WALK)))
        if not entries:
            return None
        for owner in owners:
            entry: _Entry = entries[owner]
            if entry.listed and entry.inst.weight > 0 and entry.inst.id not in tried:
                return entry
        return None

    def _ramp(self, entry: _Entry, now: float) -> float:
        """The slow-start factor of ``entry`` at ``now`` (ending its ramp when complete)."""
        start = entry.ramp_start
        config = self._slow_start
        if start is None or config is None:
            return 1.0
        factor = config.factor(now - start)
        if factor >= 1.0:
            entry.ramp_start = None
        return factor

    # -- outcomes (lock held) -------------------------------------------------------

    def _observe_outcome(self, entry: _Entry, start: float, outcome: BaseException | None) -> None:
        """Feed one finished call to PEAK_EWMA and to outlier detection."""
        now = self._clock()
        strategy = self._strategy
        if strategy is _EWMA and start < self._observe_since:
            return  # began before latencies were measured: no start time to measure from
        if outcome is not None and isinstance(outcome, ServiceMeshError):
            return  # refused by the mesh itself (an open breaker): nothing about the instance
        aborted = outcome is ABORTED
        if strategy is _EWMA:
            # A failure or a cut-short call is no evidence of speed: it may raise the estimate
            # only, and a failure counts as slow however fast it came back (Finagle).
            rtt = now - start
            if outcome is not None and not aborted and rtt < _FAILURE_LATENCY:
                rtt = _FAILURE_LATENCY
            self._ewma_sample(entry, rtt, now, peak_only=outcome is not None)
        elif strategy in _PENALISED and not aborted:
            self._penalise(entry, outcome is not None)
        detector = self._detector
        if detector is None or aborted or entry.outlier is None:
            return
        if detector.next_due <= now:
            self._return_due()
        if detector.next_sweep <= now:  # this call belongs to the next interval
            self._sweep_success_rates(now)
        failed = outcome is not None and detector.is_failure(outcome)
        host = entry.outlier
        reason = detector.record(host, failed, now)
        if host.consecutive:
            self._failing[host.instance_id] = host
        else:
            self._failing.pop(host.instance_id, None)
        if reason is not None:
            self._eject_entry(entry, reason, now)

    def _eject_entry(self, entry: _Entry, reason: str, now: float) -> None:
        """Eject an instance (within ``max_ejection_percent``) and time its return."""
        detector = self._detector
        if detector is None or entry.outlier is None or entry.outlier.ejected:
            return
        if not detector.may_eject(len(self._entries)):
            detector.refused()
            return
        duration = detector.eject(entry.outlier, now)
        self._next_due = detector.next_due
        entry.ejected = True
        self._refresh(entry, ramp=False)
        self._emit(InstanceEjected(self.name, entry.inst.id, reason, duration))
        self._timer(duration, _return_callback(weakref.ref(self)))

    def _sweep_success_rates(self, now: float) -> None:
        """End a success-rate interval: eject the instances well below the others' rate."""
        detector = self._detector
        if detector is None:
            return
        for host in detector.sweep(now):
            entry = self._entries.get(host.instance_id)
            if entry is not None and entry.outlier is host:
                self._eject_entry(entry, SUCCESS_RATE, now)

    def _timed_return(self) -> None:
        """The timer's callback: return the instances whose ejection has ended, publish it."""
        with self._lock:
            self._return_due()
        self._flush()

    def _penalise(self, entry: _Entry, failed: bool) -> None:
        """Raise a failing instance's phantom load by one, or lower it after a success."""
        penalty = entry.load_penalty
        if failed:
            if penalty >= _MAX_LOAD_PENALTY:
                return
            entry.load_penalty = penalty + 1
            delta = 1
        else:
            if not penalty:
                return
            entry.load_penalty = penalty - 1
            delta = -1
        if self._buckets is not None and entry.listed:
            self._bucket_shift(entry, delta)

    def _ewma_sample(self, entry: _Entry, rtt: float, now: float, *, peak_only: bool) -> None:
        """Fold one latency sample into the estimate: a slower sample is taken at once."""
        rtt = max(rtt, 0.0)
        if not entry.measured:
            entry.ewma = rtt
            entry.ewma_at = now
            entry.measured = True
            return
        elapsed = max(now - entry.ewma_at, 0.0)
        keep = math.exp(-elapsed / self._ewma_decay)
        decayed = entry.ewma * keep
        if rtt > decayed:
            entry.ewma = rtt
        elif peak_only:
            return
        else:
            entry.ewma = decayed + (1.0 - keep) * rtt
        entry.ewma_at = now

    def _return_due(self) -> None:
        """Put back in service every ejected instance whose ejection has ended."""
        detector = self._detector
        if detector is None or detector.next_due == math.inf:
            return
        returned = detector.pop_due(self._clock())
        self._next_due = detector.next_due
        for host in returned:
            entry = self._entries.get(host.instance_id)
            if entry is None or entry.outlier is not host:
                continue
            entry.ejected = False
            self._refresh(entry, ramp=False)
            self._emit(InstanceReturned(self.name, host.instance_id, EJECTION_TIME_ELAPSED))

    # -- events -----------------------------------------------------------------

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

    # -- the pool (lock held) ---------------------------------------------------

    def _set_health(self, entry: _Entry, healthy: bool) -> None:
        changed = entry.inst.healthy != healthy
        entry.inst.healthy = healthy
        self._refresh(entry, ramp=True)
        if changed:
            self._emit(InstanceHealthChanged(self.name, entry.inst.id, healthy))

    def _refresh(self, entry: _Entry, *, ramp: bool) -> None:
        """Recompute whether ``entry`` is available and pickable after a change."""
        available = entry.inst.healthy and not entry.ejected
        if available != entry.available:
            entry.available = available
            if available:
                self._available += 1
                if ramp and self._slow_start is not None:
                    entry.ramp_start = self._clock()
            else:
                self._available -= 1
        self._sync_pool(entry)

    def _sync_pool(self, entry: _Entry | None) -> None:
        """Enter or leave panic mode as needed; list or unlist ``entry``."""
        threshold = self._panic_threshold
        panic = threshold > 0.0 and self._available * 100.0 < threshold * len(self._entries)
        if panic != self._panic:
            self._panic = panic
            self._rebuild_pool()
            return
        if entry is None:
            return
        wanted = panic or entry.available
        if wanted and not entry.listed:
            self._list(entry)
        elif not wanted and entry.listed:
            self._unlist(entry)

    def _list(self, entry: _Entry) -> None:
        pool = self._pool
        pos = bisect_left(pool, entry.seq, key=_seq_of)
        pool.insert(pos, entry)
        # The cursor is the number of pooled entries registered no later than the last pick.
        if entry.seq <= self._rr_seq:
            self._rr += 1
        entry.listed = True
        positive = self._positive
        if positive is not None and entry.inst.weight > 0:
            positive.insert(bisect_left(positive, entry.seq, key=_seq_of), entry)
        if self._buckets is not None:
            self._bucket_add(entry, entry.inst.connections + entry.load_penalty)

    def _unlist(self, entry: _Entry) -> None:
        pool = self._pool
        pos = bisect_left(pool, entry.seq, key=_seq_of)
        del pool[pos]
        if entry.seq <= self._rr_seq:
            self._rr -= 1
        entry.listed = False
        positive = self._positive
        if positive is not None:
            pos = bisect_left(positive, entry.seq, key=_seq_of)
            if pos < len(positive) and positive[pos] is entry:
                del positive[pos]
        if self._buckets is not None:
            self._bucket_remove(entry)

    def _rebuild_pool(self) -> None:
        """Rebuild the pool on entering or leaving panic mode (round robin goes on in order)."""
        for entry in self._pool:
            entry.listed = False
        pool = [e for e in self._entries.values() if self._panic or e.available]
        for entry in pool:
            entry.listed = True
        self._pool = pool
        self._rr = bisect_right(pool, self._rr_seq, key=_seq_of)  # the one after the last pick
        self._positive = None
        if self._buckets is not None:
            self._buckets = {}
            for entry in pool:
                self._bucket_add(entry, entry.inst.connections + entry.load_penalty)

    def _invalidate_members(self) -> None:
        """Membership or a weight changed: the tables over the members are out of date."""
        self._positive = None
        self._tables_gen += 1
        self._update_stale()

    def _update_stale(self) -> None:
        strategy = self._strategy
        table: tuple[Any, ...] | None
        if strategy is _WEIGHTED:
            table = self._alias
        elif strategy is _RING:
            table = self._ring
        elif strategy is _MAGLEV:
            table = self._maglev
        else:
            self._tables_stale = False
            return
        self._tables_stale = table is None or table[-1] != self._tables_gen

    def _build_positive(self) -> list[_Entry]:
        positive = [e for e in self._pool if e.inst.weight > 0]
        self._positive = positive
        return positive

    # -- the tables over the members ------------------------------------------------

    def build_tables(self) -> None:
        """Bring the strategy's table (WEIGHTED, RING_HASH, MAGLEV) up to date now.

        The table is built in this thread from a snapshot of the members, outside
        the lock (picks go on meanwhile, with the previous table), then swapped
        in. Picks do this on their own after a change of membership; call it to
        pay the cost ahead, e.g. ``await loop.run_in_executor(None, lb.build_tables)``
        after registering many instances from async code. A no-op when the table
        is current or another thread is building it.
        """
        with self._lock:
            if not self._tables_stale or self._building:
                return
            self._building = True
            snapshot = self._snapshot()
        table = self._build_claimed(snapshot)
        with self._lock:
            self._building = False
            self._install(snapshot, table)

    def _settle_tables(self) -> None:
        """A pick found the table out of date: rebuild it, never on an event loop's thread."""
        if on_event_loop():
            with self._lock:
                if self._building or not self._tables_stale:
                    return
                strategy = self._strategy
                if strategy is _RING:
                    current: tuple[Any, ...] | None = self._ring
                elif strategy is _MAGLEV:
                    current = self._maglev
                else:
                    current = self._alias
                if current is not None:  # picks go on with it until the new one is in
                    self._building = True
                    _strategies.BUILDER.submit(self._build_in_background)
                    return
        self.build_tables()

    def _build_inline(self) -> tuple[Any, ...]:
        """Build the first table under the lock (only when a pick finds none at all)."""
        snapshot = self._snapshot()
        table = self._build_table(snapshot)
        self._install(snapshot, table)
        return table

    def _build_in_background(self) -> None:
        """The builder thread's job: build until the table is current."""
        while True:
            with self._lock:
                if not self._tables_stale:
                    self._building = False
                    return
                snapshot = self._snapshot()
            table = self._build_claimed(snapshot)
            with self._lock:
                self._install(snapshot, table)

    def _build_claimed(
        self, snapshot: tuple[LoadBalancerStrategy, int, list[_Entry], list[float]]
    ) -> tuple[Any, ...]:
        """Build ``snapshot``'s table while this thread holds ``_building``; a build that
        raises gives the claim back."""
        try:
            return self._build_table(snapshot)
        except BaseException:
            with self._lock:
                self._building = False
            raise

    def _snapshot(self) -> tuple[LoadBalancerStrategy, int, list[_Entry], list[float]]:
        """What a table is built from (lock held): the members of positive weight."""
        members = [e for e in self._entries.values() if e.inst.weight > 0]
        return self._strategy, self._tables_gen, members, [e.inst.weight for e in members]

    def _build_table(
        self, snapshot: tuple[LoadBalancerStrategy, int, list[_Entry], list[float]]
    ) -> tuple[Any, ...]:
        """Build the table of a snapshot (no lock needed: only the snapshot is read)."""
        strategy, gen, members, weights = snapshot
        if strategy is _RING:
            return (*self._build_ring(members, weights), members, gen)
        if strategy is _MAGLEV:
            return self._build_maglev(members, weights, gen)
        prob, other = alias_table(weights)
        return prob, other, members, gen

    def _install(
        self,
        snapshot: tuple[LoadBalancerStrategy, int, list[_Entry], list[float]],
        table: tuple[Any, ...],
    ) -> None:
        """Swap a built table in (lock held), unless a newer one is there already."""
        strategy, gen = snapshot[0], snapshot[1]
        if strategy is _RING:
            if self._ring is None or self._ring[-1] <= gen:
                self._ring = table
        elif strategy is _MAGLEV:
            if self._maglev is None or self._maglev[-1] <= gen:
                self._maglev = table
        elif strategy is _WEIGHTED and (self._alias is None or self._alias[-1] <= gen):
            self._alias = table
        self._update_stale()

    def _build_ring(self, entries: list[_Entry], weights: list[float]) -> tuple[Any, Any, int]:
        counts = ring_counts(weights, self._ring_replicas, self._min_ring, self._max_ring)
        lists: list[list[int]] = []
        for entry, count in zip(entries, counts, strict=True):
            cached = entry.points
            if cached is None or len(cached) < count:
                cached = entry.points = ring_points(entry.inst.id, count)
            lists.append(cached if len(cached) == count else cached[:count])
        return build_ring(lists)

    def _build_maglev(
        self, members: list[_Entry], weights: list[float], gen: int
    ) -> tuple[Any, list[_Entry], int]:
        # Maglev's table depends on the order instances claim slots: use the ids' order, so
        # every balancer with the same instances builds the same table.
        order = sorted(range(len(members)), key=lambda k: members[k].inst.id)
        entries = [members[k] for k in order]
        size = self._maglev_size
        params: list[tuple[int, int]] = []
        for entry in entries:
            cached = entry.maglev
            if cached is None:
                cached = entry.maglev = maglev_params(entry.inst.id, size)
            params.append(cached)
        table = build_maglev(params, [weights[k] for k in order], size)
        return table, entries, gen

    # -- connection buckets for LEAST_CONNECTIONS (lock held) -----------------------

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
        check_str("reason", reason)
        with self._lock:
            entry = self._entries.get(instance_id)
            if entry is None or entry.ejected:
                return False
            entry.ejected = True
            self._refresh(entry, ramp=False)
            self._emit(InstanceEjected(self.name, instance_id, reason, math.inf))
        self._flush()
        return True

    def return_instance(self, instance_id: str, reason: str = "instance_breaker") -> bool:
        """Put back an instance taken out by :meth:`eject`; True if it returned.

        An instance that outlier detection has ejected stays out until its ejection ends
        (False). Publishes :class:`InstanceReturned` with ``reason``.
        """
        check_str("reason", reason)
        with self._lock:
            entry = self._entries.get(instance_id)
            if entry is None or not entry.ejected:
                return False
            if entry.outlier is not None and entry.outlier.ejected:
                return False  # the detector's ejection: it ends on the detector's timer
            entry.ejected = False
            self._refresh(entry, ramp=True)
            self._emit(InstanceReturned(self.name, instance_id, reason))
        self._flush()
        return True


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

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._instance is not None:
            if exc is None or isinstance(exc, Exception):
                self._balancer._release(self._instance, self._start, exc)
            else:
                self._balancer._release(self._instance, self._start, ABORTED)
            self._instance = None

    async def __aenter__(self) -> ServiceInstance:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)
