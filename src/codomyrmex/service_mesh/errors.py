"""The mesh's exception hierarchy: one base class, one subclass per way a call is refused."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .breaker.state import CircuitState

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "LimitExceededError",
    "NoHealthyInstanceError",
    "ServiceMeshError",
]


class ServiceMeshError(Exception):
    """Base class of every error the mesh raises itself (never of a wrapped call's error)."""

    retryable: ClassVar[bool] = False
    """Whether the default retry policy retries it. The mesh's rejections (an open
    circuit, no instance, a full bulkhead) are not: retrying would only add load."""


class CircuitOpenError(ServiceMeshError):
    """A circuit breaker refused the call without running it.

    ``retry_after`` is the number of seconds until the breaker will admit a probe
    (0.0 when it is half-open and its probe slots are all taken).
    """

    # Raised on every rejection, so construction stays in C: the values live in
    # ``args`` (name, state, retry_after) and are read back through properties.
    if TYPE_CHECKING:

        def __init__(self, name: str, state: CircuitState, retry_after: float) -> None: ...

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self.args[0]  # type: ignore[no-any-return]

    @property
    def state(self) -> CircuitState:
        """The state that refused the call."""
        return self.args[1]  # type: ignore[no-any-return]

    @property
    def retry_after(self) -> float:
        """Seconds until a probe can be admitted (0.0 when half-open slots are full)."""
        return self.args[2]  # type: ignore[no-any-return]

    def __str__(self) -> str:
        wait = self.retry_after
        when = "until an operator resets it" if math.isinf(wait) else f"retry after {wait:.3f}s"
        return f"circuit {self.name!r} is {self.state.value}; {when}"


class NoHealthyInstanceError(ServiceMeshError):
    """The load balancer had no healthy instance to pick for ``service_name``."""

    def __init__(self, service_name: str) -> None:
        super().__init__(service_name)
        self.service_name = service_name

    def __str__(self) -> str:
        return f"no healthy instance of service {self.service_name!r}"


class BulkheadFullError(ServiceMeshError):
    """A bulkhead refused the call: all ``max_concurrent`` slots were taken and the wait
    queue was full (``reason="full"``) or the wait timed out (``reason="queue_timeout"``).
    """

    def __init__(self, name: str, max_concurrent: int, reason: str) -> None:
        super().__init__(name, max_concurrent, reason)
        self.name = name
        self.max_concurrent = max_concurrent
        self.reason = reason

    def __str__(self) -> str:
        label = f"bulkhead {self.name!r}" if self.name else "bulkhead"
        return f"{label} is full ({self.max_concurrent} concurrent calls; {self.reason})"


class LimitExceededError(ServiceMeshError):
    """An overload limit refused the call without running it (see ``limits``).

    ``kind`` is ``"concurrency_limit"`` (``limit`` calls were already in flight) or
    ``"rate_limit"`` (the rate was spent; ``limit`` is the rate per second). ``retry_after``
    is the number of seconds until a rate limiter would admit the call (0.0 when unknown).
    """

    def __init__(self, name: str, kind: str, limit: float, retry_after: float = 0.0) -> None:
        super().__init__(name, kind, limit, retry_after)
        self.name = name
        self.kind = kind
        self.limit = limit
        self.retry_after = retry_after

    def __str__(self) -> str:
        label = f"{self.kind.replace('_', ' ')} {self.name!r}" if self.name else self.kind
        if self.kind == "rate_limit":
            return f"{label} exceeded ({self.limit:g}/s); retry after {self.retry_after:.3f}s"
        return f"{label} exceeded ({self.limit:g} calls in flight)"
