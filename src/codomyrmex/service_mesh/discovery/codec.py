"""Instances as JSON, the form registries (etcd, and anything of your own) store them in."""

from __future__ import annotations

import json
import logging
from typing import Any

from ..load_balancer import ServiceInstance

__all__ = ["instance_from_json", "instance_to_json"]

logger = logging.getLogger("codomyrmex.service_mesh.discovery")


def instance_to_json(instance: ServiceInstance) -> str:
    """``{"id", "host", "port", "weight", "healthy", "metadata"}``, keys sorted, compact."""
    return json.dumps(
        {
            "id": instance.id,
            "host": instance.host,
            "port": instance.port,
            "weight": instance.weight,
            "healthy": instance.healthy,
            "metadata": instance.metadata,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def instance_from_json(data: Any, *, log: logging.Logger = logger) -> ServiceInstance | None:
    """The instance ``data`` describes, or None (logged on ``log``) when it is malformed."""
    try:
        fields = json.loads(data)
        return ServiceInstance(
            id=fields["id"],
            host=fields["host"],
            port=fields["port"],
            weight=fields.get("weight", 1),
            healthy=fields.get("healthy", True),
            metadata=dict(fields.get("metadata") or {}),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring a malformed registry entry: %r", data)
        return None
