"""Resilient service-to-service calls: circuit breakers, load balancing, retries, a proxy.

The public API; everything else lives in private or integration modules.
"""

from .circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from .decorators import with_circuit_breaker, with_retry
from .errors import CircuitOpenError, NoHealthyInstanceError, ServiceMeshError
from .load_balancer import LoadBalancer, LoadBalancerStrategy, ServiceInstance
from .mesh import Mesh, default_mesh
from .proxy import ServiceProxy
from .retry import RetryPolicy

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "LoadBalancer",
    "LoadBalancerStrategy",
    "Mesh",
    "NoHealthyInstanceError",
    "RetryPolicy",
    "ServiceInstance",
    "ServiceMeshError",
    "ServiceProxy",
    "default_mesh",
    "get_circuit_breaker",
    "list_circuit_breakers",
    "with_circuit_breaker",
    "with_retry",
]

__version__ = "0.1.0"


def get_circuit_breaker(name: str) -> CircuitBreaker | None:
    """The breaker registered as ``name`` in the default mesh (what the decorators use)."""
    return default_mesh().get_circuit_breaker(name)


def list_circuit_breakers() -> dict[str, CircuitBreaker]:
    """All breakers registered in the default mesh, by name."""
    return default_mesh().circuit_breakers()
