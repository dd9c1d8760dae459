"""Compat: the bulkhead lives in :mod:`codomyrmex.service_mesh.proxy.stages.bulkhead`."""

from __future__ import annotations

from .proxy.stages.bulkhead import Bulkhead

__all__ = ["Bulkhead"]
