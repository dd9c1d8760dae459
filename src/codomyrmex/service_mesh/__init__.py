"""Resilient service-to-service calls: circuit breakers, load balancing, retries, a proxy.

The public API; everything else lives in private or integration modules.
"""

import logging

from .budget import PercentageRetryBudget, RetryBudget, TokenBucketRetryBudget
from .bulkhead import Bulkhead
from .chaos import Chaos
from .circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from .decorators import with_circuit_breaker, with_retry
from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    LimitExceededError,
    NoHealthyInstanceError,
    ServiceMeshError,
)
from .events import (
    CallFailed,
    CallRejected,
    CallSucceeded,
    Event,
    EventListener,
    FaultInjected,
    InstanceEjected,
    InstanceHealthChanged,
    InstancePicked,
    InstanceReturned,
    LimitChanged,
    RetryGaveUp,
    RetryScheduled,
    StateTransition,
    ThresholdCrossed,
)
from .health import HealthCheckConfig, HealthChecker, HttpProbe, Probe, TcpProbe
from .limits import (
    AIMDLimit,
    ConcurrencyLimiter,
    Gradient2Limit,
    RateLimiter,
    VegasLimit,
)
from .load_balancer import (
    LoadBalancer,
    LoadBalancerStrategy,
    ServiceInstance,
    SlowStartConfig,
    current_routing_key,
    routing_key,
)
from .mesh import Mesh, default_mesh
from .outlier import OutlierDetectionConfig, OutlierDetector
from .proxy import ServiceProxy
from .retry import RetryPolicy, disable_retries, set_testing

__all__ = [
    "AIMDLimit",
    "Bulkhead",
    "BulkheadFullError",
    "CallFailed",
    "CallRejected",
    "CallSucceeded",
    "Chaos",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "ConcurrencyLimiter",
    "Event",
    "EventListener",
    "FaultInjected",
    "Gradient2Limit",
    "HealthCheckConfig",
    "HealthChecker",
    "HttpProbe",
    "InstanceEjected",
    "InstanceHealthChanged",
    "InstancePicked",
    "InstanceReturned",
    "LimitChanged",
    "LimitExceededError",
    "LoadBalancer",
    "LoadBalancerStrategy",
    "Mesh",
    "NoHealthyInstanceError",
    "OutlierDetectionConfig",
    "OutlierDetector",
    "PercentageRetryBudget",
    "Probe",
    "RateLimiter",
    "RetryBudget",
    "RetryGaveUp",
    "RetryPolicy",
    "RetryScheduled",
    "ServiceInstance",
    "ServiceMeshError",
    "ServiceProxy",
    "SlowStartConfig",
    "StateTransition",
    "TcpProbe",
    "ThresholdCrossed",
    "TokenBucketRetryBudget",
    "VegasLimit",
    "current_routing_key",
    "default_mesh",
    "disable_retries",
    "get_circuit_breaker",
    "list_circuit_breakers",
    "routing_key",
    "set_testing",
    "with_circuit_breaker",
    "with_retry",
]

__version__ = "0.1.0"

# A library logs but never configures logging: without this, Python's last-resort
# handler would print the mesh's WARNINGs (a circuit opening) to stderr.
logging.getLogger("codomyrmex.service_mesh").addHandler(logging.NullHandler())


def get_circuit_breaker(name: str) -> CircuitBreaker | None:
    """The breaker registered as ``name`` in the default mesh (what the decorators use)."""
    return default_mesh().get_circuit_breaker(name)


def list_circuit_breakers() -> dict[str, CircuitBreaker]:
    """All breakers registered in the default mesh, by name."""
    return default_mesh().circuit_breakers()
