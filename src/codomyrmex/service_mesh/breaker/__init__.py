"""The circuit breaker, one concept per module.

- :mod:`.state`: :class:`CircuitState` and :data:`TRANSITIONS`, every legal transition.
- :mod:`.config`: :class:`CircuitBreakerConfig`, frozen and validated.
- :mod:`.windows`: the sliding windows of call outcomes that rates are read from.
- :mod:`.machine`: the state machine: counts outcomes and makes transitions (no lock, no I/O).
- :mod:`.breaker`: :class:`CircuitBreaker`: admit -> run -> record for every kind of call,
  under one lock; and :class:`Permit`.
- :mod:`.listeners`: state listeners, and how transitions are logged and announced.
- :mod:`.store`: the seam to a shared state store (such as Redis), and the breaker's API
  for stores.
"""

from __future__ import annotations

from .breaker import CircuitBreaker, Clock, Permit, StateListener
from .config import CircuitBreakerConfig
from .state import TRANSITIONS, CircuitState
from .store import BreakerLink, BreakerStore, SharedState, StoredBreaker
from .windows import CountWindow, OutcomeWindow, TimeWindow

__all__ = [
    "TRANSITIONS",
    "BreakerLink",
    "BreakerStore",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitState",
    "Clock",
    "CountWindow",
    "OutcomeWindow",
    "Permit",
    "SharedState",
    "StateListener",
    "StoredBreaker",
    "TimeWindow",
]
