"""Where a circuit breaker's state may live beyond its process: the state-store seam.

A breaker built without a store keeps its state in memory. ``CircuitBreaker(name,
config, store=some_store)`` calls ``some_store.bind(breaker)`` once and then talks to
the returned :class:`BreakerLink` only on slow paths: a recorded failure, a success
while failures are counted (or in window mode), a HALF_OPEN admission or release, and
an operator action. The CLOSED success path and the OPEN rejection path never reach
the store.

The other direction is :class:`StoredBreaker`, the part of a breaker a store may use
(internal API for stores, documented here): its ``name``, ``config``, ``stored_state``
and ``retry_after()``, and ``adopt`` + ``announce``, which push the fleet's transitions
into it. A link never raises to the breaker. While its store is unreachable it reports
``online = False`` and the breaker decides on its own state, as it would without a
store. :mod:`codomyrmex.service_mesh.integrations.redis` has the Redis store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .config import CircuitBreakerConfig
from .state import CircuitState, StateChanges

if TYPE_CHECKING:
    from .breaker import CircuitBreaker

__all__ = ["BreakerLink", "BreakerStore", "SharedState", "StoredBreaker"]


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


class StoredBreaker(Protocol):
    """What a store may use of a :class:`~.breaker.CircuitBreaker` (internal API for stores)."""

    @property
    def name(self) -> str:
        """The breaker's name: the key of its shared state."""
        ...

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration (thresholds the store's transitions follow)."""
        ...

    @property
    def stored_state(self) -> CircuitState:
        """The state as last entered, without the lazy OPEN -> HALF_OPEN move that ``state``
        makes: reading it never causes a transition."""
        ...

    def retry_after(self) -> float:
        """Seconds until a probe can be admitted (0.0 unless OPEN; inf when FORCED_OPEN)."""
        ...

    def adopt(self, shared: SharedState) -> StateChanges:
        """Take the fleet's state; return the transitions made, for :meth:`announce`.

        Call it outside any lock the store holds while calling breaker code, or pass
        the result to :meth:`announce` once that lock is released. Adopting without
        announcing is how a newly bound breaker takes its first state silently.
        """
        ...

    def announce(self, changes: StateChanges) -> None:
        """Log the transitions returned by :meth:`adopt` and tell listeners and subscribers."""
        ...


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

        A store needs only what :class:`StoredBreaker` lists, and may say so by
        taking a ``StoredBreaker`` here.

        The link may make the breaker adopt the fleet's current state before it
        returns (silently: a breaker's first state is not a transition).
        """
        ...
