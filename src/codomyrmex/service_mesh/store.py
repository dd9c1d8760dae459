"""Where a circuit breaker's state may live beyond its process: the state-store seam.

A breaker built without a store keeps its state in memory, exactly as it always
did. ``CircuitBreaker(name, config, store=some_store)`` calls ``some_store.bind``
once and then talks to the returned :class:`BreakerLink` only on slow paths: a
recorded failure, a success while failures are counted (or in window mode), a
HALF_OPEN admission or release, and an operator action. The CLOSED success fast
path and the OPEN rejection path never reach the store; the link pushes the
fleet's transitions into the breaker instead (``breaker._adopt``).

A link never raises to the breaker. While its store is unreachable it reports
``online = False`` and the breaker decides on its own state, as it would without
a store. :mod:`codomyrmex.service_mesh.integrations.redis` has the Redis store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .circuit_breaker import CircuitBreaker, CircuitState

__all__ = ["BreakerLink", "BreakerStore", "SharedState"]


@dataclass(frozen=True, slots=True)
class SharedState:
    """One breaker's state as the fleet sees it: what a store reads, returns and publishes."""

    state: CircuitState
    version: int
    """Grows with every fleet-wide transition; an older version never replaces a newer one."""
    failures: int = 0
    """Consecutive failures counted by the whole fleet while CLOSED (consecutive mode)."""
    retry_after: float = 0.0
    """Seconds until an OPEN breaker admits probes, measured by the store's clock."""
    reopens: int = 0
    """Re-opens from HALF_OPEN since the last close (drives ``open_backoff_multiplier``)."""
    last_failure_age: float | None = None
    """Seconds since the fleet last recorded a failure (store's clock), None if unknown."""


class BreakerLink(Protocol):
    """One breaker's connection to a store. No method raises; each returns promptly."""

    @property
    def online(self) -> bool:
        """Whether the fleet decides transitions now (False: the breaker decides locally)."""
        ...

    def acquire_probe(self, epoch: int) -> bool | None:
        """Ask for one of the fleet's HALF_OPEN probe slots for a call admitted under ``epoch``.

        True: run the call as a probe. False: refused (the link has already made
        the breaker adopt the fleet's state). None: the store is unreachable and
        the breaker's local slot decides.
        """
        ...

    def record(self, epoch: int, state: CircuitState, success: bool, slow: bool) -> bool:
        """Report one outcome observed in ``state`` (CLOSED or HALF_OPEN; ``epoch`` 0: manual).

        True when the store took it (reported now or batched for later); False when
        it could not, and the breaker must judge the outcome itself.
        """
        ...

    def release(self, epoch: int) -> None:
        """Give back the probe slot, if any, held by a call admitted under ``epoch``."""
        ...

    def operate(self, state: CircuitState) -> None:
        """An operator moved the breaker to ``state`` (reset, force_open, ...): tell the fleet."""
        ...


class BreakerStore(Protocol):
    """Something that can share breakers' state: returns one link per breaker."""

    def bind(self, breaker: CircuitBreaker) -> BreakerLink:
        """Join ``breaker`` to the shared state of its name without changing that state.

        The link may make the breaker adopt the fleet's current state before it
        returns (silently: a breaker's first state is not a transition).
        """
        ...
