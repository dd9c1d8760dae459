"""The status of mesh components as plain JSON types (the MCP tools' and the status
endpoint's shapes): one function per component, read without changing anything."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .circuit_breaker import CircuitBreaker
    from .load_balancer import LoadBalancer, ServiceInstance
    from .proxy import ServiceProxy

__all__ = ["balancer_status", "breaker_status", "instance_status", "service_status"]


def instance_status(instance: ServiceInstance, *, ejected: bool = False) -> dict[str, Any]:
    """One instance as plain JSON types; ``ejected`` says whether outlier detection ejected it."""
    return {
        "id": instance.id,
        "host": instance.host,
        "port": instance.port,
        "address": instance.address,
        "weight": instance.weight,
        "healthy": instance.healthy,
        "ejected": ejected,
        "connections": instance.connections,
        "metadata": dict(instance.metadata),
    }


def balancer_status(balancer: LoadBalancer, *, include_instances: bool = False) -> dict[str, Any]:
    """A load balancer's strategy and counts as plain JSON types.

    ``healthy_count`` counts the instances picks can choose from (healthy and
    not ejected), ``ejected_count`` those outlier detection has ejected.
    """
    instances = balancer.instances
    ejected = {i.id for i in balancer.ejected_instances}
    status: dict[str, Any] = {
        "strategy": balancer.strategy.value,
        "instance_count": len(instances),
        "healthy_count": sum(1 for i in instances if i.healthy and i.id not in ejected),
        "ejected_count": len(ejected),
    }
    if include_instances:
        status["instances"] = [instance_status(i, ejected=i.id in ejected) for i in instances]
    return status


def service_status(proxy: ServiceProxy, *, include_instances: bool = False) -> dict[str, Any]:
    """One service as plain JSON types (the MCP ``service_mesh_status`` shape, plus
    ``ejected_count``, ``circuit_breaker`` and each instance's ``ejected``)."""
    return {
        "name": proxy.service_name,
        **balancer_status(proxy.load_balancer, include_instances=include_instances),
        "circuit_breaker": proxy.circuit_breaker.name,
    }


def breaker_status(breaker: CircuitBreaker) -> dict[str, Any]:
    """One breaker as plain JSON types (the MCP ``circuit_breaker_status`` shape, plus
    ``retry_after``: seconds until a probe, null when FORCED_OPEN). ``state`` is the
    breaker's own state, operator states included."""
    last = breaker.last_failure_time
    retry_after = breaker.retry_after()
    return {
        "name": breaker.name,
        "state": breaker.state.value,
        "failure_count": breaker.failure_count,
        "failure_threshold": breaker.config.failure_threshold,
        "last_failure_time": None if last is None else last.isoformat(),
        "retry_after": None if math.isinf(retry_after) else round(retry_after, 6),
    }
