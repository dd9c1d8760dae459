"""Classification and idempotency: what an attempt's outcome counts as, what may be retried.

HTTP statuses in ``failure_statuses`` fail an attempt (:data:`DEFAULT_FAILURE_STATUSES`);
only ``retry_methods`` (:data:`IDEMPOTENT_METHODS`) whose body can be replayed
(:func:`body_replayable`) get more than one attempt. gRPC statuses are classified by
:class:`GrpcSemantics`. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .pushback import parse_retry_after

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "GRPC_CODES",
    "IDEMPOTENT_METHODS",
    "GrpcSemantics",
    "HttpSemantics",
    "Verdict",
    "body_replayable",
    "grpc_code_name",
]

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""The methods retried by default (RFC 9110 idempotent methods): sending one twice has the
effect of sending it once."""

DEFAULT_FAILURE_STATUSES: frozenset[int] = frozenset({500, 502, 503, 504})
"""The one setting for which HTTP statuses fail an attempt by default: the server side
failed (500) or is unavailable (502, 503, 504). A failure is counted by the breakers and
retried, on another instance, for idempotent methods only."""


class Verdict(Enum):
    """How one attempt's outcome counts."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


def body_replayable(body: object) -> bool:
    """Whether a request body can be sent again: None, bytes-like, str, or a seekable file."""
    if body is None or isinstance(body, (bytes, bytearray, memoryview, str)):
        return True
    seekable = getattr(body, "seekable", None)
    if callable(seekable) and hasattr(body, "tell"):
        try:
            return bool(seekable())
        except (OSError, ValueError):
            return False
    return False


# -- semantics -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpSemantics:
    """What fails an HTTP attempt and what may be retried."""

    failure_statuses: frozenset[int] = DEFAULT_FAILURE_STATUSES
    retry_methods: frozenset[str] = IDEMPOTENT_METHODS
    respect_retry_after: bool = True

    def __post_init__(self) -> None:
        statuses = self.failure_statuses
        if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Iterable):
            raise TypeError(f"failure_statuses must be HTTP statuses, got {statuses!r}")
        statuses = frozenset(statuses)
        if not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            raise ValueError(
                f"failure_statuses must be HTTP statuses, got {self.failure_statuses!r}"
            )
        methods = self.retry_methods
        if isinstance(methods, (str, bytes)) or not isinstance(methods, Iterable):
            raise TypeError(f"retry_methods must be method names, got {methods!r}")
        if not all(isinstance(m, str) and m for m in methods):
            raise TypeError(f"retry_methods must be method names, got {methods!r}")
        if not isinstance(self.respect_retry_after, bool):
            raise TypeError(f"respect_retry_after must be a bool, got {self.respect_retry_after!r}")
        object.__setattr__(self, "failure_statuses", statuses)
        object.__setattr__(self, "retry_methods", frozenset(m.upper() for m in methods))

    @classmethod
    def of(
        cls,
        failure_statuses: Iterable[int],
        retry_methods: Iterable[str],
        respect_retry_after: bool = True,
    ) -> HttpSemantics:
        """Validated semantics from the integrations' arguments (any iterables)."""
        return cls(failure_statuses, retry_methods, respect_retry_after)  # type: ignore[arg-type]

    def verdict(self, status: int) -> Verdict:
        """SUCCESS or FAILURE for a response status (an answer is never IGNORED)."""
        return Verdict.FAILURE if status in self.failure_statuses else Verdict.SUCCESS

    def may_retry(self, method: str, replayable: bool = True) -> bool:
        """Whether a request may be sent more than once."""
        return replayable and method.upper() in self.retry_methods

    def retry_after(self, header: str | None) -> float | None:
        """The wait a failure response asks for (None: the policy's own backoff).

        "Retry now" (0) is left to the policy's backoff too.
        """
        if not self.respect_retry_after or header is None:
            return None
        return parse_retry_after(header) or None


# -- gRPC ----------------------------------------------------------------------------

GRPC_CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
"""gRPC status code names, in code order (index = numeric code)."""


def grpc_code_name(code: Any, field: str = "retryable_codes") -> str:
    """A gRPC status code given by name ("UNAVAILABLE", "unavailable"), number (14) or enum."""
    if isinstance(code, bool):
        raise TypeError(f"{field} must hold gRPC status codes, got {code!r}")
    if isinstance(code, int):
        if 0 <= code < len(GRPC_CODES):
            return GRPC_CODES[code]
        raise ValueError(f"{field} must hold gRPC status codes, got {code!r}")
    name = getattr(code, "name", code)
    if isinstance(name, str) and name.upper() in GRPC_CODES:
        return name.upper()
    raise ValueError(f"{field} must hold gRPC status codes, got {code!r}")


@dataclass(frozen=True, slots=True)
class GrpcSemantics:
    """How a gRPC status counts.

    - ``OK``: SUCCESS.
    - ``retryable_codes`` (``UNAVAILABLE`` by default): FAILURE, retried on another
      instance; ``grpc-retry-pushback-ms`` sets the wait, and a negative one ends the call.
    - ``RESOURCE_EXHAUSTED`` with a valid ``grpc-retry-pushback-ms``: FAILURE, retried
      after the pushback, as gRPC does when the server asks for it.
    - ``DEADLINE_EXCEEDED`` of an attempt cut short by the attempt timeout (while the
      call's deadline has time left): FAILURE, retried.
    - ``CANCELLED``: IGNORED (the caller's doing).
    - every other code is the server's answer: returned to the caller, not counted
      as the instance's failure, not retried.
    """

    retryable_codes: frozenset[str] = frozenset({"UNAVAILABLE"})

    def __post_init__(self) -> None:
        codes = self.retryable_codes
        if isinstance(codes, (str, bytes)) or not isinstance(codes, Iterable):
            raise TypeError(f"retryable_codes must hold gRPC status codes, got {codes!r}")
        names = frozenset(grpc_code_name(c) for c in codes)
        if "OK" in names:
            raise ValueError("retryable_codes must not hold OK")
        object.__setattr__(self, "retryable_codes", names)

    def verdict(self, code: str, pushback: float | None, attempt_cut: bool) -> Verdict:
        """The verdict for status ``code`` with the server's pushback (seconds, -1 for
        "do not retry", None for none); ``attempt_cut``: our attempt timeout fired."""
        if code == "OK":
            return Verdict.SUCCESS
        if code == "CANCELLED":
            return Verdict.IGNORED
        if pushback is not None and pushback < 0:
            return Verdict.SUCCESS  # the server says: do not retry; its answer stands
        if code in self.retryable_codes:
            return Verdict.FAILURE
        if code == "RESOURCE_EXHAUSTED" and pushback is not None:
            return Verdict.FAILURE
        if code == "DEADLINE_EXCEEDED" and attempt_cut:
            return Verdict.FAILURE
        return Verdict.SUCCESS
