"""One reachable copy of a service, and what a membership update did to a balancer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._validate import check_int, check_number, check_str

__all__ = ["MembershipChange", "ServiceInstance"]


@dataclass(slots=True)
class ServiceInstance:
    """One reachable copy of a service. ``connections`` is kept current by the library."""

    id: str
    host: str
    port: int
    weight: float = 1
    healthy: bool = True
    connections: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_str("id", self.id)
        check_str("host", self.host)
        check_int("port", self.port, 1)
        if self.port > 65535:
            raise ValueError(f"port must be <= 65535, got {self.port!r}")
        check_number("weight", self.weight, 0.0)
        if not isinstance(self.healthy, bool):
            raise TypeError(f"healthy must be a bool, got {self.healthy!r}")
        check_int("connections", self.connections, 0)
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {self.metadata!r}")

    @property
    def address(self) -> str:
        """``"host:port"``."""
        return f"{self.host}:{self.port}"

    def update_from(self, other: ServiceInstance) -> None:
        """Take the address, weight and metadata of ``other`` (the same id), keeping
        this instance's health and connection count."""
        if other is not self:
            self.host = other.host
            self.port = other.port
            self.weight = other.weight
            self.metadata = other.metadata


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """What :meth:`LoadBalancer.update_members` did: the ids added, updated and removed."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
