"""Consistent-hashing tables for the RING_HASH and MAGLEV strategies.

Pure functions of instance ids and weights: the load balancer rebuilds a table
when its membership changes (see :mod:`.tables`) and looks keys up in it on each pick. Hashes are
stable across processes and Python versions (BLAKE2b, and Mersenne Twister
seeded from it), never Python's per-process ``hash()``.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from bisect import bisect_left
from hashlib import blake2b

from .weights import relative_weights

__all__ = [
    "MAX_RING_POINTS",
    "OWNER_BITS",
    "OWNER_MASK",
    "POSITION_BITS",
    "build_maglev",
    "build_ring",
    "is_prime",
    "key_hash",
    "maglev_params",
    "ring_counts",
    "ring_lookup",
    "ring_points",
]

MAX_RING_POINTS = 1 << 20
"""The default ``max_ring_size``: above it every instance's count is scaled down alike."""

POSITION_BITS = 40
"""Ring positions are 40-bit; the owner's index is packed into the 24 bits below."""
OWNER_BITS = 24
OWNER_MASK = (1 << OWNER_BITS) - 1


def key_hash(key: str | bytes) -> int:
    """A 64-bit hash of a routing key."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def ring_points(instance_id: str, count: int) -> list[int]:
    """The first ``count`` ring positions of an instance (a longer list extends a shorter one)."""
    seed = int.from_bytes(blake2b(instance_id.encode(), digest_size=16).digest(), "little")
    bits = random.Random(seed).getrandbits
    return [bits(POSITION_BITS) for _ in range(count)]


def ring_counts(weights: list[float], replicas: int, min_size: int, max_size: int) -> list[int]:
    """How many ring points each instance gets: in proportion to its normalised weight.

    As Envoy, only the ratios of the weights matter, never their scale: the
    lightest instance gets ``replicas`` points and each other one ``replicas x
    weight / lightest``, rounded. A ring with fewer than ``min_size`` points in
    all is scaled up, one with more than ``max_size`` scaled down, every count
    alike (each at least 1). Between the two bounds, adding or removing an
    instance changes no other instance's points, so no key moves between the
    instances that stay.
    """
    if not weights:
        return []
    relative = relative_weights(weights)
    total = math.fsum(relative)
    scale = replicas / min(relative)  # points per unit of relative weight
    if scale * total < min_size:
        scale = min_size / total
    if scale * total > max_size:
        scale = max_size / total
    return [max(1, round(w * scale)) for w in relative]


def build_ring(point_lists: list[list[int]]) -> tuple[array[int], array[int], int]:
    """Every instance's points in one sorted ring, with an index for O(1) lookups.

    Returns ``(points, starts, shift)``: ``points`` holds ``position << OWNER_BITS |
    owner_index`` in order; the points of positions ``p`` with ``p >> shift == b``
    lie in ``points[starts[b]:starts[b + 1]]``. A key at position ``p`` belongs to
    the first point at or after ``p << OWNER_BITS`` (wrapping around), whose low
    bits name the owner; see :func:`ring_lookup`.
    """
    if len(point_lists) > OWNER_MASK:
        raise ValueError(f"a ring holds at most {OWNER_MASK} instances")
    packed: list[int] = []
    for owner, points in enumerate(point_lists):
        packed.extend([(p << OWNER_BITS) | owner for p in points])
    packed.sort()
    index_bits = min(max(len(packed).bit_length() - 1, 0), POSITION_BITS)
    shift = POSITION_BITS - index_bits
    step = 1 << (shift + OWNER_BITS)
    starts = array("L", [bisect_left(packed, b * step) for b in range(1 << index_bits)])
    starts.append(len(packed))
    return array("Q", packed), starts, shift


def ring_lookup(points: array[int], starts: array[int], shift: int, position: int) -> int:
    """The index in ``points`` of the owner of ``position`` (``points`` must not be empty)."""
    bucket = position >> shift
    i = bisect_left(points, position << OWNER_BITS, starts[bucket], starts[bucket + 1])
    return 0 if i == len(points) else i


def maglev_params(instance_id: str, table_size: int) -> tuple[int, int]:
    """An instance's Maglev permutation: ``(offset, skip)`` for a prime ``table_size``."""
    digest = blake2b(instance_id.encode(), digest_size=16).digest()
    offset = int.from_bytes(digest[:8], "little") % table_size
    skip = int.from_bytes(digest[8:], "little") % (table_size - 1) + 1
    return offset, skip


def build_maglev(
    params: list[tuple[int, int]], weights: list[float], table_size: int
) -> array[int]:
    """Fill a Maglev lookup table (slot -> owner index), weighted as Envoy does.

    Each instance takes its next free slot along its own permutation when its
    turn comes; an instance of weight ``w`` gets a turn every ``max_weight / w``
    rounds, so its share of slots is proportional to its weight. With unequal
    weights the turns come from a heap keyed by round, so skewed weights cost
    no empty rounds.
    """
    n = len(params)
    table = [-1] * table_size
    if n == 0:
        return array("l", table)
    slots = [offset for offset, _ in params]  # each instance's next candidate slot
    skips = [skip for _, skip in params]
    equal = min(weights) == max(weights)
    # Weights relative to the heaviest, in (0, 1]: no sum or product can overflow, and a
    # vanishing weight is clamped so its next turn stays a finite round.
    relative = relative_weights(weights)
    turns = [(1, i) for i in range(n)]  # (round, owner): everyone's first turn is round 1
    taken = [0] * n
    for filled in range(table_size):
        if equal:
            i = filled % n
        else:
            rnd, i = heapq.heappop(turns)
            taken[i] += 1
            # The k-th turn of an instance of relative weight w comes in round ceil(k / w).
            heapq.heappush(turns, (max(rnd + 1, math.ceil(taken[i] / relative[i])), i))
        slot = slots[i]
        skip = skips[i]
        while table[slot] >= 0:
            slot += skip
            if slot >= table_size:
                slot -= table_size
        table[slot] = i
        slot += skip
        slots[i] = slot - table_size if slot >= table_size else slot
    return array("l", table)


def is_prime(n: int) -> bool:
    """Whether ``n`` is prime (trial division; table sizes are small)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True
