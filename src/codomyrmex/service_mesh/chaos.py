"""Chaos: inject faults (an exception, a result, latency) into calls at a configured rate.

A :class:`Chaos` strategy wraps any function, sync or async, as a decorator or
as a proxy's handler (``proxy.call(chaos.wrap(handler), ...)``), so faults can
be injected behind every stage of the mesh. Whether a call is hit is decided
by a seeded :class:`random.Random`, latency goes through an injectable sleep,
and every injected fault is published as a :class:`FaultInjected` event.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, ParamSpec, TypeVar, cast

from ._validate import check_callable, check_number, check_str
from .events import EventListener, FaultInjected, Publisher, publish

__all__ = ["Chaos", "FaultInjected"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("codomyrmex.service_mesh")


class _NoResult:
    def __repr__(self) -> str:
        return "NO_RESULT"


_NO_RESULT: Final = _NoResult()

ExceptionSpec = BaseException | Callable[[], BaseException]
"""An exception to raise (a copy is raised each time), or a class or factory making one."""


class Chaos(Publisher):
    """Fault injection at ``rate`` (0.0 to 1.0) of the calls it wraps.

    Configure at least one fault: ``exception`` (raised instead of running the
    call), ``result`` (returned instead of running the call) or ``latency``
    (seconds slept before the call, or before the exception or result). A hit
    call always gets every configured fault; ``exception`` and ``result``
    exclude each other. ``applies_to(*args, **kwargs)`` narrows the calls that
    can be hit (e.g. one instance, for a proxy handler).

    Randomness is ``rng`` (or ``random.Random(seed)``); latency goes through
    ``sleep`` / ``async_sleep``, so tests never wait. ``enable()``/``disable()``
    and ``rate`` change it at runtime.

    Events (:meth:`subscribe`): a :class:`FaultInjected` for every injected fault.
    """

    __slots__ = (
        "_enabled",
        "_exception",
        "_lock",
        "_random",
        "_rate",
        "_subscribers",
        "applies_to",
        "async_sleep",
        "latency",
        "name",
        "result",
        "sleep",
    )

    def __init__(
        self,
        name: str = "chaos",
        *,
        rate: float,
        exception: ExceptionSpec | None = None,
        result: Any = _NO_RESULT,
        latency: float = 0.0,
        seed: int | None = None,
        rng: random.Random | None = None,
        enabled: bool = True,
        applies_to: Callable[..., bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        check_str("name", name)
        latency = check_number("latency", latency, 0.0)
        if exception is not None and not (
            isinstance(exception, BaseException) or callable(exception)
        ):
            raise TypeError(
                "exception must be an exception, an exception class or a factory, "
                f"got {exception!r}"
            )
        if exception is not None and result is not _NO_RESULT:
            raise ValueError("exception and result exclude each other; configure one of them")
        if exception is None and result is _NO_RESULT and latency == 0.0:
            raise ValueError("configure a fault: exception, result or latency > 0")
        if rng is not None and seed is not None:
            raise ValueError("pass either rng or seed, not both")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {enabled!r}")
        if applies_to is not None:
            check_callable("applies_to", applies_to)
        check_callable("sleep", sleep)
        check_callable("async_sleep", async_sleep)
        self.name = name
        self._rate = _check_rate(rate)
        self._exception = exception
        self.result = result
        self.latency = latency
        self._random = (rng if rng is not None else random.Random(seed)).random
        self._enabled = enabled
        self.applies_to = applies_to
        self.sleep = sleep
        self.async_sleep = async_sleep
        self._lock = threading.Lock()
        self._subscribers: tuple[EventListener, ...] = ()

    def __repr__(self) -> str:
        faults = []
        if self.latency:
            faults.append(f"latency={self.latency}")
        if self._exception is not None:
            faults.append(f"exception={self._exception!r}")
        if self.result is not _NO_RESULT:
            faults.append(f"result={self.result!r}")
        state = "enabled" if self._enabled else "disabled"
        return f"Chaos({self.name!r}, rate={self._rate}, {', '.join(faults)}, {state})"

    # -- runtime control ----------------------------------------------------------

    @property
    def rate(self) -> float:
        """Fraction of eligible calls hit, from 0.0 (none) to 1.0 (all)."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = _check_rate(value)

    @property
    def enabled(self) -> bool:
        """Whether faults are injected; a disabled strategy only runs the call."""
        return self._enabled

    def enable(self) -> None:
        """Start injecting faults."""
        self._enabled = True

    def disable(self) -> None:
        """Stop injecting faults (calls run untouched and draw no random number)."""
        self._enabled = False

    # -- events -----------------------------------------------------------------

    # -- wrapping -----------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorator form of :meth:`wrap`."""
        return self.wrap(fn)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` with faults injected; a coroutine function gets an async wrapper."""
        check_callable("fn", fn)
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_call_with_chaos(*args: Any, **kwargs: Any) -> Any:
                if self._enabled and self._hit(args, kwargs):
                    fault = self._fault()
                    if self.latency:
                        await self.async_sleep(self.latency)
                    if fault is not None:
                        raise fault
                    if self.result is not _NO_RESULT:
                        return self.result
                return await afn(*args, **kwargs)

            return cast(Callable[P, R], async_call_with_chaos)

        @functools.wraps(fn)
        def call_with_chaos(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._enabled and self._hit(args, kwargs):
                fault = self._fault()
                if self.latency:
                    self.sleep(self.latency)
                if fault is not None:
                    raise fault
                if self.result is not _NO_RESULT:
                    return cast(R, self.result)
            return fn(*args, **kwargs)

        return call_with_chaos

    def execute(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` with faults injected."""
        return self.wrap(fn)(*args, **kwargs)

    async def execute_async(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)`` with faults injected (latency via ``async_sleep``)."""
        wrapped = self.wrap(cast(Callable[P, Any], _as_coroutine_function(fn)))
        return cast(R, await wrapped(*args, **kwargs))

    # -- the engine ---------------------------------------------------------------

    def _hit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether this call gets the faults (one random draw per eligible call)."""
        if self.applies_to is not None:
            try:
                if not self.applies_to(*args, **kwargs):
                    return False
            except Exception:
                logger.exception("applies_to of chaos %s raised; not injecting", self.name)
                return False
        return self._random() < self._rate

    def _fault(self) -> BaseException | None:
        """Announce the fault of a hit call; return the exception to raise, if any."""
        error: BaseException | None = None
        spec = self._exception
        if spec is not None:
            error = copy.copy(spec) if isinstance(spec, BaseException) else spec()
            if not isinstance(error, BaseException):
                raise TypeError(f"exception factory of chaos {self.name} returned {error!r}")
            kind = "exception"
        elif self.result is not _NO_RESULT:
            kind = "result"
        else:
            kind = "latency"
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "chaos %s: injecting %s",
                self.name,
                kind,
                extra={"chaos": self.name, "fault": kind, "delay": self.latency},
            )
        if self._subscribers:
            publish(self._subscribers, FaultInjected(self.name, kind, self.latency, error))
        return error


def _check_rate(rate: Any) -> float:
    value = check_number("rate", rate, 0.0)
    if value > 1.0:
        raise ValueError(f"rate must be between 0.0 and 1.0, got {rate!r}")
    return value


def _as_coroutine_function(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``fn`` as a coroutine function, so :meth:`Chaos.wrap` picks the async path."""
    if inspect.iscoroutinefunction(fn):
        return fn

    async def call(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return call
