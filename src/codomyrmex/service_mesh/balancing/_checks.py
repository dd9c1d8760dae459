"""Argument checks the balancing configs share (each error names the field and the value)."""

from __future__ import annotations

from typing import Any

from .._validate import check_number


def check_positive(field: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number above zero."""
    number = check_number(field, value, 0.0)
    if number <= 0.0:
        raise ValueError(f"{field} must be > 0, got {value!r}")
    return number


def check_percent(field: str, value: Any, *, allow_zero: bool = True) -> float:
    """Return ``value`` as a float if it is a percentage: 0 (or above 0) to 100."""
    number = check_number(field, value, 0.0)
    if number > 100.0 or (number == 0.0 and not allow_zero):
        low = "0" if allow_zero else "> 0"
        raise ValueError(f"{field} must be a percentage ({low} to 100), got {value!r}")
    return number
