"""The demo's options and their defaults, written once (standard library only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_STATUS_PORT", "DemoOptions"]

DEFAULT_STATUS_PORT = 8742
"""Where the demo serves ``Mesh.status()`` as JSON while it runs (``service-mesh status``)."""


@dataclass(frozen=True)
class DemoOptions:
    """The demo's knobs (the CLI's options)."""

    requests: int = 3000
    """Requests in the stream; each run sends all of them."""
    concurrency: int = 32
    """Requests in flight at most, per run."""
    seed: int = 7
    """Fixes the stream, the plain client's picks and the backends' behaviour."""
    rate: float = 200.0
    """Requests started per second (a run takes about ``requests / rate`` seconds)."""
    status_port: int | None = DEFAULT_STATUS_PORT
    """Serve ``Mesh.status()`` here while running; 0 picks a free port, None serves nothing."""

    def __post_init__(self) -> None:
        for name in ("requests", "concurrency", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        for name in ("requests", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise TypeError(f"rate must be a number, got {rate!r}")
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be > 0, got {rate!r}")
        port = self.status_port
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise TypeError(f"status_port must be None or an int, got {port!r}")
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"status_port must be a port number (0 for any), got {port!r}")
