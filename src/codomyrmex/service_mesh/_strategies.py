"""The tables behind the WEIGHTED, RING_HASH and MAGLEV strategies, and where they are built.

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

Weights are used relative to the heaviest, so no sum or product of weights can
overflow, however large or small they are.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
from collections.abc import Callable

__all__ = ["BUILDER", "TableBuilder", "alias_table", "on_event_loop", "ring_counts"]

logger = logging.getLogger("codomyrmex.service_mesh")

_MIN_RELATIVE = 1e-300  # relative weights below this are treated as this (no underflow to 0)


def relative_weights(weights: list[float]) -> list[float]:
    """Each weight divided by the largest, in ``(0, 1]`` (weights must be positive)."""
    top = max(weights)
    return [max(w / top, _MIN_RELATIVE) for w in weights]


def alias_table(weights: list[float]) -> tuple[list[float], list[int]]:
    """Vose's alias table for positive ``weights``: ``(prob, other)``, one draw per pick."""
    n = len(weights)
    prob = [1.0] * n
    other = list(range(n))
    if not n:
        return prob, other
    relative = relative_weights(weights)
    total = math.fsum(relative)  # at most n: cannot overflow
    scaled = [w * n / total for w in relative]
    small = [i for i, s in enumerate(scaled) if s < 1.0]
    large = [i for i, s in enumerate(scaled) if s >= 1.0]
    while small and large:
        s = small.pop()
        g = large[-1]
        prob[s] = scaled[s]
        other[s] = g
        scaled[g] -= 1.0 - scaled[s]
        if scaled[g] < 1.0:
            small.append(large.pop())
    return prob, other


def ring_counts(weights: list[float], replicas: int, min_size: int, max_size: int) -> list[int]:
    """How many ring points each instance gets: in proportion to its normalised weight.

    As Envoy, only the ratios of the weights matter, never their scale: the
    lightest instance gets ``replicas`` points and each other one ``replicas x
    weight / lightest``, rounded. A ring with fewer than ``min_size`` points in
    all is scaled up, one with more than ``max_size`` scaled down, every count
    alike (each at least 1). Between the two bounds, adding or removing an
    instance changes no other instance's points, so no key moves between the
    instances that stay.
    """
    if not weights:
        return []
    relative = relative_weights(weights)
    total = math.fsum(relative)
    scale = replicas / min(relative)  # points per unit of relative weight
    if scale * total < min_size:
        scale = min_size / total
    if scale * total > max_size:
        scale = max_size / total
    return [max(1, round(w * scale)) for w in relative]


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
