"""The mesh's exception hierarchy: one base class, one subclass per way a call is refused."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .circuit_breaker import CircuitState

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
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
