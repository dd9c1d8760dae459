"""Compatibility: the outcome windows now live in :mod:`.breaker.windows`."""

from __future__ import annotations

from .breaker.windows import CountWindow, OutcomeWindow, TimeWindow

__all__ = ["CountWindow", "OutcomeWindow", "TimeWindow"]
