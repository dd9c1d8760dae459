"""Argument checks shared by every constructor: each error names the field and the value."""

from __future__ import annotations

import math
from typing import Any, TypeVar

T = TypeVar("T")


def check_int(field: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value!r}")
    return value


def check_number(field: str, value: Any, minimum: float = 0.0) -> float:
    """Return ``value`` as a float if it is a finite real number of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{field} must be finite, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value!r}")
    return float(value)


def check_optional_number(field: str, value: Any, minimum: float = 0.0) -> float | None:
    """Like :func:`check_number`, but None passes through."""
    return None if value is None else check_number(field, value, minimum)


def check_bool(field: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{field} must be a bool, got {value!r}")
    return value


def check_instance(field: str, value: Any, kind: type[T], described: str = "") -> T:
    """Return ``value`` if it is a ``kind``; the TypeError says ``described`` (default:
    the type's name) and the value."""
    if not isinstance(value, kind):
        name = described or kind.__name__
        article = "" if described else "an " if name[0] in "AEIOU" else "a "
        raise TypeError(f"{field} must be {article}{name}, got {value!r}")
    return value


def check_callable(field: str, value: T) -> T:
    """Return ``value`` if it is callable."""
    if not callable(value):
        raise TypeError(f"{field} must be callable, got {value!r}")
    return value


def check_str(field: str, value: Any) -> str:
    """Return ``value`` if it is a non-empty string."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {value!r}")
    if not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return value
