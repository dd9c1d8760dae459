"""The mesh registry: a process's services and circuit breakers, by name."""

from __future__ import annotations

import threading
from typing import Any

from ._validate import check_str
from .circuit_breaker import CircuitBreaker, CircuitBreakerConfig, Clock
from .load_balancer import ServiceInstance
from .proxy import ServiceProxy

__all__ = ["Mesh", "breaker_status", "default_mesh", "instance_status", "service_status"]


class Mesh:
    """Thread-safe registry of services (name -> proxy) and circuit breakers (name -> breaker).

    The decorators use :func:`default_mesh`, so every ``@with_circuit_breaker``
    with the same name shares one breaker.
    """

    __slots__ = ("_breakers", "_lock", "_services")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._services: dict[str, ServiceProxy] = {}

    def __repr__(self) -> str:
        return f"Mesh(services={sorted(self._services)}, breakers={sorted(self._breakers)})"

    # -- breakers ---------------------------------------------------------------

    def circuit_breaker(
        self, name: str, config: CircuitBreakerConfig | None = None, *, clock: Clock | None = None
    ) -> CircuitBreaker:
        """The breaker called ``name``, created on first use.

        Asking again with a different ``config`` than the registered breaker's
        raises ValueError; ``config=None`` accepts whatever is registered.
        """
        check_str("name", name)
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                if clock is None:
                    breaker = CircuitBreaker(name, config)
                else:
                    breaker = CircuitBreaker(name, config, clock=clock)
                self._breakers[name] = breaker
            elif config is not None and config != breaker.config:
                raise ValueError(
                    f"circuit breaker {name!r} is registered with {breaker.config!r}; "
                    f"got a different config {config!r}"
                )
            return breaker

    def add_circuit_breaker(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Register an existing breaker under its name (ValueError if the name is taken)."""
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker must be a CircuitBreaker, got {breaker!r}")
        with self._lock:
            current = self._breakers.setdefault(breaker.name, breaker)
        if current is not breaker:
            raise ValueError(f"a different circuit breaker is registered as {breaker.name!r}")
        return breaker

    def get_circuit_breaker(self, name: str) -> CircuitBreaker | None:
        """The breaker called ``name``, or None."""
        return self._breakers.get(name)

    def circuit_breakers(self) -> dict[str, CircuitBreaker]:
        """A snapshot of all registered breakers by name."""
        with self._lock:
            return dict(self._breakers)

    def remove_circuit_breaker(self, name: str) -> bool:
        """Forget the breaker called ``name``; True if it was registered."""
        with self._lock:
            return self._breakers.pop(name, None) is not None

    # -- services ---------------------------------------------------------------

    def register_service(self, proxy: ServiceProxy) -> ServiceProxy:
        """Register a proxy under its service name (its breaker too), replacing one of that name."""
        if not isinstance(proxy, ServiceProxy):
            raise TypeError(f"proxy must be a ServiceProxy, got {proxy!r}")
        with self._lock:
            self._services[proxy.service_name] = proxy
            self._breakers.setdefault(proxy.circuit_breaker.name, proxy.circuit_breaker)
        return proxy

    def get_service(self, name: str) -> ServiceProxy | None:
        """The proxy of service ``name``, or None."""
        return self._services.get(name)

    def services(self) -> dict[str, ServiceProxy]:
        """A snapshot of all registered services by name."""
        with self._lock:
            return dict(self._services)

    def remove_service(self, name: str) -> bool:
        """Forget service ``name``; True if it was registered."""
        with self._lock:
            return self._services.pop(name, None) is not None

    # -- status -----------------------------------------------------------------

    def status(self, *, include_instances: bool = True) -> dict[str, Any]:
        """A JSON-serialisable snapshot of every service and breaker."""
        services = [
            service_status(proxy, include_instances=include_instances)
            for proxy in self.services().values()
        ]
        breakers = [breaker_status(b) for b in self.circuit_breakers().values()]
        return {
            "services": services,
            "breakers": breakers,
            "total_services": len(services),
            "total_instances": sum(s["instance_count"] for s in services),
            "healthy_instances": sum(s["healthy_count"] for s in services),
            "total_breakers": len(breakers),
        }

    def clear(self) -> None:
        """Forget every service and breaker."""
        with self._lock:
            self._services.clear()
            self._breakers.clear()


_DEFAULT = Mesh()


def default_mesh() -> Mesh:
    """The process-wide mesh the decorators register their breakers in."""
    return _DEFAULT


def instance_status(instance: ServiceInstance) -> dict[str, Any]:
    """One instance as plain JSON types."""
    return {
        "id": instance.id,
        "host": instance.host,
        "port": instance.port,
        "address": instance.address,
        "weight": instance.weight,
        "healthy": instance.healthy,
        "connections": instance.connections,
        "metadata": dict(instance.metadata),
    }


def service_status(proxy: ServiceProxy, *, include_instances: bool = False) -> dict[str, Any]:
    """One service as plain JSON types (the MCP ``service_mesh_status`` shape)."""
    balancer = proxy.load_balancer
    instances = balancer.instances
    status: dict[str, Any] = {
        "name": proxy.service_name,
        "strategy": balancer.strategy.value,
        "instance_count": len(instances),
        "healthy_count": sum(1 for i in instances if i.healthy),
        "circuit_breaker": proxy.circuit_breaker.name,
    }
    if include_instances:
        status["instances"] = [instance_status(i) for i in instances]
    return status


def breaker_status(breaker: CircuitBreaker) -> dict[str, Any]:
    """One breaker as plain JSON types (the MCP ``circuit_breaker_status`` shape)."""
    last = breaker.last_failure_time
    return {
        "name": breaker.name,
        "state": breaker.state.value,
        "failure_count": breaker.failure_count,
        "failure_threshold": breaker.config.failure_threshold,
        "last_failure_time": None if last is None else last.isoformat(),
        "retry_after": round(breaker.retry_after(), 6),
    }
