"""Who hears of a breaker's transitions: its state listeners, its subscribers and the log.

A state listener is written either way, ``(breaker, old, new)`` or ``(old, new)``;
:func:`adapt_listener` turns both into the first. :func:`announce` delivers
transitions that the breaker made under its lock, after it has let go of it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..events import EventListener, StateTransition, ThresholdCrossed, publish
from .state import FORCED_OPEN, OPEN, CircuitState, StateChanges

if TYPE_CHECKING:
    from .breaker import CircuitBreaker

__all__ = ["StateListener", "adapt_listener", "announce", "announce_crossing"]

StateListener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]
"""Called as ``listener(breaker, old_state, new_state)`` after each transition
(a listener taking two arguments is called as ``listener(old_state, new_state)``)."""

logger = logging.getLogger("codomyrmex.service_mesh")


class _OldNew:
    """A two-argument listener ``(old, new)``, called with the breaker left out.

    Compares equal to the function it wraps, so ``remove_listener`` finds it.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[CircuitState, CircuitState], object]) -> None:
        self.fn = fn

    def __call__(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        self.fn(old, new)

    def __eq__(self, other: object) -> bool:
        return other is self or other == self.fn

    def __hash__(self) -> int:
        return hash(self.fn)


def adapt_listener(listener: Callable[..., object]) -> StateListener:
    """``listener`` as a three-argument listener; TypeError if it takes neither form."""
    try:
        signature = inspect.signature(listener)
    except (TypeError, ValueError):  # no signature to read (some builtins): trust it
        return cast(StateListener, listener)
    for form in (3, 2):
        try:
            signature.bind(*([None] * form))
        except TypeError:
            continue
        return cast(StateListener, listener) if form == 3 else _OldNew(listener)
    raise TypeError(
        f"listener must take (breaker, old, new) or (old, new), got {listener!r}{signature}"
    )


def announce(
    breaker: CircuitBreaker,
    listeners: tuple[StateListener, ...],
    subscribers: tuple[EventListener, ...],
    changes: StateChanges,
) -> None:
    """Log each transition of ``breaker``, call its listeners, publish a StateTransition."""
    name = breaker.name
    for old, new in changes:
        level = logging.WARNING if new is OPEN or new is FORCED_OPEN else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "circuit %s: %s -> %s",
                name,
                old.value,
                new.value,
                extra={"breaker": name, "old_state": old.value, "new_state": new.value},
            )
        for listener in listeners:
            try:
                listener(breaker, old, new)
            except Exception:
                logger.exception("state listener of circuit %s raised", name)
        if subscribers:
            publish(subscribers, StateTransition(name, old, new))


def announce_crossing(subscribers: tuple[EventListener, ...], event: ThresholdCrossed) -> None:
    """Log and publish that a METRICS_ONLY breaker would have opened."""
    logger.warning(
        "circuit %s (metrics only) would open: %s %g >= %g",
        event.source,
        event.measure,
        event.value,
        event.threshold,
        extra={"breaker": event.source, "measure": event.measure},
    )
    if subscribers:
        publish(subscribers, event)
