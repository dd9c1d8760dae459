"""Where a configured service's instances come from: a small registry of resolver kinds.

A service's ``resolver`` section names a kind (``type = "static"``) and holds
that kind's settings. A kind is registered once with :func:`register_resolver`:
its settings (a table of :class:`~._fields.Field`, checked with every other
setting, errors naming the full path) and a function that starts it for one
service's load balancer. Starting returns a :class:`Resolution`: ``update``
applies the settings of a reloaded configuration, ``close`` stops it.

Built in: ``static``, a fixed list of ``host:port`` strings or
``{host, port, weight, id}`` tables. On reload it registers the instances that
appeared and deregisters those that went, so the others keep their connection
counts, health and ejections.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..load_balancer import LoadBalancer, ServiceInstance
from ._fields import Field

__all__ = [
    "Resolution",
    "ResolverKind",
    "register_resolver",
    "resolver_kinds",
    "static_instances",
]


class Resolution(Protocol):
    """A started resolver of one service."""

    def update(self, settings: Mapping[str, Any]) -> None:
        """Apply the (already checked) settings of a reloaded configuration."""

    def close(self) -> None:
        """Stop resolving (instances stay registered)."""


Start = Callable[[str, Mapping[str, Any], LoadBalancer], Resolution]
"""Starts a resolver: (service name, its checked settings, its balancer) -> resolution."""


@dataclass(frozen=True)
class ResolverKind:
    """One registered kind of resolver."""

    name: str
    fields: Mapping[str, Field]
    start: Start
    required: tuple[str, ...] = ()
    description: str = ""


_LOCK = threading.Lock()
_KINDS: dict[str, ResolverKind] = {}


def register_resolver(
    name: str,
    start: Start,
    fields: Mapping[str, Field],
    *,
    required: tuple[str, ...] = (),
    description: str = "",
) -> None:
    """Register (or replace) the resolver kind ``name``; ``type`` is reserved."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(start):
        raise TypeError(f"start must be callable, got {start!r}")
    if "type" in fields:
        raise ValueError("a resolver field may not be called 'type'")
    missing = [key for key in required if key not in fields]
    if missing:
        raise ValueError(f"required fields {missing} are not in fields")
    with _LOCK:
        _KINDS[name] = ResolverKind(name, dict(fields), start, tuple(required), description)


def resolver_kinds() -> dict[str, ResolverKind]:
    """The registered kinds, by name."""
    with _LOCK:
        return dict(_KINDS)


def static_instances(service: str, entries: list[Any]) -> list[ServiceInstance]:
    """The instances a static list describes (ids default to ``host:port``)."""
    instances = []
    for entry in entries:
        if isinstance(entry, str):
            host, _, port = entry.rpartition(":")
            instances.append(ServiceInstance(entry, host, int(port)))
        else:
            host, port = entry["host"], entry["port"]
            instances.append(
                ServiceInstance(
                    entry.get("id", f"{host}:{port}"), host, port, weight=entry.get("weight", 1)
                )
            )
    return instances


class _Static:
    def __init__(self, service: str, settings: Mapping[str, Any], balancer: LoadBalancer) -> None:
        self._service = service
        self._balancer = balancer
        self._ids: set[str] = set()
        self.update(settings)

    def update(self, settings: Mapping[str, Any]) -> None:
        wanted = static_instances(self._service, list(settings.get("instances", [])))
        ids = {instance.id for instance in wanted}
        for gone in self._ids - ids:
            self._balancer.deregister(gone)
        for instance in wanted:
            current = self._balancer.get(instance.id)
            if current is None:
                self._balancer.register(instance)
            elif (current.host, current.port, current.weight) != (
                instance.host,
                instance.port,
                instance.weight,
            ):
                instance.healthy = current.healthy  # keep the operator's word
                self._balancer.register(instance)
        self._ids = ids

    def close(self) -> None:
        pass


register_resolver(
    "static",
    _Static,
    {
        "instances": Field(
            "instances", "The instances: 'host:port' strings or {host, port, weight, id} tables."
        )
    },
    required=("instances",),
    description="A fixed list of instances.",
)
