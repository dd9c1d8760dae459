"""Building a mesh from a checked configuration, and applying a reloaded one in place.

A reload keeps every live object: the breakers (state, counts, open period),
the load balancers (instances, connection counts, ejections), the bulkheads (calls
in flight) and, when its settings did not change, the retry budget. What changed is
applied to them through their ``reconfigure`` methods. Everything new is built and
checked before anything is touched: an invalid configuration changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any

from ..bulkhead import Bulkhead
from ..circuit_breaker import CircuitBreaker, CircuitBreakerConfig
from ..load_balancer import LoadBalancer, ServiceInstance
from ..proxy import ServiceProxy
from ..retry import RetryPolicy
from ._model import ENV_PREFIX, ConfigError, MeshConfig, ServiceSettings, load_config
from .resolvers import Resolution, resolver_kinds

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = ["ConfigBinding", "apply_config", "build_proxy"]


@dataclass
class _Managed:
    proxy: ServiceProxy
    settings: ServiceSettings
    resolution: Resolution | None


@dataclass
class _Plan:
    """The new objects and configs of one service, built before anything is applied."""

    settings: ServiceSettings
    breaker: CircuitBreakerConfig
    budget_changed: bool
    budget: Any
    retry: RetryPolicy
    balancer: dict[str, Any]
    bulkhead: Bulkhead | None
    hedging: tuple[float | None, int]


def build_proxy(
    settings: ServiceSettings, *, instances: list[ServiceInstance] | None = None
) -> ServiceProxy:
    """A new proxy for one service's settings (instances registered when given)."""
    base = ServiceProxy(settings.name)
    options = settings.balancer_options(base)
    strategy = options.pop("strategy")
    balancer = LoadBalancer(
        strategy, name=settings.name, **options, **settings.constructor_options()
    )
    for instance in instances or ():
        balancer.register(instance)
    budget = settings.budget(base.retry_policy.budget)
    delay, attempts = settings.hedging(base)
    return ServiceProxy(
        settings.name,
        balancer,
        CircuitBreaker(settings.name, settings.breaker_config(base.circuit_breaker.config)),
        settings.retry_policy(base.retry_policy, budget),
        bulkhead=settings.bulkhead(),
        hedging_delay=delay,
        max_hedged_attempts=attempts,
    )


def _start(settings: ServiceSettings, balancer: LoadBalancer) -> Resolution | None:
    if settings.resolver is None:
        return None
    resolver = dict(settings.resolver)
    kind = resolver_kinds()[resolver.pop("type")]
    return kind.start(settings.name, resolver, balancer)


@dataclass(eq=False)
class ConfigBinding:
    """What a mesh built from a configuration remembers: the source and its services."""

    config: MeshConfig
    source: Any
    _: KW_ONLY
    format: str | None = None
    environ: Mapping[str, str] | None = None
    env_prefix: str = ENV_PREFIX
    managed: dict[str, _Managed] = field(default_factory=dict, init=False, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    listeners: list[Callable[[MeshConfig | None, BaseException | None], None]] = field(
        default_factory=list, init=False, repr=False
    )

    def load(self, source: Any = None) -> MeshConfig:
        return load_config(
            self.source if source is None else source,
            format=self.format,
            environ=self.environ,
            env_prefix=self.env_prefix,
        )


def apply_config(mesh: Mesh, binding: ConfigBinding, config: MeshConfig) -> None:
    """Make ``mesh`` serve ``config``: reconfigure kept services, add new ones, drop removed ones.

    Raises ConfigError (and changes nothing) when a new component cannot be built.
    """
    with binding.lock:
        plans: dict[str, _Plan] = {}
        errors: list[str] = []
        for name, settings in config.services.items():
            current = binding.managed.get(name)
            if current is None:
                continue
            try:
                plans[name] = _plan(current, settings)
            except (TypeError, ValueError) as error:
                errors.append(f"services.{name}: {error}")
        fresh: dict[str, ServiceProxy] = {}
        for name, settings in config.services.items():
            if name in binding.managed:
                continue
            try:
                fresh[name] = build_proxy(settings)
            except (TypeError, ValueError) as error:
                errors.append(f"services.{name}: {error}")
        if errors:
            raise ConfigError(errors)
        for name, plan in plans.items():
            _reconfigure(binding.managed[name], plan)
        for name, proxy in fresh.items():
            settings = config.services[name]
            mesh.register_service(proxy)
            binding.managed[name] = _Managed(proxy, settings, _start(settings, proxy.load_balancer))
        for name in [n for n in binding.managed if n not in config.services]:
            gone = binding.managed.pop(name)
            if gone.resolution is not None:
                gone.resolution.close()
            if mesh.get_service(name) is gone.proxy:
                mesh.remove_service(name)
        binding.config = config


def _plan(current: _Managed, settings: ServiceSettings) -> _Plan:
    proxy = current.proxy
    base = ServiceProxy(settings.name)
    old = current.settings
    budget_changed = old.section("budget") != settings.section("budget")
    budget = (
        settings.budget(base.retry_policy.budget) if budget_changed else proxy.retry_policy.budget
    )
    options = settings.balancer_options(base)
    # A balancer-only option (table sizes, EWMA decay) needs a new balancer: refuse it.
    if settings.constructor_options() != old.constructor_options():
        raise ValueError(
            "balancing.ewma_decay, ring_replicas and maglev_table_size cannot change on reload"
        )
    return _Plan(
        settings,
        settings.breaker_config(base.circuit_breaker.config),
        budget_changed,
        budget,
        settings.retry_policy(base.retry_policy, budget),
        options,
        settings.bulkhead(),
        settings.hedging(base),
    )


def _reconfigure(current: _Managed, plan: _Plan) -> None:
    proxy = current.proxy
    settings = plan.settings
    if proxy.circuit_breaker.config != plan.breaker:
        proxy.circuit_breaker.reconfigure(plan.breaker)
    if current.settings.section("retry") != settings.section("retry") or plan.budget_changed:
        proxy.retry_policy = plan.retry
    proxy.load_balancer.reconfigure(**plan.balancer)
    new_bulkhead = plan.bulkhead
    if new_bulkhead is None:
        proxy.bulkhead = None
    elif proxy.bulkhead is None:
        proxy.bulkhead = new_bulkhead
    else:
        proxy.bulkhead.reconfigure(
            new_bulkhead.max_concurrent,
            max_queue=new_bulkhead.max_queue,
            queue_timeout=new_bulkhead.queue_timeout,
        )
    delay, attempts = plan.hedging
    if (proxy.hedging_delay, proxy.max_hedged_attempts) != (delay, attempts):
        proxy.max_hedged_attempts = attempts
        proxy.hedging_delay = delay
    old_resolver = current.settings.resolver
    new_resolver = settings.resolver
    if old_resolver != new_resolver:
        if (
            current.resolution is not None
            and old_resolver is not None
            and new_resolver is not None
            and old_resolver["type"] == new_resolver["type"]
        ):
            current.resolution.update({k: v for k, v in new_resolver.items() if k != "type"})
        else:
            if current.resolution is not None:
                current.resolution.close()
            current.resolution = _start(settings, proxy.load_balancer)
    current.settings = settings
