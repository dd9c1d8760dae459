"""The Redis service registry (integrations.redis.RedisRegistry) on a real Redis.

A LoadBalancer follows a registry through its public API; instances come from
other processes, leave on clean shutdown, and expire when their process dies.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import redis_server
from codomyrmex.service_mesh import LoadBalancer, ServiceInstance
from codomyrmex.service_mesh.integrations.redis import RedisRegistry, RegistryUnavailableError
from redis_server import SPAWN, WAIT, RedisServer, wait_for

pytestmark = pytest.mark.redis

# The shared Redis fixtures (see redis_server.py).
redis_url = redis_server.redis_url
private_redis = redis_server.private_redis
prefix = redis_server.prefix


@pytest.fixture
def registries(redis_url: str, prefix: str) -> Iterator[Callable[..., RedisRegistry]]:
    made: list[RedisRegistry] = []

    def make(**options: Any) -> RedisRegistry:
        options.setdefault("prefix", prefix)
        options.setdefault("deregister_at_exit", False)
        registry = RedisRegistry(redis_url, **options)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def ids(balancer: LoadBalancer) -> set[str]:
    return {instance.id for instance in balancer.instances}


def registering_worker(
    url: str,
    prefix: str,
    ttl: float,
    instance_id: str,
    registered: Any,
    then: str,
    proceed: Any = None,
) -> None:
    """Worker: register one instance, report when, then hang (to be killed) or, once
    ``proceed`` is set, exit cleanly."""
    registry = RedisRegistry(url, prefix=prefix, ttl=ttl)
    registry.register("orders", ServiceInstance(instance_id, "10.0.0.7", 8080, weight=2))
    registered.put(time.time())
    if then == "exit":
        proceed.wait(WAIT)
        return  # interpreter exit deregisters (atexit)
    time.sleep(60)


def test_registered_in_one_process_picked_in_another_then_expires_after_a_crash(
    registries: Callable[..., RedisRegistry], redis_url: str, prefix: str
) -> None:
    balancer = LoadBalancer()
    registries(resync_interval=0.2).follow("orders", balancer)
    registered = SPAWN.Queue()
    worker = SPAWN.Process(
        target=registering_worker, args=(redis_url, prefix, 1.5, "orders-7", registered, "hang")
    )
    worker.start()
    try:
        registered_at = registered.get(timeout=30)
        assert wait_for(lambda: balancer.get_instance() is not None, WAIT)
        picked_after = time.time() - registered_at
        instance = balancer.get_instance()
        assert instance is not None
        assert (instance.id, instance.address, instance.weight) == ("orders-7", "10.0.0.7:8080", 2)
        assert picked_after < 1.0, picked_after
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        worker.join(timeout=10)
        killed_at = time.time()
        assert wait_for(lambda: not ids(balancer), WAIT)
        gone_after = time.time() - registered_at
        assert gone_after >= 1.5 - 0.3  # not before its TTL ran out ...
        assert time.time() - killed_at < 1.5 + 1.0  # ... and soon after it
    finally:
        if worker.is_alive():
            worker.kill()


def test_clean_shutdown_deregisters_at_once(
    registries: Callable[..., RedisRegistry], redis_url: str, prefix: str
) -> None:
    balancer = LoadBalancer()
    registries(resync_interval=5.0).follow("orders", balancer)
    registered, proceed = SPAWN.Queue(), SPAWN.Event()
    worker = SPAWN.Process(
        target=registering_worker,
        args=(redis_url, prefix, 30.0, "orders-8", registered, "exit", proceed),
    )
    worker.start()
    registered.get(timeout=30)
    # the worker exits only once the instance was seen: its up and down never come together
    assert wait_for(lambda: ids(balancer) == {"orders-8"}, WAIT)
    proceed.set()
    worker.join(timeout=30)
    assert worker.exitcode == 0
    # Long TTL and slow resync: only the published deregistration can remove it this fast.
    assert wait_for(lambda: not ids(balancer), WAIT)


def test_health_changes_and_deregistrations_reach_followers(
    registries: Callable[..., RedisRegistry],
) -> None:
    owner = registries(ttl=30.0, resync_interval=5.0)
    balancer = LoadBalancer()
    registries(resync_interval=5.0).follow("orders", balancer)
    owner.register("orders", ServiceInstance("a", "10.0.0.1", 80))
    owner.register("orders", ServiceInstance("b", "10.0.0.2", 80))
    assert wait_for(lambda: ids(balancer) == {"a", "b"}, WAIT)
    assert owner.set_health("orders", "a", False)
    assert wait_for(lambda: [i.id for i in balancer.healthy_instances] == ["b"], WAIT)
    assert owner.set_health("orders", "a", True)
    assert wait_for(lambda: len(balancer.healthy_instances) == 2, WAIT)
    assert owner.deregister("orders", "b")
    assert wait_for(lambda: ids(balancer) == {"a"}, WAIT)
    assert not owner.deregister("orders", "b")
    assert [i.id for i in owner.instances("orders")] == ["a"]


def test_follower_only_removes_what_it_added(registries: Callable[..., RedisRegistry]) -> None:
    owner = registries(ttl=30.0)
    balancer = LoadBalancer()
    balancer.register(ServiceInstance("local", "127.0.0.1", 9000))
    following = registries(resync_interval=0.1)
    follower = following.follow("orders", balancer)
    owner.register("orders", ServiceInstance("remote", "10.0.0.3", 80))
    assert wait_for(lambda: ids(balancer) == {"local", "remote"}, WAIT)
    owner.deregister("orders", "remote")
    assert wait_for(lambda: ids(balancer) == {"local"}, WAIT)
    follower.stop()
    witness = LoadBalancer()
    following.follow("orders", witness)  # fed by the same registry, after the stop
    owner.register("orders", ServiceInstance("late", "10.0.0.4", 80))
    assert wait_for(lambda: "late" in ids(witness), WAIT)
    assert ids(balancer) == {"local"}  # "late" was delivered, not to a stopped follower


@pytest.mark.parametrize("removal", ["deregister", "close"])
def test_a_heartbeat_in_flight_never_brings_back_a_removed_instance(
    registries: Callable[..., RedisRegistry], removal: str
) -> None:
    owner = registries(ttl=5.0, heartbeat_interval=0.05)
    observer = registries()
    register = owner._register
    beat_sent, go, beat_done = threading.Event(), threading.Event(), threading.Event()

    def held_heartbeat(**kwargs: Any) -> Any:  # the heartbeat's round trip is in flight
        if not threading.current_thread().name.endswith("monitor") or beat_done.is_set():
            return register(**kwargs)
        beat_sent.set()
        go.wait(2.0)
        try:
            return register(**kwargs)
        finally:
            beat_done.set()

    owner._register = held_heartbeat  # type: ignore[assignment]
    owner.register("orders", ServiceInstance("orders-1", "10.0.0.5", 8080))
    assert beat_sent.wait(2.0)
    if removal == "deregister":
        remover = threading.Thread(target=owner.deregister, args=("orders", "orders-1"))
    else:
        remover = threading.Thread(target=owner.close)
    remover.start()
    assert wait_for(lambda: ("orders", "orders-1") not in owner._own, WAIT)
    remover.join(0.2)  # a removal that does not wait for the heartbeat is done by now
    go.set()
    assert beat_done.wait(2.0)
    remover.join(5.0)
    assert not remover.is_alive()
    assert observer.instances("orders") == []


def test_malformed_entries_are_skipped_and_logged(
    registries: Callable[..., RedisRegistry],
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = registries(ttl=30.0)
    owner.register("orders", ServiceInstance("good", "10.0.0.5", 80))
    client = redis.Redis.from_url(redis_url)
    instances_key, deadlines_key = owner.keys("orders")
    client.hset(instances_key, "bad", "{not json")
    client.zadd(deadlines_key, {"bad": int(time.time() * 1000) + 60_000})
    client.close()
    with caplog.at_level(logging.WARNING, logger="codomyrmex.service_mesh.redis"):
        assert [i.id for i in owner.instances("orders")] == ["good"]
    assert any("malformed" in r.getMessage() for r in caplog.records)


def test_registry_outage_keeps_instances_and_recovers(private_redis: RedisServer) -> None:
    options: dict[str, Any] = {
        "prefix": "regout:",
        "ttl": 2.0,
        "resync_interval": 0.1,
        "reconnect_interval": 0.05,
        "deregister_at_exit": False,
    }
    owner = RedisRegistry(private_redis.url, **options)
    follower_side = RedisRegistry(private_redis.url, **options)
    try:
        balancer = LoadBalancer()
        follower_side.follow("orders", balancer)
        owner.register("orders", ServiceInstance("a", "10.0.0.1", 80))
        assert wait_for(lambda: ids(balancer) == {"a"}, WAIT)
        private_redis.stop()
        assert wait_for(lambda: not owner.online and not follower_side.online, WAIT)
        owner.register("orders", ServiceInstance("b", "10.0.0.2", 80))  # no exception
        with pytest.raises(RegistryUnavailableError):
            owner.instances("orders")
        assert ids(balancer) == {"a"}  # the last known instances stay
        private_redis.start()  # empty: the heartbeat registers both again
        assert wait_for(lambda: ids(balancer) == {"a", "b"}, WAIT)
    finally:
        owner.close()
        follower_side.close()


def test_invalid_options_name_the_field(redis_url: str) -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        RedisRegistry(redis_url, ttl=1.0, heartbeat_interval=2.0)
    with pytest.raises(ValueError, match="ttl"):
        RedisRegistry(redis_url, ttl=0)


def listed(registry: RedisRegistry) -> list[str] | None:
    """The ids Redis lists for "orders" now, or None while it is unreachable."""
    try:
        return [i.id for i in registry.instances("orders")]
    except RegistryUnavailableError:
        return None


def test_a_redis_restart_with_no_data_never_empties_a_follower_before_its_owner_returns(
    private_redis: RedisServer,
) -> None:
    """#15 item 20: the follower reconnects first and finds Redis empty; it keeps the pool."""
    common: dict[str, Any] = {"prefix": "restart:", "ttl": 10.0, "deregister_at_exit": False}
    # The owner comes back late (its heartbeat, or its reconnection, takes seconds).
    owner = RedisRegistry(
        private_redis.url, reconnect_interval=9.0, heartbeat_interval=9.0, **common
    )
    follower_side = RedisRegistry(
        private_redis.url, reconnect_interval=0.05, resync_interval=0.05, **common
    )
    try:
        balancer = LoadBalancer()
        follower = follower_side.follow("orders", balancer)
        owner.register("orders", ServiceInstance("a", "10.0.0.1", 80))
        assert wait_for(lambda: ids(balancer) == {"a"}, WAIT)
        smallest = [len(balancer)]
        sampling = threading.Event()

        def sample() -> None:
            for _ in range(100_000_000):  # bounded; ends when the owner is back
                if sampling.is_set():
                    return
                smallest[0] = min(smallest[0], len(balancer))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        private_redis.restart()  # no persistence: Redis comes back empty
        # The follower is back first and resyncs against an empty Redis ...
        assert wait_for(lambda: follower_side.online and listed(follower_side) == [], WAIT)
        assert balancer.get_instance() is not None
        # ... for seconds, until the owner's heartbeat registers the instance again.
        assert wait_for(lambda: owner.online and listed(owner), WAIT)
        assert wait_for(lambda: follower.status().held == 0, WAIT)
        sampling.set()
        sampler.join(WAIT)
        assert smallest[0] == 1  # never emptied
        assert ids(balancer) == {"a"}
        owner.deregister("orders", "a")  # an explicit deregistration is not held
        assert wait_for(lambda: not ids(balancer), WAIT)
    finally:
        owner.close()
        follower_side.close()


