"""Server pushback: ``Retry-After`` and gRPC's ``grpc-retry-pushback-ms``, as seconds.

Both become a failure's ``retry_after``, which the retry policy waits for (capped at its
``max_delay``). Standard library only.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from datetime import timezone

__all__ = ["parse_grpc_pushback", "parse_retry_after"]


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait for a ``Retry-After`` value (delta seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def parse_grpc_pushback(value: str | bytes | None) -> float | None:
    """Seconds of a ``grpc-retry-pushback-ms`` value; None when absent.

    gRPC: a non-negative integer of milliseconds means "retry after that long";
    a negative or unparseable value means "do not retry" (returned as ``-1.0``).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = value.strip()
    if not text.isdigit():
        return -1.0
    return int(text) / 1000.0
