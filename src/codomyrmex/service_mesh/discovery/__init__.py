"""Service discovery: keep a load balancer's instances in step with where they live.

The seam is :class:`Resolver` (one balancer, one :class:`Source`); the sources
shipped are :mod:`~codomyrmex.service_mesh.integrations.dns` (A/AAAA and SRV),
:mod:`~codomyrmex.service_mesh.integrations.etcd` (a lease-backed registry) and
the Redis registry's followers (:meth:`RedisRegistry.follow`). Write your own by
subclassing :class:`PollingSource` or by implementing :class:`Source`.
Standard library only.
"""

from .codec import instance_from_json, instance_to_json
from .polling import PollingSource, Resolution
from .resolver import Resolver, ResolverStatus, Source
from .shutdown import ClosedOnExit, close_at_shutdown, on_sigterm, sigterm_hooks

__all__ = [
    "ClosedOnExit",
    "PollingSource",
    "Resolution",
    "Resolver",
    "ResolverStatus",
    "Source",
    "close_at_shutdown",
    "instance_from_json",
    "instance_to_json",
    "on_sigterm",
    "sigterm_hooks",
]
