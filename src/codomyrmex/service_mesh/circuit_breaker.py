"""Compatibility: the circuit breaker now lives in :mod:`.breaker` (one module per concept)."""

from __future__ import annotations

from .breaker.breaker import CircuitBreaker, Clock, Permit, StateListener
from .breaker.config import DEFAULT_FAILURE_RATE, CircuitBreakerConfig
from .breaker.state import TRANSITIONS, CircuitState

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED, METRICS_ONLY = CircuitState

__all__ = [
    "CLOSED",
    "DEFAULT_FAILURE_RATE",
    "DISABLED",
    "FORCED_OPEN",
    "HALF_OPEN",
    "METRICS_ONLY",
    "OPEN",
    "TRANSITIONS",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitState",
    "Clock",
    "Permit",
    "StateListener",
]
