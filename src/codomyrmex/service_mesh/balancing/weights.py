"""Weights relative to the heaviest, and the alias table WEIGHTED draws from.

Weights are used relative to the heaviest, so no sum or product of weights can
overflow, however large or small they are.
"""

from __future__ import annotations

import math

__all__ = ["alias_table", "relative_weights"]

MIN_RELATIVE = 1e-300
"""Relative weights below this are treated as this (no underflow to 0)."""


def relative_weights(weights: list[float]) -> list[float]:
    """Each weight divided by the largest, in ``(0, 1]`` (weights must be positive)."""
    top = max(weights)
    return [max(w / top, MIN_RELATIVE) for w in weights]


def alias_table(weights: list[float]) -> tuple[list[float], list[int]]:
    """Vose's alias table for positive ``weights``: ``(prob, other)``, one draw per pick."""
    n = len(weights)
    prob = [1.0] * n
    other = list(range(n))
    if not n:
        return prob, other
    relative = relative_weights(weights)
    total = math.fsum(relative)  # at most n: cannot overflow
    scaled = [w * n / total for w in relative]
    small = [i for i, s in enumerate(scaled) if s < 1.0]
    large = [i for i, s in enumerate(scaled) if s >= 1.0]
    while small and large:
        s = small.pop()
        g = large[-1]
        prob[s] = scaled[s]
        other[s] = g
        scaled[g] -= 1.0 - scaled[s]
        if scaled[g] < 1.0:
            small.append(large.pop())
    return prob, other
