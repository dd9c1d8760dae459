"""What to retry: ``retry_on`` predicates and :class:`RetryAfter` (and the backoff's cap).

Pure functions of their inputs: the retry engine asks them; nothing here sleeps
or reads a clock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Literal

from ..errors import ServiceMeshError

__all__ = ["JITTER_MODES", "RetryAfter", "RetryOn", "cap_attempt", "retry_predicate", "verdict"]

logger = logging.getLogger("codomyrmex.service_mesh")

JITTER_MODES = ("none", "full", "equal", "decorrelated")


class RetryAfter:
    """What a ``retry_on`` predicate returns to retry after ``seconds`` instead of the backoff.

    ``RetryAfter(0)`` retries at once (``Retry-After: 0``); the wait is capped by
    ``max_delay`` and a negative one means now. Any other return value is judged by
    its truthiness: true retries with the policy's backoff, false raises at once.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, got {seconds!r}")
        if math.isnan(seconds):
            raise ValueError(f"seconds must not be NaN, got {seconds!r}")
        self.seconds = float(seconds)

    def __repr__(self) -> str:
        return f"RetryAfter({self.seconds:g})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryAfter) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(self.seconds)


RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], object]
"""Exception types to retry, or a predicate ``exc -> truthy`` (or a :class:`RetryAfter`)."""


def verdict(
    retryable: Callable[[BaseException], object], exc: BaseException
) -> RetryAfter | Literal[True] | None:
    """``retryable``'s answer for ``exc``: True (back off), a RetryAfter, or None (stop).

    A predicate that raises is logged and ends the call with ``exc`` itself.
    """
    try:
        answer = retryable(exc)
    except Exception:
        logger.exception("retry_on predicate raised; not retrying")
        return None
    if isinstance(answer, RetryAfter):
        return answer
    try:
        return True if answer else None
    except Exception:  # a value whose truth cannot be told
        logger.exception("retry_on predicate returned %r; not retrying", type(answer))
        return None


def retry_predicate(retry_on: RetryOn | None) -> Callable[[BaseException], object]:
    """Turn ``retry_on`` into a predicate, validating it."""
    if retry_on is None:
        return default_retryable
    if isinstance(retry_on, type):
        if not issubclass(retry_on, BaseException):
            raise TypeError(f"retry_on must be exception types or a predicate, got {retry_on!r}")
        types: tuple[type[BaseException], ...] = (retry_on,)
    elif isinstance(retry_on, tuple):
        if not retry_on or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError(f"retry_on must hold exception types, got {retry_on!r}")
        types = retry_on
    elif callable(retry_on):
        return retry_on
    else:
        raise TypeError(f"retry_on must be exception types or a predicate, got {retry_on!r}")

    def is_retryable(exc: BaseException) -> bool:
        return isinstance(exc, types)

    return is_retryable


def default_retryable(exc: BaseException) -> bool | RetryAfter:
    """Every ``Exception`` but the mesh's rejections; a failure's ``retry_after`` is honoured.

    A rejection is a :class:`ServiceMeshError` that is not ``retryable`` (an open
    circuit, no healthy instance, a full bulkhead, an exceeded limit).
    """
    if not isinstance(exc, Exception) or (isinstance(exc, ServiceMeshError) and not exc.retryable):
        return False
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
        return RetryAfter(retry_after)
    return True


def cap_attempt(initial: float, cap: float, base: float) -> float:
    """The first attempt number whose backoff reaches ``cap`` (inf if it never does)."""
    if initial >= cap:
        return 0
    if initial <= 0.0 or base <= 1.0:
        return math.inf
    return max(0, math.ceil((math.log(cap) - math.log(initial)) / math.log(base)))
