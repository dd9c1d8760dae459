"""The pool: which registered instances may be picked right now, in registration order.

An instance is *available* when healthy and not ejected. The pool holds the
available ones, or every registered one in panic mode (fewer than
``panic_threshold`` percent available, as in Envoy). It is kept in registration
order with a round-robin cursor, plus the indexes the strategies share: the
entries of positive weight and, for LEAST_CONNECTIONS, the load buckets. The
pool changes when an instance's availability or the membership does, never on
a pick.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable

from .buckets import LoadBuckets
from .instance import ServiceInstance
from .outlier import HostState

__all__ = ["Entry", "Pool"]


class Entry:
    """The balancer's bookkeeping for one registered instance (internal API)."""

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
        self.listed = False  # in the pool (and the load buckets, if kept)
        self.available = False  # healthy and not ejected
        self.ejected = False
        self.lc_count = 0
        self.lc_pos = 0
        # Phantom in-flight calls of an instance that has been failing: a fast failure must
        # not make it look least loaded (one per failure in a row, up to a cap).
        self.load_penalty = 0
        self.ewma = 0.0  # PEAK_EWMA latency estimate (seconds) as of ``ewma_at``
        self.ewma_at = 0.0
        self.measured = False
        self.ramp_start: float | None = None  # slow start began here (None: full weight)
        self.outlier: HostState | None = None
        self.points: list[int] | None = None  # cached ring positions
        self.maglev: tuple[int, int] | None = None  # cached Maglev (offset, skip)


def _seq_of(entry: Entry) -> int:
    return entry.seq


class Pool:
    """The registered entries and the pickable ones (internal API; the balancer's lock
    is held for every call and every read).

    ``members`` maps ids to entries in registration order; ``entries`` is the
    pool, a list that is changed in place and never replaced, so a strategy
    may keep a reference to it. ``cursor`` is the number of pooled entries registered no later than
    the last round-robin pick (``cursor_seq``), so round robin goes on in order
    through changes. ``ramp_clock`` is the clock slow start reads when an
    instance becomes available (None: no slow start).
    """

    __slots__ = (
        "available",
        "buckets",
        "cursor",
        "cursor_seq",
        "entries",
        "members",
        "panic",
        "panic_threshold",
        "positive",
        "ramp_clock",
        "seq",
    )

    def __init__(self, panic_threshold: float) -> None:
        self.members: dict[str, Entry] = {}
        self.entries: list[Entry] = []
        self.available = 0
        self.panic = False
        self.panic_threshold = panic_threshold
        self.seq = 0
        self.cursor = 0
        self.cursor_seq = -1
        self.positive: list[Entry] | None = None  # the pool's entries of positive weight
        self.buckets: LoadBuckets | None = None
        self.ramp_clock: Callable[[], float] | None = None

    def add(self, instance: ServiceInstance) -> Entry:
        """A new entry for ``instance``, not yet available (the caller refreshes it)."""
        entry = Entry(instance, self.seq)
        self.seq += 1
        self.members[instance.id] = entry
        return entry

    def remove(self, instance_id: str) -> Entry | None:
        """Forget ``instance_id``; its entry, or None if it was not registered."""
        entry = self.members.pop(instance_id, None)
        if entry is None:
            return None
        if entry.available:
            self.available -= 1
            entry.available = False
        if entry.listed:
            self._unlist(entry)
        return entry

    def refresh(self, entry: Entry, *, ramp: bool) -> None:
        """Recompute whether ``entry`` is available and pooled after a change; ``ramp``:
        an instance that becomes available starts its slow start."""
        available = entry.inst.healthy and not entry.ejected
        if available != entry.available:
            entry.available = available
            if available:
                self.available += 1
                clock = self.ramp_clock
                if ramp and clock is not None:
                    entry.ramp_start = clock()
            else:
                self.available -= 1
        self.sync(entry)

    def sync(self, entry: Entry | None) -> None:
        """Enter or leave panic mode as needed; pool or unpool ``entry``."""
        threshold = self.panic_threshold
        panic = threshold > 0.0 and self.available * 100.0 < threshold * len(self.members)
        if panic != self.panic:
            self.panic = panic
            self._rebuild()
            return
        if entry is None:
            return
        wanted = panic or entry.available
        if wanted and not entry.listed:
            self._list(entry)
        elif not wanted and entry.listed:
            self._unlist(entry)

    def use_buckets(self, buckets: LoadBuckets | None) -> None:
        """Keep ``buckets`` (filled with the pool) up to date from now on, or none."""
        self.buckets = buckets
        if buckets is not None:
            buckets.fill(self.entries)

    def positive_entries(self) -> list[Entry]:
        """The pool's entries of positive weight, in order (cached until the pool changes)."""
        positive = self.positive
        if positive is None:
            positive = self.positive = [e for e in self.entries if e.inst.weight > 0]
        return positive

    def has_untried(self, tried: set[str]) -> bool:
        """Whether a pooled entry exists whose id is not in ``tried`` (O(len(tried)))."""
        members = self.members
        pooled = 0
        for instance_id in tried:
            entry = members.get(instance_id)
            if entry is not None and entry.listed:
                pooled += 1
        return len(self.entries) > pooled

    def _list(self, entry: Entry) -> None:
        pool = self.entries
        pool.insert(bisect_left(pool, entry.seq, key=_seq_of), entry)
        if entry.seq <= self.cursor_seq:
            self.cursor += 1
        entry.listed = True
        positive = self.positive
        if positive is not None and entry.inst.weight > 0:
            positive.insert(bisect_left(positive, entry.seq, key=_seq_of), entry)
        if self.buckets is not None:
            self.buckets.add(entry)

    def _unlist(self, entry: Entry) -> None:
        pool = self.entries
        del pool[bisect_left(pool, entry.seq, key=_seq_of)]
        if entry.seq <= self.cursor_seq:
            self.cursor -= 1
        entry.listed = False
        positive = self.positive
        if positive is not None:
            pos = bisect_left(positive, entry.seq, key=_seq_of)
            if pos < len(positive) and positive[pos] is entry:
                del positive[pos]
        if self.buckets is not None:
            self.buckets.remove(entry)

    def _rebuild(self) -> None:
        """Rebuild the pool on entering or leaving panic mode (round robin goes on in order)."""
        for entry in self.entries:
            entry.listed = False
        pool = [e for e in self.members.values() if self.panic or e.available]
        for entry in pool:
            entry.listed = True
        self.entries[:] = pool
        self.cursor = bisect_right(pool, self.cursor_seq, key=_seq_of)  # after the last pick
        self.positive = None
        if self.buckets is not None:
            self.buckets.fill(pool)
