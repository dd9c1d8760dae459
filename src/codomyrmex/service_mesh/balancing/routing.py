"""Routing keys: which key a RING_HASH or MAGLEV pick hashes, set per block of code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["ROUTING_KEY", "check_key", "current_routing_key", "routing_key"]

ROUTING_KEY: ContextVar[str | bytes | None] = ContextVar(
    "codomyrmex_service_mesh_routing_key", default=None
)
"""The key of the innermost :func:`routing_key` block (internal API: the strategies read it)."""


def check_key(key: Any) -> str | bytes:
    """Return ``key`` if it is a str or bytes."""
    if not isinstance(key, (str, bytes)):
        raise TypeError(f"key must be a str or bytes, got {key!r}")
    return key


@contextmanager
def routing_key(key: str | bytes) -> Iterator[None]:
    """Route the calls made inside the block by ``key`` (RING_HASH and MAGLEV).

    ``with routing_key("user-42"): proxy.call(handler)`` sends every call for
    that user to the same instance while membership is stable. The key lives in
    a context variable, so it follows the code through threads' and tasks' own
    contexts and never leaks between concurrent calls.
    """
    token = ROUTING_KEY.set(check_key(key))
    try:
        yield
    finally:
        ROUTING_KEY.reset(token)


def current_routing_key() -> str | bytes | None:
    """The key set by the innermost enclosing :func:`routing_key` block, or None."""
    return ROUTING_KEY.get()
