"""Compatibility: the state-store seam now lives in :mod:`.breaker.store`."""

from __future__ import annotations

from .breaker.store import BreakerLink, BreakerStore, SharedState, StoredBreaker

__all__ = ["BreakerLink", "BreakerStore", "SharedState", "StoredBreaker"]
