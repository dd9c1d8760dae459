"""Compat: hedging lives in :mod:`codomyrmex.service_mesh.proxy.stages.hedging`."""

from __future__ import annotations

from .proxy.stages.hedging import RejectedResult, hedged, hedged_async

__all__ = ["RejectedResult", "hedged", "hedged_async"]
