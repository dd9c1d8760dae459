"""Load balancing: the instances of a service, which of them may be picked, and how.

- :mod:`.instance`: :class:`ServiceInstance`, one reachable copy of a service;
- :mod:`.balancer`: :class:`LoadBalancer`, its lock, pick path and outcomes, with
  :mod:`.membership` (registering, health, ejection by a caller) and :mod:`.pool`
  (the pickable instances, panic mode);
- :mod:`.strategies`: one module per family of :class:`LoadBalancerStrategy`, behind
  a small protocol; :mod:`.tables`, :mod:`.hashing` and :mod:`.weights` hold the
  tables some of them pick from, :mod:`.buckets` the least-loaded index;
- :mod:`.slow_start`, :mod:`.routing` (routing keys), :mod:`.connection`;
- :mod:`.outlier` (the detector) and :mod:`.ejection` (its decisions applied);
- :mod:`.probes` and :mod:`.health`: active health checks.
"""

from __future__ import annotations

from .balancer import LoadBalancer
from .connection import ABORTED, Connection
from .health import HealthCheckConfig, HealthChecker
from .instance import MembershipChange, ServiceInstance
from .outlier import DEFAULT_OUTLIER_DETECTION, OutlierDetectionConfig, OutlierDetector
from .probes import HttpProbe, Probe, TcpProbe
from .routing import current_routing_key, routing_key
from .slow_start import SlowStartConfig
from .strategies import LoadBalancerStrategy

__all__ = [
    "ABORTED",
    "DEFAULT_OUTLIER_DETECTION",
    "Connection",
    "HealthCheckConfig",
    "HealthChecker",
    "HttpProbe",
    "LoadBalancer",
    "LoadBalancerStrategy",
    "MembershipChange",
    "OutlierDetectionConfig",
    "OutlierDetector",
    "Probe",
    "ServiceInstance",
    "SlowStartConfig",
    "TcpProbe",
    "current_routing_key",
    "routing_key",
]
