"""Checking and building a mesh configuration (standard library only; reading it is
:mod:`._reading`).

The layout (resilience4j's): ``defaults`` holds the settings every service
shares, ``services.NAME`` overrides them key by key, section by section::

    [defaults.retry]
    max_retries = 2

    [services.orders.retry]
    max_retries = 1          # orders: 1; every other service: 2

    [services.orders.resolver]
    type = "static"
    instances = ["10.0.0.1:8080", "10.0.0.2:8080"]

A key that no section sets keeps the library's default. The top-level ``http``
and ``instance_breaker`` sections configure the httpx transports
(:meth:`MeshConfig.transport_options`).

Environment variables override any setting: ``SERVICE_MESH__`` then the path
in capitals, ``__`` between its parts, e.g.
``SERVICE_MESH__SERVICES__ORDERS__RETRY__MAX_RETRIES=1``. The value is read as
JSON when it parses (``5``, ``true``, ``null``, ``[500, 503]``), else as a string.

Every problem is reported with its full path and value
(``services.orders.retry.max_retries: must be >= 0, got -1``), all of them at
once, in a :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..budget import PercentageRetryBudget, RetryBudget, TokenBucketRetryBudget
from ..bulkhead import Bulkhead
from ..circuit_breaker import CircuitBreakerConfig
from ..load_balancer import LoadBalancerStrategy, SlowStartConfig
from ..outlier import OutlierDetectionConfig
from ..proxy import ServiceProxy
from ..retry import RetryPolicy
from ._fields import HTTP, INSTANCE_BREAKER, SECTIONS, Field, check_value, resolve_exception
from ._reading import ENV_PREFIX, ConfigError, apply_environment, read_source
from .resolvers import resolver_kinds

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "MeshConfig",
    "ServiceSettings",
    "load_config",
    "parse_config",
    "read_source",
]

TOP_LEVEL = ("version", "defaults", "services", "http", "instance_breaker")


# -- checking ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSettings:
    """One service's settings: ``defaults`` merged with its own, section by section.

    Only keys some section sets are held; the rest keep the library's defaults.
    """

    name: str
    sections: Mapping[str, Mapping[str, Any]]
    resolver: Mapping[str, Any] | None = None
    """The resolver section (with its ``type``), or None: instances come from code."""

    def section(self, name: str) -> Mapping[str, Any]:
        return self.sections.get(name, {})

    # -- building (each from the library's defaults, as a fresh ServiceProxy has them)

    def breaker_config(self, base: CircuitBreakerConfig) -> CircuitBreakerConfig:
        return _breaker_config(self.section("breaker"), base)

    def budget(self, base: RetryBudget | None) -> RetryBudget | None:
        settings = dict(self.section("budget"))
        if not settings:
            return base
        kind = settings.pop("type", None)
        if kind is None:
            kind = "percentage" if isinstance(base, PercentageRetryBudget) else "token_bucket"
            if base is None and not settings:
                return None
        if kind == "none":
            return None
        if kind == "token_bucket":
            return TokenBucketRetryBudget(
                **{k: settings[k] for k in ("max_tokens", "token_ratio") if k in settings}
            )
        keys = ("percent", "min_retries_per_second", "window_seconds")
        return PercentageRetryBudget(**{k: settings[k] for k in keys if k in settings})

    def retry_policy(self, base: RetryPolicy, budget: RetryBudget | None) -> RetryPolicy:
        settings = self.section("retry")
        keep = (
            "max_retries",
            "initial_delay",
            "max_delay",
            "exponential_base",
            "jitter",
            "attempt_timeout",
            "max_elapsed",
        )
        options: dict[str, Any] = {key: getattr(base, key) for key in keep}
        options.update(settings)
        return RetryPolicy(
            retry_on=base.retry_on,
            retry_on_result=base.retry_on_result,
            budget=budget,
            nested=base.nested,
            name=base.name,
            **options,
        )

    def balancer_options(self, base: ServiceProxy) -> dict[str, Any]:
        """Keyword arguments of :meth:`LoadBalancer.reconfigure` (and the strategy)."""
        balancer = base.load_balancer
        settings = self.section("balancing")
        detector = balancer.outlier_detector
        outlier = dict(self.section("outlier_detection"))
        enabled = outlier.pop("enabled", None)
        od: OutlierDetectionConfig | None = None if detector is None else detector.config
        if enabled is False:
            od = None
        elif outlier or enabled:
            od = dataclasses.replace(od or OutlierDetectionConfig(), **outlier)
        slow = balancer.slow_start
        if "slow_start_window" in settings and settings["slow_start_window"] is None:
            slow = None
        else:
            ramp = {
                name: settings[f"slow_start_{name}"]
                for name in ("window", "aggression", "min_weight_percent")
                if f"slow_start_{name}" in settings
            }
            if ramp:
                if slow is None:
                    if "window" not in ramp:
                        raise ValueError("slow_start_window must be set to use slow start")
                    slow = SlowStartConfig(**ramp)
                else:
                    slow = dataclasses.replace(slow, **ramp)
        strategy = LoadBalancerStrategy.parse(settings.get("strategy", balancer.strategy.value))
        return {
            "strategy": strategy,
            "outlier_detection": od,
            "slow_start": slow,
            "panic_threshold": settings.get("panic_threshold", balancer.panic_threshold),
        }

    def constructor_options(self) -> dict[str, Any]:
        """Balancer options that only a new balancer takes."""
        settings = self.section("balancing")
        return {
            k: settings[k]
            for k in ("ewma_decay", "ring_replicas", "maglev_table_size")
            if k in settings
        }

    def bulkhead(self) -> Bulkhead | None:
        settings = self.section("bulkhead")
        if not settings:
            return None
        if "max_concurrent" not in settings:
            raise ValueError("max_concurrent must be set to use a bulkhead")
        return Bulkhead(
            settings["max_concurrent"],
            max_queue=settings.get("max_queue", 0),
            queue_timeout=settings.get("queue_timeout"),
            name=self.name,
        )

    def hedging(self, base: ServiceProxy) -> tuple[float | None, int]:
        settings = self.section("hedging")
        return (
            settings.get("delay", base.hedging_delay),
            settings.get("max_attempts", base.max_hedged_attempts),
        )


def _breaker_config(
    settings: Mapping[str, Any], base: CircuitBreakerConfig
) -> CircuitBreakerConfig:
    options = {k: v for k, v in settings.items() if k != "enabled"}
    for key in ("record_exceptions", "ignore_exceptions"):
        if key in options:
            options[key] = tuple(resolve_exception(name) for name in options[key])
    return dataclasses.replace(base, **options)


@dataclass(frozen=True)
class MeshConfig:
    """A checked configuration: every service's settings, plus the transports' options."""

    services: Mapping[str, ServiceSettings]
    http: Mapping[str, Any] = field(default_factory=dict)
    instance_breaker: Mapping[str, Any] | None = None
    source: str | None = None
    """The file it was read from (None: a mapping)."""
    data: Mapping[str, Any] = field(default_factory=dict)
    """The raw settings after environment overrides."""
    overrides: Mapping[str, str] = field(default_factory=dict)
    """Settings the environment overrode: path -> variable."""

    def service(self, name: str) -> ServiceSettings:
        """The settings of service ``name`` (KeyError naming the known ones)."""
        try:
            return self.services[name]
        except KeyError:
            raise KeyError(
                f"no service {name!r} in the configuration; it has {sorted(self.services)}"
            ) from None

    def transport_options(self) -> dict[str, Any]:
        """Keyword arguments for ``MeshTransport`` / ``AsyncMeshTransport`` (only those set)."""
        options: dict[str, Any] = dict(self.http)
        breaker = self.instance_breaker
        if breaker is not None:
            if breaker.get("enabled", True):
                options["instance_breaker"] = _breaker_config(breaker, CircuitBreakerConfig())
            else:
                options["instance_breaker"] = None
        return options

    def describe(self, name: str) -> dict[str, dict[str, Any]]:
        """The settings of service ``name`` the configuration sets, by section (for display)."""
        settings = self.service(name)
        shown = {section: dict(values) for section, values in settings.sections.items() if values}
        if settings.resolver is not None:
            shown["resolver"] = dict(settings.resolver)
        if self.http:
            shown["http"] = dict(self.http)
        if self.instance_breaker is not None:
            shown["instance_breaker"] = dict(self.instance_breaker)
        return shown


def _where(path: str, origins: Mapping[str, str]) -> str:
    origin = origins.get(path)
    return path if origin is None else f"{path} (from ${origin})"


def _check_section(
    path: str,
    values: Any,
    fields: Mapping[str, Field],
    errors: list[str],
    origins: Mapping[str, str],
) -> dict[str, Any]:
    if not isinstance(values, dict):
        errors.append(f"{_where(path, origins)}: must be a table, got {values!r}")
        return {}
    good: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{path}.{key}"
        spec = fields.get(key) if isinstance(key, str) else None
        if spec is None:
            errors.append(
                f"{_where(where, origins)}: unknown setting (expected one of {', '.join(fields)}), "
                f"got {value!r}"
            )
            continue
        problem = check_value(spec, value)
        if problem is not None:
            sep = "" if problem.startswith("[") else ": "
            errors.append(f"{_where(where, origins)}{sep}{problem}")
            continue
        good[key] = value.lower() if spec.kind == "choice" else value
    return good


def _check_sections(
    path: str, values: Any, errors: list[str], origins: Mapping[str, str]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    if not isinstance(values, dict):
        errors.append(f"{_where(path, origins)}: must be a table, got {values!r}")
        return {}, None
    sections: dict[str, dict[str, Any]] = {}
    resolver: dict[str, Any] | None = None
    allowed = [*SECTIONS, "resolver"]
    for key, value in values.items():
        where = f"{path}.{key}"
        if key == "resolver":
            resolver = _check_resolver(where, value, errors, origins)
        elif key in SECTIONS:
            sections[key] = _check_section(where, value, SECTIONS[key], errors, origins)
        else:
            errors.append(
                f"{_where(where, origins)}: unknown section "
                f"(expected one of {', '.join(allowed)}), got {value!r}"
            )
    return sections, resolver


def _check_resolver(
    path: str, value: Any, errors: list[str], origins: Mapping[str, str]
) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        errors.append(f"{_where(path, origins)}: must be a table, got {value!r}")
        return None
    kinds = resolver_kinds()
    kind = value.get("type")
    if kind not in kinds:
        errors.append(
            f"{_where(f'{path}.type', origins)}: must be one of {', '.join(sorted(kinds))}; "
            f"got {kind!r}"
        )
        return None
    spec = kinds[kind]
    rest = {k: v for k, v in value.items() if k != "type"}
    good = _check_section(path, rest, spec.fields, errors, origins)
    for key in spec.required:
        if key not in rest:
            errors.append(f"{_where(f'{path}.{key}', origins)}: required for type {kind!r}")
    return {"type": kind, **good}


def _merge(
    defaults: Mapping[str, Mapping[str, Any]], own: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    merged = {name: dict(values) for name, values in defaults.items()}
    for name, values in own.items():
        merged.setdefault(name, {}).update(values)
    return merged


def _try_build(path: str, settings: ServiceSettings, errors: list[str]) -> None:
    """Build every component once, so that rules across settings are checked too."""
    base = ServiceProxy(settings.name)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("breaker", lambda: settings.breaker_config(base.circuit_breaker.config)),
        (
            "retry",
            lambda: settings.retry_policy(
                base.retry_policy, settings.budget(base.retry_policy.budget)
            ),
        ),
        ("budget", lambda: settings.budget(base.retry_policy.budget)),
        ("outlier_detection", lambda: settings.balancer_options(base)),
        ("balancing", lambda: _balancer(settings, base)),
        ("bulkhead", settings.bulkhead),
    ]
    failed = False
    for section, build in steps:
        if section == "balancing" and failed:
            continue  # the outlier settings it needs are wrong already
        try:
            build()
        except (TypeError, ValueError) as error:
            errors.append(f"{path}.{section}: {error}")
            failed = section == "outlier_detection"


def _balancer(settings: ServiceSettings, base: ServiceProxy) -> None:
    from ..load_balancer import LoadBalancer

    options = settings.balancer_options(base)
    LoadBalancer(options.pop("strategy"), **options, **settings.constructor_options())


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str | None = None,
    environ: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
) -> MeshConfig:
    """Check a raw mapping (environment overrides first); ConfigError lists every problem."""
    raw = copy.deepcopy(dict(data))
    origins = apply_environment(raw, os.environ if environ is None else environ, env_prefix)
    errors: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL:
            errors.append(
                f"{_where(str(key), origins)}: unknown section (expected one of "
                f"{', '.join(TOP_LEVEL)}), got {raw[key]!r}"
            )
    version = raw.get("version", 1)
    if version != 1:
        errors.append(f"version: must be 1, got {version!r}")
    defaults, default_resolver = _check_sections(
        "defaults", raw.get("defaults", {}), errors, origins
    )
    services_raw = raw.get("services", {})
    services: dict[str, ServiceSettings] = {}
    if not isinstance(services_raw, dict):
        errors.append(f"services: must be a table of services, got {services_raw!r}")
        services_raw = {}
    for name, own in services_raw.items():
        path = f"services.{name}"
        if not isinstance(name, str) or not name:
            errors.append(f"{path}: a service name must be a non-empty string, got {name!r}")
            continue
        before = len(errors)
        sections, resolver = _check_sections(path, own if own is not None else {}, errors, origins)
        settings = ServiceSettings(name, _merge(defaults, sections), resolver or default_resolver)
        if len(errors) == before:
            _try_build(path, settings, errors)
        services[name] = settings
    http = _check_section("http", raw.get("http", {}), HTTP, errors, origins)
    instance_breaker = None
    if "instance_breaker" in raw:
        instance_breaker = _check_section(
            "instance_breaker", raw["instance_breaker"], INSTANCE_BREAKER, errors, origins
        )
        try:
            _breaker_config(instance_breaker, CircuitBreakerConfig())
        except (TypeError, ValueError) as error:
            errors.append(f"instance_breaker: {error}")
    if errors:
        raise ConfigError(errors)
    return MeshConfig(services, http, instance_breaker, source, raw, origins)


def load_config(
    source: Any,
    *,
    format: str | None = None,
    environ: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
) -> MeshConfig:
    """Read and check ``source`` (a mapping or a TOML, YAML or JSON file)."""
    data, path = read_source(source, format=format)
    try:
        return parse_config(data, source=path, environ=environ, env_prefix=env_prefix)
    except ConfigError as error:
        if path is None:
            raise
        raise ConfigError([f"{path}: {line}" for line in error.errors]) from None
