"""The mesh registry: a process's services and circuit breakers, by name.

It is also the mesh-wide event bus: :meth:`Mesh.subscribe` delivers the events
of every registered breaker, proxy and load balancer (and of any other component
handed to :meth:`Mesh.watch`), including components registered later. While
nobody subscribes, the mesh attaches nothing to its components, so their hot
paths stay as cheap as with no mesh at all.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

from ._equivalence import equivalent
from ._validate import check_instance, check_str
from .circuit_breaker import CircuitBreaker, CircuitBreakerConfig, Clock
from .discovery import Resolver, Source
from .events import Event, EventListener, Publisher, publish
from .proxy import ServiceProxy
from .status import balancer_status, breaker_status, instance_status, service_status
from .store import BreakerStore

__all__ = [
    "EventSource",
    "Mesh",
    "balancer_status",
    "breaker_status",
    "default_mesh",
    "instance_status",
    "service_status",
]


class EventSource(Protocol):
    """Anything that publishes events to subscribers (breaker, proxy, balancer, retry, chaos)."""

    def subscribe(self, listener: EventListener) -> None: ...

    def unsubscribe(self, listener: EventListener) -> None: ...


class Mesh(Publisher):
    """Thread-safe registry of services (name -> proxy) and circuit breakers (name -> breaker).

    The decorators use :func:`default_mesh`, so every ``@with_circuit_breaker``
    with the same name shares one breaker.

    :meth:`subscribe` delivers the events of every component of the mesh: every
    registered breaker, proxy (calls, retries) and its load balancer (picks, health,
    ejections), those registered later included, and every component passed to
    :meth:`watch`. When the last listener leaves, the mesh detaches from them all.
    """

    __slots__ = (
        "_attached",
        "_breakers",
        "_config",
        "_dispatch",
        "_lock",
        "_resolvers",
        "_services",
        "_store",
        "_subscribers",
        "_watched",
    )

    def __init__(self, *, store: BreakerStore | None = None) -> None:
        self._store: BreakerStore | None = None
        self.store = store  # checked now, not at the first breaker (maybe at import time)
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._services: dict[str, ServiceProxy] = {}
        self._resolvers: dict[str, Resolver] = {}
        self._subscribers: tuple[EventListener, ...] = ()
        self._watched: list[EventSource] = []
        # Components that currently carry ``_dispatch``, by id (kept alive here).
        self._attached: dict[int, EventSource] = {}
        # One bound method, kept so that components can unsubscribe it by identity.
        self._dispatch: EventListener = self._deliver
        self._config: Any = None  # a config.ConfigBinding once built from a configuration

    def __repr__(self) -> str:
        return f"Mesh(services={sorted(self._services)}, breakers={sorted(self._breakers)})"

    # -- configuration ------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        source: Any,
        *,
        format: str | None = None,
        environ: Mapping[str, str] | None = None,
        store: BreakerStore | None = None,
    ) -> Mesh:
        """A mesh serving the services of a configuration: a mapping or a TOML, YAML or
        JSON file (see :mod:`codomyrmex.service_mesh.config`). Raises ``ConfigError``
        (a ValueError) listing every problem, each with its full path and value."""
        from .config import ConfigBinding, apply_config, load_config

        config = load_config(source, format=format, environ=environ)
        mesh = cls(store=store)
        binding = ConfigBinding(config, source, format=format, environ=environ)
        apply_config(mesh, binding, config)
        mesh._config = binding
        return mesh

    def reload(self, source: Any = None) -> Any:
        """Apply a new configuration (by default, the source this mesh was built from again).

        Breaker states, connection counts and ejections are kept. An invalid
        configuration raises ``ConfigError`` and the current one stays, whole.
        Returns the new ``MeshConfig``.
        """
        from .config import ConfigBinding, apply_config

        binding = self._config
        if binding is None:
            if source is None:
                raise ValueError("this mesh was not built from a configuration; pass source")
            from .config import load_config

            config = load_config(source)
            binding = ConfigBinding(config, source)
            apply_config(self, binding, config)
            self._config = binding
            return config
        config = binding.load(source)
        apply_config(self, binding, config)
        if source is not None:
            binding.source = source
        return config

    @property
    def config(self) -> Any:
        """The ``MeshConfig`` this mesh serves, or None when it was not built from one."""
        binding = self._config
        return None if binding is None else binding.config

    # -- breakers ---------------------------------------------------------------

    def circuit_breaker(
        self, name: str, config: CircuitBreakerConfig | None = None, *, clock: Clock | None = None
    ) -> CircuitBreaker:
        """The breaker called ``name``, created on first use.

        Asking again with a different ``config`` than the registered breaker's
        raises ValueError; ``config=None`` accepts whatever is registered. Configs
        holding equal-looking functions (the same code, capturing equal values) are
        the same config.
        """
        check_str("name", name)
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                options: dict[str, Any] = {}
                if clock is not None:
                    options["clock"] = clock
                if self._store is not None:
                    options["store"] = self._store
                breaker = CircuitBreaker(name, config, **options)
                self._breakers[name] = breaker
                self._sync()
            elif config is not None and not equivalent(config, breaker.config):
                raise ValueError(
                    f"circuit breaker {name!r} is registered with {breaker.config!r}; "
                    f"got a different config {config!r}"
                )
            return breaker

    @property
    def store(self) -> BreakerStore | None:
        """The state store given to breakers this mesh creates (e.g. a ``RedisStore``).

        Set it before decorated modules are imported: decorators create their
        breakers when they decorate. Breakers created earlier keep their store.
        """
        return self._store

    @store.setter
    def store(self, store: BreakerStore | None) -> None:
        if store is not None and not callable(getattr(store, "bind", None)):
            raise TypeError(f"store must be a BreakerStore (with a bind method), got {store!r}")
        self._store = store

    def add_circuit_breaker(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Register an existing breaker under its name (ValueError if the name is taken)."""
        check_instance("breaker", breaker, CircuitBreaker)
        with self._lock:
            current = self._breakers.setdefault(breaker.name, breaker)
            self._sync()
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
            removed = self._breakers.pop(name, None) is not None
            self._sync()
            return removed

    # -- services ---------------------------------------------------------------

    def register_service(self, proxy: ServiceProxy) -> ServiceProxy:
        """Register a proxy under its service name (its breaker too), replacing one of that name.

        A different breaker already registered under the proxy's breaker name
        (say by ``@with_circuit_breaker``) raises ValueError: two breakers of one
        name would not share state. Build the proxy with
        ``circuit_breaker=mesh.circuit_breaker(name)`` to share it.
        """
        check_instance("proxy", proxy, ServiceProxy)
        breaker = proxy.circuit_breaker
        with self._lock:
            current = self._breakers.get(breaker.name)
            replaced = self._services.get(proxy.service_name)
            ours = replaced is not None and current is replaced.circuit_breaker
            if current is not None and current is not breaker and not ours:
                raise ValueError(
                    f"a different circuit breaker is registered as {breaker.name!r}; "
                    "build the proxy with that breaker to share its state"
                )
            self._services[proxy.service_name] = proxy
            self._breakers[breaker.name] = breaker
            self._sync()
        return proxy

    def services(self) -> dict[str, ServiceProxy]:
        """A snapshot of all registered services by name."""
        with self._lock:
            return dict(self._services)

    def get_service(self, name: str) -> ServiceProxy | None:
        """The proxy of service ``name``, or None."""
        return self._services.get(name)

    def remove_service(self, name: str) -> bool:
        """Forget service ``name`` (and its breaker, unless another service shares it).

        True if it was registered. Its resolver, if any, is stopped.
        """
        self.remove_resolver(name)
        with self._lock:
            proxy = self._services.pop(name, None)
            if proxy is not None:
                breaker = proxy.circuit_breaker
                shared = any(p.circuit_breaker is breaker for p in self._services.values())
                if self._breakers.get(breaker.name) is breaker and not shared:
                    del self._breakers[breaker.name]
            self._sync()
            return proxy is not None

    # -- discovery --------------------------------------------------------------

    def add_resolver(
        self, service: str, source: Source | Resolver, *, start: bool = True, **options: Any
    ) -> Resolver:
        """Keep registered service ``service``'s instances in step with ``source``.

        ``source`` is a discovery source (``options`` go to its :class:`Resolver`) or
        a resolver already bound to the service's load balancer. One resolver per
        service: adding another stops and replaces the first. Started unless
        ``start`` is false; :meth:`status` shows its source and staleness.
        """
        check_str("service", service)
        proxy = self._services.get(service)
        if proxy is None:
            raise ValueError(f"service must be a registered service, got {service!r}")
        if isinstance(source, Resolver):
            if options:
                raise TypeError(f"options apply to a source, not a Resolver: {sorted(options)}")
            if source.balancer is not proxy.load_balancer:
                raise ValueError(f"the resolver is bound to another balancer than {service!r}'s")
            resolver = source
        else:
            resolver = Resolver(source, proxy.load_balancer, **options)
        with self._lock:
            replaced = self._resolvers.get(service)
            self._resolvers[service] = resolver
        if replaced is not None and replaced is not resolver:
            replaced.stop()
        if start:
            resolver.start()
        return resolver

    def get_resolver(self, service: str) -> Resolver | None:
        """The resolver of service ``service``, or None."""
        return self._resolvers.get(service)

    def remove_resolver(self, service: str) -> bool:
        """Stop and forget service ``service``'s resolver (its instances stay); True if any."""
        with self._lock:
            resolver = self._resolvers.pop(service, None)
        if resolver is None:
            return False
        resolver.stop()
        return True

    # -- events -----------------------------------------------------------------

    def watch(self, source: EventSource) -> None:
        """Also deliver the events of ``source`` (a standalone retry policy, a chaos
        strategy, ...) to the mesh's subscribers, until :meth:`unwatch`."""
        if not callable(getattr(source, "subscribe", None)) or not callable(
            getattr(source, "unsubscribe", None)
        ):
            raise TypeError(f"source must have subscribe() and unsubscribe(), got {source!r}")
        with self._lock:
            if all(s is not source for s in self._watched):
                self._watched.append(source)
            self._sync()

    def unwatch(self, source: EventSource) -> None:
        """Stop relaying the events of ``source``; unknown sources are ignored."""
        with self._lock:
            self._watched = [s for s in self._watched if s is not source]
            self._sync()

    def _deliver(self, event: Event) -> None:
        publish(self._subscribers, event)

    def _subscribers_changed(self) -> None:
        self._sync()

    def _sync(self) -> None:
        """Attach the dispatcher to exactly the mesh's components (none without listeners).

        Lock held. Components never call back into the mesh while holding their
        own lock, so taking theirs here cannot deadlock.
        """
        wanted: dict[int, EventSource] = {}
        if self._subscribers:
            sources: list[EventSource] = list(self._breakers.values())
            for proxy in self._services.values():
                sources += (proxy, proxy.circuit_breaker, proxy.load_balancer)
            sources += self._watched
            wanted = {id(source): source for source in sources}
        attached = self._attached
        for key in [key for key in attached if key not in wanted]:
            attached.pop(key).unsubscribe(self._dispatch)
        for key, source in wanted.items():
            if key not in attached:
                source.subscribe(self._dispatch)
                attached[key] = source

    # -- status -----------------------------------------------------------------

    def status(self, *, include_instances: bool = True) -> dict[str, Any]:
        """A JSON-serialisable snapshot of every service and breaker."""
        services = [
            service_status(proxy, include_instances=include_instances)
            for proxy in self.services().values()
        ]
        for entry in services:
            resolver = self._resolvers.get(entry["name"])
            if resolver is not None:
                entry["discovery"] = resolver.status().as_dict()
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
        """Forget every service, breaker and watched component (subscribers stay)."""
        for service in list(self._resolvers):
            self.remove_resolver(service)
        with self._lock:
            self._services.clear()
            self._breakers.clear()
            self._watched.clear()
            self._sync()


_DEFAULT = Mesh()


def default_mesh() -> Mesh:
    """The process-wide mesh the decorators register their breakers in."""
    return _DEFAULT
