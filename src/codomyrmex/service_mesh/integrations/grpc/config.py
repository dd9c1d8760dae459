"""gRPC service config import: ``methodConfig`` and ``retryThrottling`` as mesh policies.

Validated as gRPC does: ``maxAttempts`` must be at least 2 and is capped at 5, durations
are strings like ``"0.1s"``, ``maxTokens`` in (0, 1000], ``tokenRatio`` in (0, 1].
Standard library only (no grpcio needed to read a config).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...budget import TokenBucketRetryBudget
from ...retry import RetryPolicy
from ..protocol import GrpcSemantics, grpc_code_name

__all__ = ["MAX_ATTEMPTS_CAP", "GrpcServiceConfig", "MethodConfig", "load_service_config"]

MAX_ATTEMPTS_CAP = 5
"""gRPC caps ``maxAttempts`` (of retry and hedging policies) at 5."""

_DURATION = re.compile(r"^(\d+)(\.\d{1,9})?s$")


def _duration(value: Any, field_name: str) -> float:
    if not isinstance(value, str) or not _DURATION.match(value):
        raise ValueError(f'{field_name} must be a duration string like "0.1s", got {value!r}')
    return float(value[:-1])


def _positive_duration(value: Any, field_name: str) -> float:
    seconds = _duration(value, field_name)
    if seconds <= 0:
        raise ValueError(f"{field_name} must be > 0s, got {value!r}")
    return seconds


def _max_attempts(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name} must be an integer, got {value!r}")
    if value < 2:
        raise ValueError(f"{field_name} must be at least 2, got {value!r}")
    return min(value, MAX_ATTEMPTS_CAP)


def _codes(value: Any, field_name: str, *, required: bool) -> frozenset[str]:
    if value is None and not required:
        return frozenset()
    if not isinstance(value, list) or (required and not value):
        raise ValueError(f"{field_name} must be a non-empty list of status codes, got {value!r}")
    codes = frozenset(grpc_code_name(code, field_name) for code in value)
    if "OK" in codes:
        raise ValueError(f"{field_name} must not hold OK")
    return codes


@dataclass(frozen=True)
class MethodConfig:
    """One ``methodConfig`` entry of a service config, as the mesh's settings."""

    names: tuple[tuple[str, str], ...] = ()
    """(service, method) pairs; an empty method is every method of the service, and
    an empty service is every method of every service (the default config)."""
    max_attempts: int | None = None
    initial_backoff: float | None = None
    max_backoff: float | None = None
    backoff_multiplier: float | None = None
    retryable_codes: frozenset[str] = frozenset()
    hedging_max_attempts: int | None = None
    hedging_delay: float | None = None
    non_fatal_codes: frozenset[str] = frozenset()
    timeout: float | None = None

    def retry_policy(self, budget: TokenBucketRetryBudget | None = None) -> RetryPolicy:
        """The retry policy of this config (gRPC's jittered exponential backoff)."""
        if self.max_attempts is None:
            return RetryPolicy(max_retries=0, budget=budget)
        assert self.initial_backoff is not None and self.max_backoff is not None
        return RetryPolicy(
            max_retries=self.max_attempts - 1,
            initial_delay=self.initial_backoff,
            max_delay=self.max_backoff,
            exponential_base=self.backoff_multiplier or 1.0,
            jitter=True,
            budget=budget,
        )

    @property
    def semantics(self) -> GrpcSemantics:
        codes = self.retryable_codes or self.non_fatal_codes
        return GrpcSemantics(codes) if codes else GrpcSemantics()


@dataclass(frozen=True)
class GrpcServiceConfig:
    """A parsed gRPC service config: method configs and retry throttling."""

    methods: tuple[MethodConfig, ...] = ()
    max_tokens: float | None = None
    token_ratio: float | None = None
    budget: TokenBucketRetryBudget | None = field(default=None, compare=False)

    def for_method(self, full_method: str) -> MethodConfig | None:
        """The config of ``/package.Service/Method``: exact, then the service's, then default."""
        service, _, method = full_method.lstrip("/").partition("/")
        best: MethodConfig | None = None
        rank = 0
        for config in self.methods:
            for svc, meth in config.names:
                if svc == service and meth == method:
                    return config
                if svc == service and not meth and rank < 2:
                    best, rank = config, 2
                elif not svc and not meth and rank < 1:
                    best, rank = config, 1
        return best


