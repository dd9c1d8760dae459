"""The attempt-timeout stage: each async attempt bounded by ``attempt_timeout`` and by
what is left of ``max_elapsed``, timed by the retry policy's :class:`~...timers.Timer`.

A sync attempt cannot be interrupted: sync calls honour ``max_elapsed`` between
attempts (and hedged sync attempts are abandoned at their timeout, see hedging).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...load_balancer import ServiceInstance
    from ...retry.options import RetryPolicy

__all__ = ["timed_attempt"]


async def timed_attempt(
    policy: RetryPolicy,
    started: float | None,
    handler_fn: Callable[..., Any],
    instance: ServiceInstance,
    args: Any,
    kwargs: Any,
) -> Any:
    """Await one attempt within its time limit; running out of time raises ``TimeoutError``
    (so does starting one after the call's deadline)."""
    timeout = policy.attempt_timeout
    if started is not None:
        timeout = policy.engine.remaining(started, timeout)
    if timeout is None:
        return await handler_fn(instance, *args, **kwargs)
    return await policy.timer.wait_for(handler_fn(instance, *args, **kwargs), timeout)
