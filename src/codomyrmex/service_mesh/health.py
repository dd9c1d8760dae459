"""Compatibility module: health checks now live in :mod:`.balancing.health`."""

from __future__ import annotations

from .balancing.health import HealthCheckConfig, HealthChecker
from .balancing.probes import HttpProbe, Probe, TcpProbe

__all__ = ["HealthCheckConfig", "HealthChecker", "HttpProbe", "Probe", "TcpProbe"]
