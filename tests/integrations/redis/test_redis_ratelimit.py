"""The fleet-wide rate limiter on a real Redis: one script, one round trip, several
processes sharing one budget, and outages (local, fail-open, fail-closed)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import redis
import redis.asyncio

import redis_server
from codomyrmex.service_mesh import (
    LimitExceededError,
    LoadBalancer,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.integrations.redis_ratelimit import RedisRateLimiter
from redis_server import SPAWN, WAIT, RedisServer

pytestmark = pytest.mark.redis

redis_url = redis_server.redis_url
private_redis = redis_server.private_redis
prefix = redis_server.prefix

SLOW = 0.001
"""A rate so low (one unit per 1000 s) that only the burst is ever admitted in a test."""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def command_counts(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


def test_burst_then_refusal_in_one_round_trip_each(private_redis: RedisServer) -> None:
    limiter = RedisRateLimiter(private_redis.url, "api", rate=10.0, burst=3)
    warm = RedisRateLimiter(limiter.client, "warm-up", rate=10.0)
    observer = redis.Redis.from_url(private_redis.url)
    try:
        warm.try_acquire()  # the connection's handshake happens here, once
        before = command_counts(observer)
        waits = [limiter.try_acquire() for _ in range(5)]
        after = command_counts(observer)
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert all(0.0 < wait <= 0.1 + 1e-3 for wait in waits[3:]), waits
        changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k)}
        # Five EVALs and what the script runs inside them (TIME, GET, and a SET per
        # admission); nothing else reached the server but this INFO.
        assert changed == {
            "cmdstat_eval": 5,
            "cmdstat_time": 5,
            "cmdstat_get": 5,
            "cmdstat_set": 3,
            "cmdstat_info": 1,
        }
        with pytest.raises(LimitExceededError) as caught:
            limiter.acquire()
        assert caught.value.kind == "rate_limit" and caught.value.retry_after > 0.0
        ttl = observer.pttl(limiter.key)
        assert 0 < ttl <= 1000  # the key goes once a full burst has refilled
    finally:
        limiter.close()
        observer.close()


def test_a_corrupt_key_is_treated_as_a_fresh_budget(redis_url: str, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_url, "corrupt", rate=SLOW, burst=2, prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(limiter.key, "x", "1")  # the wrong type
        assert [limiter.try_acquire() for _ in range(3)][:2] == [0.0, 0.0]
        client.set(limiter.key, "not a number")
        assert limiter.try_acquire() == 0.0
    finally:
        limiter.close()
        client.close()


def hammer(url: str, prefix: str, attempts: int, go: Any, results: Any) -> None:
    """Worker: one limiter of its own on the shared name; count what it was admitted."""
    limiter = RedisRateLimiter(url, "fleet", rate=SLOW, burst=50, prefix=prefix)
    go.wait(WAIT)
    admitted = sum(limiter.try_acquire() == 0.0 for _ in range(attempts))
    results.put((os.getpid(), admitted))
    limiter.close()


def test_several_processes_share_one_budget(redis_url: str, prefix: str) -> None:
    go, results = SPAWN.Event(), SPAWN.Queue()
    workers = [
        SPAWN.Process(target=hammer, args=(redis_url, prefix, 40, go, results)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    try:
        go.set()
        counts = [results.get(timeout=WAIT) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=WAIT)
            if worker.is_alive():
                worker.kill()
    assert sum(admitted for _, admitted in counts) == 50, counts  # 160 tries, burst 50


def outage_worker(url: str, prefix: str, commands: Any, results: Any) -> None:
    """Worker: runs the phases the test sends; reports (phase, admitted, online)."""
    limiter = RedisRateLimiter(
        url, "outage", rate=SLOW, burst=50, prefix=prefix, local_rate=SLOW, local_burst=3,
        reconnect_interval=0.0, socket_timeout=0.5,
    )  # fmt: skip
    while True:
        phase = commands.get(timeout=WAIT)
        if phase == "stop":
            break
        if phase == "online":
            admitted = int(limiter.try_acquire() == 0.0)
        elif phase == "down":
            admitted = sum(limiter.try_acquire() == 0.0 for _ in range(10))
        else:  # "back": ask until Redis answers (bounded), then 30 more
            admitted = 0
            for _ in range(10_000):
                admitted += limiter.try_acquire() == 0.0
                if limiter.online:
                    break
            admitted += sum(limiter.try_acquire() == 0.0 for _ in range(30))
        results.put((phase, admitted, limiter.online))
    limiter.close()


def test_several_processes_through_an_outage(private_redis: RedisServer, prefix: str) -> None:
    workers = []
    for _ in range(3):
        commands, results = SPAWN.Queue(), SPAWN.Queue()
        process = SPAWN.Process(
            target=outage_worker, args=(private_redis.url, prefix, commands, results)
        )
        process.start()
        workers.append((process, commands, results))

    def phase(name: str) -> list[tuple[str, int, bool]]:
        for _, commands, _ in workers:
            commands.put(name)
        return [results.get(timeout=WAIT) for _, _, results in workers]

    try:
        assert phase("online") == [("online", 1, True)] * 3  # 3 of the fleet's 50
        private_redis.stop()
        # Each process falls back to its own limit: exactly its local burst, no errors.
        assert phase("down") == [("down", 3, False)] * 3
        private_redis.start()  # no persistence: the fleet's budget starts afresh
        back = phase("back")
        assert all(online for _, _, online in back), back
        assert sum(admitted for _, admitted, _ in back) == 50, back
    finally:
        for process, commands, _ in workers:
            commands.put("stop")
        for process, _, _ in workers:
            process.join(timeout=WAIT)
            if process.is_alive():
                process.kill()


@pytest.mark.parametrize(("mode", "admitted"), [("local", 2), ("fail_open", 5), ("fail_closed", 0)])
def test_outage_modes(private_redis: RedisServer, mode: str, admitted: int) -> None:
    clock = Clock()
    limiter = RedisRateLimiter(
        private_redis.url, "modes", rate=SLOW, burst=2, on_outage=mode,  # type: ignore[arg-type]
        reconnect_interval=5.0, clock=clock,
    )  # fmt: skip
    try:
        assert limiter.try_acquire() == 0.0 and limiter.online
        private_redis.stop()
        waits = [limiter.try_acquire() for _ in range(5)]
        assert not limiter.online
        assert sum(wait == 0.0 for wait in waits) == admitted, waits
        if mode == "fail_closed":
            assert all(wait > 0.0 for wait in waits)
        private_redis.start()
        limiter.try_acquire()
        assert not limiter.online  # Redis is not asked again before reconnect_interval
        clock.now += 5.0
        assert limiter.try_acquire() == 0.0 and limiter.online  # a fresh fleet budget
    finally:
        limiter.close()


def _balancer() -> LoadBalancer:
    balancer = LoadBalancer()
    balancer.register(ServiceInstance("a", "127.0.0.1", 1))
    return balancer


def test_in_a_proxy_sync_and_async_alike(redis_url: str, prefix: str) -> None:
    def run_sync(limiter: RedisRateLimiter) -> list[str]:
        proxy = ServiceProxy("orders", _balancer(), rate_limit=limiter)
        out = []
        for _ in range(3):
            try:
                out.append(proxy.call(lambda instance: "ok"))
            except LimitExceededError as error:
                out.append(error.kind)
        return out

    async def run_async(limiter: RedisRateLimiter) -> list[str]:
        proxy = ServiceProxy("orders", _balancer(), rate_limit=limiter)

        async def handler(instance: ServiceInstance) -> str:
            return "ok"

        out = []
        for _ in range(3):
            try:
                out.append(await proxy.call_async(handler))
            except LimitExceededError as error:
                out.append(error.kind)
        return out

    expected = ["ok", "ok", "rate_limit"]
    sync = RedisRateLimiter(redis_url, "sync", rate=SLOW, burst=2, prefix=prefix)
    threaded = RedisRateLimiter(redis_url, "threaded", rate=SLOW, burst=2, prefix=prefix)
    assert run_sync(sync) == expected
    assert asyncio.run(run_async(threaded)) == expected  # no async client: a thread each

    async def with_async_client() -> list[str]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            limiter = RedisRateLimiter(
                redis_url, "async", rate=SLOW, burst=2, prefix=prefix, async_client=client
            )
            result = await run_async(limiter)
            limiter.close()
            return result
        finally:
            await client.aclose()

    assert asyncio.run(with_async_client()) == expected
    assert "fleet-wide" in ServiceProxy("x", rate_limit=sync).describe()
    sync.close()
    threaded.close()


def test_validates(redis_url: str) -> None:
    with pytest.raises(ValueError, match="on_outage"):
        RedisRateLimiter(redis_url, "x", 1.0, on_outage="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate"):
        RedisRateLimiter(redis_url, "x", 0.0)
    with pytest.raises(TypeError, match="client"):
        RedisRateLimiter(42, "x", 1.0)  # type: ignore[arg-type]
