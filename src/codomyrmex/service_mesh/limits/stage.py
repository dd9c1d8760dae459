"""The proxy's overload stages: rate limit, then concurrency limit, around everything inner.

``admission(...)`` returns a context manager for one call, usable with ``with`` and
``async with``: entering takes a rate-limit unit and a concurrency place (or raises
:class:`~codomyrmex.service_mesh.LimitExceededError` and publishes
:class:`~codomyrmex.service_mesh.CallRejected`), leaving reports the call's outcome to
the concurrency limiter. The sync and async forms differ only in how the rate
limiter is asked (an I/O-bound one, such as Redis, is awaited).
"""

from __future__ import annotations

from ..errors import LimitExceededError
from ..events import CallRejected, EventListener, publish
from .limiter import ConcurrencyLimiter, Permit
from .rate import RateLimit

__all__ = ["Admission", "admission"]


class _Unlimited:
    """No overload stage configured: entering and leaving do nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


UNLIMITED = _Unlimited()


class Admission:
    """One call's passage through a proxy's rate limit and concurrency limit."""

    __slots__ = ("_permit", "concurrency_limit", "rate_limit", "source", "subscribers")

    def __init__(
        self,
        rate_limit: RateLimit | None,
        concurrency_limit: ConcurrencyLimiter | None,
        source: str,
        subscribers: tuple[EventListener, ...],
    ) -> None:
        self.rate_limit = rate_limit
        self.concurrency_limit = concurrency_limit
        self.source = source
        self.subscribers = subscribers
        self._permit: Permit | None = None

    def _refuse(self, error: LimitExceededError) -> LimitExceededError:
        if self.subscribers:
            publish(self.subscribers, CallRejected(self.source, error.kind))
        return error

    def _rated(self, wait: float) -> None:
        if wait > 0.0:
            rate = self.rate_limit
            assert rate is not None
            raise self._refuse(LimitExceededError(rate.name, "rate_limit", rate.rate, wait))

    def _admit(self) -> None:
        limiter = self.concurrency_limit
        if limiter is not None:
            permit = limiter.try_acquire()
            if permit is None:
                error = LimitExceededError(limiter.name, "concurrency_limit", limiter.limit)
                raise self._refuse(error)
            self._permit = permit

    def _leave(self, error: BaseException | None) -> None:
        permit = self._permit
        if permit is not None:
            permit.finish(error)

    def __enter__(self) -> Admission:
        if self.rate_limit is not None:
            self._rated(self.rate_limit.try_acquire(1.0))
        self._admit()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._leave(exc)

    async def __aenter__(self) -> Admission:
        if self.rate_limit is not None:
            self._rated(await self.rate_limit.try_acquire_async(1.0))
        self._admit()
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._leave(exc)


def admission(
    rate_limit: RateLimit | None,
    concurrency_limit: ConcurrencyLimiter | None,
    source: str,
    subscribers: tuple[EventListener, ...] = (),
) -> Admission | _Unlimited:
    """The overload stages for one call (a shared no-op when neither is configured)."""
    if rate_limit is None and concurrency_limit is None:
        return UNLIMITED
    return Admission(rate_limit, concurrency_limit, source, subscribers)
