"""Protocol semantics shared by every client integration (httpx, requests, aiohttp, gRPC).

Standard library only: each client module adapts its own request and response
types to what is written here once.

What a client integration asks of this layer:

- **Classification.** Each attempt's outcome is a :class:`Verdict`: ``SUCCESS``
  (returned to the caller), ``FAILURE`` (raised inside the stack, so the breakers
  count it and the retry policy may retry it) or ``IGNORED`` (the caller's own
  mistake or a plain answer of the server: handed to the caller unchanged,
  never retried and never counted as the instance's failure). HTTP statuses in
  ``failure_statuses`` are failures; :data:`DEFAULT_FAILURE_STATUSES` is 500,
  502, 503 and 504. gRPC statuses are classified by :class:`GrpcSemantics`.
- **Idempotency.** Only methods in ``retry_methods`` (:data:`IDEMPOTENT_METHODS`
  by default) whose body can be replayed (:func:`body_replayable`) get more than
  one attempt; others get exactly one, still balanced and behind the breakers.
- **Server pushback.** ``Retry-After`` (:func:`parse_retry_after`) and gRPC's
  ``grpc-retry-pushback-ms`` (:func:`parse_grpc_pushback`) become the failure's
  ``retry_after``, which the retry policy waits for (capped at its ``max_delay``).
- **Timeouts.** :class:`Timeouts` turns the client's own timeout into an attempt
  timeout and an overall deadline for the call (see there for the rule).
- **Ejection.** :class:`InstanceEjector` gives each instance a breaker of its own
  and, while that breaker is open, takes the instance out of its balancer with
  :meth:`LoadBalancer.eject` (never :meth:`LoadBalancer.mark_healthy`, which is
  the operator's and the health checker's); it returns the instance once the
  breaker admits probes.
- **The engine.** :class:`ClientCore` looks the service up, starts a
  :class:`CallState`, runs the attempts through ``ServiceProxy.call`` (or
  ``call_once``) and settles the outcome. Sync and async integrations share it.
"""

from __future__ import annotations

from .core import (
    ClientCore,
    FailureResponse,
    InstanceCircuitOpen,
    Services,
    UnknownService,
    _Passed,
)
from .ejection import InstanceEjector
from .propagation import set_trace_injector, trace_headers
from .pushback import parse_grpc_pushback, parse_retry_after
from .semantics import (
    DEFAULT_FAILURE_STATUSES,
    GRPC_CODES,
    IDEMPOTENT_METHODS,
    GrpcSemantics,
    HttpSemantics,
    Verdict,
    body_replayable,
    grpc_code_name,
)
from .timeouts import (
    DEADLINE_FACTOR,
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_DEADLINE,
    CallDeadlineExceeded,
    CallState,
    Timeouts,
    check_timeouts,
    within,
)

__all__ = [
    "DEADLINE_FACTOR",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_DEADLINE",
    "DEFAULT_FAILURE_STATUSES",
    "GRPC_CODES",
    "IDEMPOTENT_METHODS",
    "CallDeadlineExceeded",
    "CallState",
    "ClientCore",
    "FailureResponse",
    "GrpcSemantics",
    "HttpSemantics",
    "InstanceCircuitOpen",
    "InstanceEjector",
    "Services",
    "Timeouts",
    "UnknownService",
    "Verdict",
    "_Passed",
    "body_replayable",
    "check_timeouts",
    "grpc_code_name",
    "parse_grpc_pushback",
    "parse_retry_after",
    "set_trace_injector",
    "trace_headers",
    "within",
]
