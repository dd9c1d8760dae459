"""Compatibility module: the load balancer now lives in :mod:`.balancing`."""

from __future__ import annotations

from .balancing.balancer import LoadBalancer
from .balancing.connection import ABORTED, Connection
from .balancing.instance import MembershipChange, ServiceInstance
from .balancing.pool import Entry as _Entry  # noqa: F401  (still importable from here)
from .balancing.routing import current_routing_key, routing_key
from .balancing.slow_start import SlowStartConfig
from .balancing.strategies import LoadBalancerStrategy

__all__ = [
    "ABORTED",
    "Connection",
    "LoadBalancer",
    "LoadBalancerStrategy",
    "MembershipChange",
    "ServiceInstance",
    "SlowStartConfig",
    "current_routing_key",
    "routing_key",
]
