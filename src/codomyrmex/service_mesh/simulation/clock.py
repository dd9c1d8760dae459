"""An asyncio event loop on virtual time: waiting costs nothing, the clock jumps ahead.

``loop.time()`` is the virtual clock. When no callback is ready the loop does
not block in ``select``: it moves the clock to the next scheduled timer, so
``asyncio.sleep``, ``wait_for`` timeouts and ``call_later`` all run as a
discrete-event simulation, in order and deterministically, as fast as the CPU
allows. Real I/O is not supported (there is none to wait for).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")


class _VirtualSelector(selectors.SelectSelector):
    """A selector whose ``select(timeout)`` advances virtual time instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("the simulation is stuck: nothing is scheduled and nothing is ready")
        if timeout > 0.0:
            self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is virtual and starts at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual = _VirtualSelector()
        self._virtual.now = start
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(coro: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """Run ``coro`` to completion on a fresh :class:`VirtualTimeLoop`."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
