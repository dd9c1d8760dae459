"""A breaker's states and every legal transition between them, in one place.

This module imports nothing else of the package, so the error, event and store
modules can name :class:`CircuitState` without importing the breaker.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["OPERATOR_STATES", "TRANSITIONS", "CircuitState", "StateChanges"]


class CircuitState(Enum):
    """Where a breaker is in its life cycle.

    CLOSED, OPEN and HALF_OPEN are the automatic states; FORCED_OPEN (reject
    everything), DISABLED (admit everything, record nothing) and METRICS_ONLY
    (admit and record everything, never transition) are set by an operator.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"


CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED, METRICS_ONLY = CircuitState

OPERATOR_STATES = frozenset({FORCED_OPEN, DISABLED, METRICS_ONLY})
"""The states only an operator enters (``force_open``, ``disable``, ``metrics_only``)."""

TRANSITIONS: dict[CircuitState, frozenset[CircuitState]] = {
    CLOSED: frozenset({OPEN}) | OPERATOR_STATES,
    OPEN: frozenset({HALF_OPEN, CLOSED}) | OPERATOR_STATES,
    HALF_OPEN: frozenset({OPEN, CLOSED}) | OPERATOR_STATES,
    FORCED_OPEN: frozenset({CLOSED}) | OPERATOR_STATES,
    DISABLED: frozenset({CLOSED}) | OPERATOR_STATES,
    METRICS_ONLY: frozenset({CLOSED}) | OPERATOR_STATES,
}
"""Every legal transition. The automatic ones are CLOSED -> OPEN, OPEN -> HALF_OPEN and
HALF_OPEN -> OPEN | CLOSED; an operator may move any state to an operator state, and
``reset()`` any state to CLOSED. A breaker with a store also adopts whatever state its
fleet is in (``CircuitBreaker.adopt``), which may skip states."""

StateChanges = list[tuple[CircuitState, CircuitState]]
"""Transitions made under a breaker's lock, ``(old, new)`` each, announced after it."""