def _method_config(entry: Any, index: int) -> MethodConfig:
    where = f"methodConfig[{index}]"
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be an object, got {entry!r}")
    names: list[tuple[str, str]] = []
    for n, name in enumerate(entry.get("name") or []):
        if not isinstance(name, Mapping):
            raise TypeError(f"{where}.name[{n}] must be an object, got {name!r}")
        service = name.get("service", "")
        method = name.get("method", "")
        if not isinstance(service, str) or not isinstance(method, str):
            raise TypeError(f"{where}.name[{n}] service and method must be strings")
        if method and not service:
            raise ValueError(f"{where}.name[{n}] has a method without a service")
        names.append((service, method))
    retry = entry.get("retryPolicy")
    hedging = entry.get("hedgingPolicy")
    if retry is not None and hedging is not None:
        raise ValueError(f"{where} may have retryPolicy or hedgingPolicy, not both")
    options: dict[str, Any] = {"names": tuple(names)}
    if "timeout" in entry:
        options["timeout"] = _positive_duration(entry["timeout"], f"{where}.timeout")
    if retry is not None:
        if not isinstance(retry, Mapping):
            raise TypeError(f"{where}.retryPolicy must be an object, got {retry!r}")
        p = f"{where}.retryPolicy"
        multiplier = retry.get("backoffMultiplier")
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
            raise TypeError(f"{p}.backoffMultiplier must be a number, got {multiplier!r}")
        if not (multiplier > 0 and math.isfinite(multiplier)):
            raise ValueError(f"{p}.backoffMultiplier must be > 0, got {multiplier!r}")
        if multiplier < 1:
            raise ValueError(
                f"{p}.backoffMultiplier below 1 (shrinking backoff) is not supported, "
                f"got {multiplier!r}"
            )
        options.update(
            max_attempts=_max_attempts(retry.get("maxAttempts"), f"{p}.maxAttempts"),
            initial_backoff=_positive_duration(retry.get("initialBackoff"), f"{p}.initialBackoff"),
            max_backoff=_positive_duration(retry.get("maxBackoff"), f"{p}.maxBackoff"),
            backoff_multiplier=float(multiplier),
            retryable_codes=_codes(
                retry.get("retryableStatusCodes"), f"{p}.retryableStatusCodes", required=True
            ),
        )
    if hedging is not None:
        if not isinstance(hedging, Mapping):
            raise TypeError(f"{where}.hedgingPolicy must be an object, got {hedging!r}")
        p = f"{where}.hedgingPolicy"
        delay = hedging.get("hedgingDelay", "0s")
        options.update(
            hedging_max_attempts=_max_attempts(hedging.get("maxAttempts"), f"{p}.maxAttempts"),
            hedging_delay=_duration(delay, f"{p}.hedgingDelay"),
            non_fatal_codes=_codes(
                hedging.get("nonFatalStatusCodes"), f"{p}.nonFatalStatusCodes", required=False
            ),
        )
    return MethodConfig(**options)


def load_service_config(config: str | bytes | Mapping[str, Any]) -> GrpcServiceConfig:
    """Parse and validate a gRPC service config (JSON text or an already loaded mapping)."""
    if isinstance(config, (str, bytes)):
        try:
            config = json.loads(config)
        except ValueError as exc:
            raise ValueError(f"service config is not valid JSON: {exc}") from exc
    if not isinstance(config, Mapping):
        raise TypeError(f"service config must be a JSON object, got {config!r}")
    entries = config.get("methodConfig") or []
    if not isinstance(entries, list):
        raise TypeError(f"methodConfig must be a list, got {entries!r}")
    methods = tuple(_method_config(entry, i) for i, entry in enumerate(entries))
    throttling = config.get("retryThrottling")
    if throttling is None:
        return GrpcServiceConfig(methods)
    if not isinstance(throttling, Mapping):
        raise TypeError(f"retryThrottling must be an object, got {throttling!r}")
    tokens = throttling.get("maxTokens")
    ratio = throttling.get("tokenRatio")
    if isinstance(tokens, bool) or not isinstance(tokens, (int, float)):
        raise TypeError(f"retryThrottling.maxTokens must be a number, got {tokens!r}")
    if not 0 < tokens <= 1000:
        raise ValueError(f"retryThrottling.maxTokens must be in (0, 1000], got {tokens!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"retryThrottling.tokenRatio must be a number, got {ratio!r}")
    if not 0 < ratio <= 1:
        raise ValueError(f"retryThrottling.tokenRatio must be in (0, 1], got {ratio!r}")
    budget = TokenBucketRetryBudget(max_tokens=max(1.0, float(tokens)), token_ratio=float(ratio))
    return GrpcServiceConfig(methods, float(tokens), float(ratio), budget)