def sigterm_worker(url: str, prefix: str, registered: Any) -> None:
    """Worker: register with deregister_on_sigterm, then wait for the signal."""
    registry = RedisRegistry(
        url, prefix=prefix, ttl=30.0, deregister_at_exit=False, deregister_on_sigterm=True
    )
    registry.register("orders", ServiceInstance("orders-9", "10.0.0.9", 8080))
    registered.put(True)
    time.sleep(120)


def test_sigterm_deregisters_when_offered(
    registries: Callable[..., RedisRegistry], redis_url: str, prefix: str
) -> None:
    """#15 item 24: Kubernetes' SIGTERM removes the instance at once, then ends the process."""
    balancer = LoadBalancer()
    registries(resync_interval=5.0).follow("orders", balancer)
    registered = SPAWN.Queue()
    worker = SPAWN.Process(target=sigterm_worker, args=(redis_url, prefix, registered))
    worker.start()
    try:
        assert registered.get(timeout=30)
        assert wait_for(lambda: ids(balancer) == {"orders-9"}, WAIT)
        os.kill(worker.pid, signal.SIGTERM)  # type: ignore[arg-type]
        worker.join(timeout=30)
        assert worker.exitcode == -signal.SIGTERM
        assert wait_for(lambda: not ids(balancer), WAIT)  # long before its 30 s TTL
    finally:
        if worker.is_alive():
            worker.kill()
