"""One background thread that runs callbacks after a delay (the default ``timer`` of a balancer).

Outlier detection schedules each ejection's end here, so an ejected instance
returns (and :class:`~codomyrmex.service_mesh.events.InstanceReturned` is
published) when its time is up, even if no call comes to notice it. Callbacks
run in the timer thread, one at a time; they must be short and must not raise
(one that does is logged).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["TIMER", "Timer"]

logger = logging.getLogger("codomyrmex.service_mesh")


class Timer:
    """``call_later(delay, callback)`` on one lazily started daemon thread."""

    def __init__(self, name: str = "codomyrmex-timer") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the timer thread ``delay`` seconds from now (never blocks)."""
        due = time.monotonic() + max(delay, 0.0)
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._order), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.call_later(delay, callback)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._heap:
                        remaining = self._heap[0][0] - time.monotonic()
                        if remaining <= 0.0:
                            _, _, callback = heapq.heappop(self._heap)
                            break
                        self._cond.wait(remaining)
                    else:
                        self._cond.wait()
            try:
                callback()
            except Exception:
                logger.exception("a timer callback failed")


TIMER = Timer()
"""The shared timer the load balancers use unless given their own ``timer``."""
