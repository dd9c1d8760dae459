"""Testing switches: no backoff waits and capped attempts, process-wide (as stamina's)."""

from __future__ import annotations

from .._validate import check_int

__all__ = ["Switches", "disable_retries", "set_testing"]


class Switches:
    """The process-wide testing switches (see :func:`set_testing`); read by the engine."""

    active = False
    attempts: int | None = None


class _Switch:
    """Applies a testing setting at once; as a context manager, restores the old one on exit."""

    def __init__(self, active: bool, attempts: int | None) -> None:
        self._previous = (Switches.active, Switches.attempts)
        Switches.active, Switches.attempts = active, attempts

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        Switches.active, Switches.attempts = self._previous


def set_testing(testing: bool = True, *, attempts: int | None = 1) -> _Switch:
    """In tests: make every backoff wait zero and cap every call at ``attempts`` attempts.

    Takes effect at once; used as ``with set_testing(...):`` it is undone on exit.
    ``attempts=None`` keeps each policy's own number of attempts.
    """
    if not isinstance(testing, bool):
        raise TypeError(f"testing must be a bool, got {testing!r}")
    if attempts is not None:
        check_int("attempts", attempts, 1)
    return _Switch(testing, attempts if testing else None)


def disable_retries() -> _Switch:
    """Turn retries off everywhere: every call makes exactly one attempt."""
    return _Switch(True, 1)
