"""Trace-context propagation for every client integration (one injector, set by tracing)."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

__all__ = ["set_trace_injector", "trace_headers"]

_trace_injector: Callable[[MutableMapping[str, str]], object] | None = None


def set_trace_injector(inject: Callable[[MutableMapping[str, str]], object] | None) -> None:
    """Install the function that writes the current trace context into a header mapping.

    :mod:`.tracing` installs OpenTelemetry's W3C propagator when it is imported, and from
    then on every client integration (httpx, requests, aiohttp, gRPC metadata) sends
    ``traceparent`` with each attempt. None turns propagation off again.
    """
    global _trace_injector
    _trace_injector = inject


def trace_headers() -> dict[str, str] | None:
    """The trace-context headers for one outgoing attempt, or None (nothing to send)."""
    inject = _trace_injector
    if inject is None:
        return None
    headers: dict[str, str] = {}
    inject(headers)
    return headers or None
