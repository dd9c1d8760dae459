#!/usr/bin/env python3
"""Measure the Redis-backed circuit breaker: calls/s against in-memory, and trip propagation.

    .venv/bin/python scripts/bench_redis_store.py [--url redis://127.0.0.1:6379/0]

1. CLOSED success path: ``cb.execute(fn)`` and a ``wrap``-ed function, in-memory
   vs bound to a RedisStore (the success path never makes a round trip, so the
   two should match); then the same with 1 call in 100 failing (failures are
   reported to Redis at once, their successors batched).
2. Trip propagation: 3 worker processes bind the breaker and record (wall clock)
   when their listener sees OPEN; this process trips it. Latency is measured from
   just before the tripping call, so it is an upper bound. Target: < 100 ms.

Keys use a random prefix and are deleted afterwards. Needs a reachable Redis.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import sys
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import redis

from codomyrmex.service_mesh import CircuitBreaker, CircuitBreakerConfig, CircuitState
from codomyrmex.service_mesh.integrations.redis import RedisStore

THRESHOLD = 5


class Boom(Exception):
    pass


def fn() -> None:
    return None


def calls_per_second(call: Any, number: int, repeats: int) -> float:
    best = min(timeit.repeat(call, number=number, repeat=repeats))
    return number / best


def mixed(cb: CircuitBreaker, number: int) -> float:
    def boom() -> None:
        raise Boom

    start = time.perf_counter()
    for i in range(number):
        try:
            cb.execute(boom if i % 100 == 99 else fn)
        except Boom:
            pass
    return number / (time.perf_counter() - start)


def watcher(url: str, prefix: str, ready: Any, seen: Any, rounds: int) -> None:
    logging.getLogger("codomyrmex.service_mesh").setLevel(logging.ERROR)
    store = RedisStore(url, prefix=prefix)
    config = CircuitBreakerConfig(failure_threshold=THRESHOLD, timeout_seconds=600.0)
    opened: list[float] = []

    def listener(_cb: CircuitBreaker, _old: CircuitState, new: CircuitState) -> None:
        if new is CircuitState.OPEN:
            opened.append(time.time())
            seen.put(opened[-1])

    CircuitBreaker("propagation", config, store=store, on_state_change=listener)
    ready.put(os.getpid())
    deadline = time.monotonic() + 60
    while len(opened) < rounds and time.monotonic() < deadline:
        time.sleep(0.01)
    store.close()


def propagation(url: str, prefix: str, rounds: int, workers: int) -> list[float]:
    ctx = multiprocessing.get_context("spawn")
    ready, seen = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=watcher, args=(url, prefix, ready, seen, rounds)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    store = RedisStore(url, prefix=prefix)
    config = CircuitBreakerConfig(failure_threshold=THRESHOLD, timeout_seconds=600.0)
    cb = CircuitBreaker("propagation", config, store=store)

    def boom() -> None:
        raise Boom

    lags: list[float] = []
    for _ in range(rounds):
        for _ in range(THRESHOLD - 1):
            try:
                cb.execute(boom)
            except Boom:
                pass
        before = time.time()
        try:
            cb.execute(boom)
        except Boom:
            pass
        assert cb.state is CircuitState.OPEN
        lags += [seen.get(timeout=10) - before for _ in procs]
        cb.reset()
        time.sleep(0.05)  # let every worker adopt the reset before the next trip
    for p in procs:
        p.join(timeout=30)
    store.close()
    return lags


def main() -> int:
    logging.getLogger("codomyrmex.service_mesh").setLevel(logging.ERROR)  # transitions are noise
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    store = RedisStore(args.url, prefix=prefix)
    config = CircuitBreakerConfig(failure_threshold=THRESHOLD)
    mixed_config = CircuitBreakerConfig(failure_threshold=10**9)
    try:
        memory = CircuitBreaker("memory", config)
        shared = CircuitBreaker("shared", config, store=store)
        calls = {
            ("in-memory", "execute"): lambda: memory.execute(fn),
            ("in-memory", "wrapped"): memory.wrap(fn),
            ("redis-backed", "execute"): lambda: shared.execute(fn),
            ("redis-backed", "wrapped"): shared.wrap(fn),
        }
        best = dict.fromkeys(calls, 0.0)
        for round_ in range(args.repeats):  # interleaved, alternating order: fair under load
            order = list(calls) if round_ % 2 else list(reversed(calls))
            for key in order:
                best[key] = max(best[key], calls_per_second(calls[key], args.number, 1))
        rows = [
            (label, best[label, "execute"], best[label, "wrapped"])
            for label in ("in-memory", "redis-backed")
        ]
        mixed_rows = [
            ("in-memory", mixed(CircuitBreaker("mixed-memory", mixed_config), args.number // 4)),
            (
                "redis-backed",
                mixed(CircuitBreaker("mixed-shared", mixed_config, store=store), args.number // 4),
            ),
        ]
        print(f"CLOSED success path, best of {args.repeats} interleaved x {args.number:,} calls:")
        for label, execute_rate, wrap_rate in rows:
            print(
                f"  {label:13s} cb.execute(fn) {execute_rate:>12,.0f} calls/s"
                f"   wrapped fn() {wrap_rate:>12,.0f} calls/s"
            )
        print(
            f"  ratio redis/memory: execute {rows[1][1] / rows[0][1]:.3f}, "
            f"wrapped {rows[1][2] / rows[0][2]:.3f}"
        )
        print("1 call in 100 failing (failures reported to Redis at once):")
        for label, rate in mixed_rows:
            print(f"  {label:13s} {rate:>12,.0f} calls/s")
        lags = sorted(propagation(args.url, prefix, args.rounds, 3))
        p95 = lags[int(0.95 * (len(lags) - 1))]
        print(
            f"Trip propagation to 3 other processes ({len(lags)} observations): "
            f"median {statistics.median(lags) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms, "
            f"max {lags[-1] * 1000:.2f} ms (target < 100 ms)"
        )
    finally:
        store.close()
        client = redis.Redis.from_url(args.url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
