"""When and where the WEIGHTED, RING_HASH and MAGLEV tables are built.

The tables are built over the *members* of a balancer (the registered
instances of positive weight), not over the instances that are pickable right
now: a health flip, an ejection or panic mode changes nothing here, the pick
just walks past an instance that is not pickable (on the ring or table) or
draws again (alias table). Only a change of membership or weight calls for a
new table, and that is built from a snapshot outside the balancer's lock, then
swapped in atomically, while picks go on with the old table:

- in a thread that is running no event loop, by the caller whose pick found
  the table out of date, before it takes the lock (so single-threaded code sees
  the new members at once);
- from an event loop, by one background thread (:data:`BUILDER`), so the loop
  never waits for a table (new members are picked once it is swapped in).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .strategies.base import Strategy, TabledStrategy

if TYPE_CHECKING:
    from .pool import Entry, Pool

__all__ = ["BUILDER", "TableBuilder", "Tables", "on_event_loop"]

logger = logging.getLogger("codomyrmex.service_mesh")

_Snapshot = tuple[TabledStrategy, int, list["Entry"], list[float]]


def on_event_loop() -> bool:
    """Whether this thread is running an asyncio event loop right now."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class TableBuilder:
    """One daemon thread that runs table builds handed to it, in order (started on first use)."""

    def __init__(self, name: str = "codomyrmex-tables") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the builder thread (never blocks; safe under any lock)."""
        self._jobs.put(job)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    thread.start()
                    self._thread = thread

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # a bug in a build must not stop later builds
                logger.exception("building a load-balancing table failed")


BUILDER = TableBuilder()
"""The builder the load balancers use for builds requested from an event loop."""


class Tables:
    """Keeps one balancer's current strategy's table up to date (internal API).

    ``stale`` is True when the current strategy keeps a table and it is missing
    or older than the membership generation ``gen``; ``changed`` is called
    whenever it is recomputed, so the balancer can keep the one flag its picks
    test. The balancer's ``lock`` guards everything else.
    """

    __slots__ = ("_building", "_changed", "_lock", "_pool", "gen", "stale", "strategy")

    strategy: Strategy
    """The balancer's current strategy (set by :meth:`use`)."""

    def __init__(self, lock: threading.Lock, pool: Pool, changed: Callable[[], None]) -> None:
        self._lock = lock
        self._pool = pool
        self._changed = changed
        self._building = False
        self.gen = 0
        self.stale = False

    def use(self, strategy: Strategy) -> None:
        """The balancer's strategy is now ``strategy`` (lock held)."""
        self.strategy = strategy
        self.update_stale()

    def invalidate(self) -> None:
        """Membership or a weight changed (lock held): the tables are out of date."""
        self._pool.positive = None
        self.gen += 1
        self.update_stale()

    def update_stale(self) -> None:
        self.stale = self.strategy.table_stale(self.gen)
        self._changed()

    def build(self) -> None:
        """Bring the table up to date in this thread (see ``LoadBalancer.build_tables``)."""
        with self._lock:
            if not self.stale or self._building:
                return
            self._building = True
            snapshot = self._snapshot()
        table = self._build_claimed(snapshot)
        with self._lock:
            self._building = False
            self._install(snapshot, table)

    def settle(self) -> None:
        """A pick found the table out of date: rebuild it, never on an event loop's thread."""
        if on_event_loop():
            with self._lock:
                if self._building or not self.stale:
                    return
                strategy = self.strategy
                if isinstance(strategy, TabledStrategy) and strategy.table is not None:
                    # Picks go on with the current table until the new one is in.
                    self._building = True
                    BUILDER.submit(self._build_in_background)
                    return
        self.build()

    def build_inline(self) -> tuple[Any, ...]:
        """Build the first table under the lock (only when a pick finds none at all)."""
        snapshot = strategy, gen, members, weights = self._snapshot()
        table = strategy.build(members, weights, gen)
        self._install(snapshot, table)
        return table

    def _build_in_background(self) -> None:
        """The builder thread's job: build until the table is current."""
        while True:
            with self._lock:
                if not self.stale:
                    self._building = False
                    return
                snapshot = self._snapshot()
            table = self._build_claimed(snapshot)
            with self._lock:
                self._install(snapshot, table)

    def _build_claimed(self, snapshot: _Snapshot) -> tuple[Any, ...]:
        """Build ``snapshot``'s table while this thread holds the claim to build; a build
        that raises gives the claim back."""
        strategy, gen, members, weights = snapshot
        try:
            return strategy.build(members, weights, gen)
        except BaseException:
            with self._lock:
                self._building = False
            raise

    def _snapshot(self) -> _Snapshot:
        """What a table is built from (lock held): the members of positive weight."""
        strategy = self.strategy
        assert isinstance(strategy, TabledStrategy)  # only a tabled strategy's table is stale
        members = [e for e in self._pool.members.values() if e.inst.weight > 0]
        return strategy, self.gen, members, [e.inst.weight for e in members]

    def _install(self, snapshot: _Snapshot, table: tuple[Any, ...]) -> None:
        """Swap a built table in (lock held), unless a newer one is there already."""
        snapshot[0].install(table)
        self.update_stale()
