"""etcd discovery against a real etcd on loopback ports: leases, watches, processes, restarts."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    LoadBalancer,
    NoHealthyInstanceError,
    ServiceInstance,
    ServiceProxy,
)
from codomyrmex.service_mesh.discovery import Resolver
from codomyrmex.service_mesh.integrations.etcd import (
    EtcdGateway,
    EtcdRegistry,
    EtcdSource,
    EtcdUnavailableError,
)
from discovery_servers import WAIT, Etcd, wait_for

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    server = Etcd()
    server.start()
    try:
        yield server
    finally:
        server.close()


def ids(balancer: LoadBalancer) -> set[str]:
    return {i.id for i in balancer.instances}


def registering_worker(
    url: str, index: int, ttl: float, sigterm: bool, ready: Any, stop: Any
) -> None:
    registry = EtcdRegistry(url, ttl=ttl, deregister_at_exit=False, deregister_on_sigterm=sigterm)
    registry.register("orders", ServiceInstance(f"orders-{index}", "10.0.0.1", 8000 + index))
    ready.set()
    stop.wait(120)
    registry.close()


def spawn(url: str, index: int, *, ttl: float = 30.0, sigterm: bool = False) -> Any:
    ready, stop = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(
        target=registering_worker, args=(url, index, ttl, sigterm, ready, stop), daemon=True
    )
    process.start()
    assert ready.wait(WAIT)
    return process, stop


def test_several_processes_register_and_a_clean_shutdown_removes_at_once(etcd: Etcd) -> None:
    follower = EtcdRegistry(etcd.url, deregister_at_exit=False)
    balancer = LoadBalancer()
    try:
        resolver = follower.follow("orders", balancer)
        workers = [spawn(etcd.url, i) for i in range(3)]
        assert wait_for(lambda: ids(balancer) == {"orders-0", "orders-1", "orders-2"})
        process, stop = workers[1]
        stop.set()  # a clean shutdown: close() revokes the lease (ttl is 30 s)
        process.join(WAIT)
        assert wait_for(lambda: ids(balancer) == {"orders-0", "orders-2"})
        assert resolver.status().ok
        assert isinstance(resolver.source, EtcdSource) and resolver.source.resyncs == 1  # watched
        for process, stop in workers:
            stop.set()
            process.join(WAIT)
        assert wait_for(lambda: not ids(balancer))
    finally:
        follower.close()


def test_a_process_killed_with_sigkill_expires_with_its_lease(etcd: Etcd) -> None:
    follower = EtcdRegistry(etcd.url, deregister_at_exit=False)
    balancer = LoadBalancer()
    try:
        follower.follow("orders", balancer)
        survivor, survivor_stop = spawn(etcd.url, 0, ttl=30.0)
        victim, _ = spawn(etcd.url, 1, ttl=2.0)
        assert wait_for(lambda: ids(balancer) == {"orders-0", "orders-1"})
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(WAIT)
        assert wait_for(lambda: ids(balancer) == {"orders-0"})  # the 2 s lease ran out
        survivor_stop.set()
        survivor.join(WAIT)
    finally:
        follower.close()


def test_sigterm_deregisters_when_offered(etcd: Etcd) -> None:
    follower = EtcdRegistry(etcd.url, deregister_at_exit=False)
    balancer = LoadBalancer()
    try:
        follower.follow("orders", balancer)
        process, _ = spawn(etcd.url, 4, ttl=30.0, sigterm=True)
        assert wait_for(lambda: ids(balancer) == {"orders-4"})
        os.kill(process.pid, signal.SIGTERM)
        process.join(WAIT)
        assert process.exitcode == -signal.SIGTERM  # the signal still ends the process
        assert wait_for(lambda: not ids(balancer))  # long before the 30 s lease would expire
    finally:
        follower.close()


def test_etcd_restarted_while_calls_run_reaches_no_caller_and_keeps_the_pool(etcd: Etcd) -> None:
    owner = EtcdRegistry(etcd.url, ttl=10.0, retry_interval=0.05, deregister_at_exit=False)
    follower = EtcdRegistry(etcd.url, retry_interval=0.05, deregister_at_exit=False)
    proxy = ServiceProxy("orders")
    errors: list[BaseException] = []
    smallest = [99]
    done = threading.Event()
    calls = [0]

    def caller() -> None:
        for _ in range(50_000_000):  # bounded; ends when the test is done
            if done.is_set():
                return
            try:
                proxy.call(lambda instance: instance.id)
                calls[0] += 1
            except Exception as exc:  # anything reaching a caller fails the test
                errors.append(exc)
            smallest[0] = min(smallest[0], len(proxy.load_balancer))

    try:
        owner.register("orders", ServiceInstance("a", "10.0.0.1", 80))
        owner.register("orders", ServiceInstance("b", "10.0.0.2", 80))
        resolver = follower.follow("orders", proxy.load_balancer)
        assert wait_for(lambda: ids(proxy.load_balancer) == {"a", "b"})
        thread = threading.Thread(target=caller, daemon=True)
        thread.start()
        assert wait_for(lambda: calls[0] > 100)
        etcd.stop()
        assert wait_for(lambda: not resolver.status().ok)  # the watch broke
        before = calls[0]
        assert wait_for(lambda: calls[0] > before + 100)  # calls go on during the outage
        assert ids(proxy.load_balancer) == {"a", "b"} and resolver.status().stale >= 0.0
        etcd.start()  # same data directory
        assert wait_for(lambda: resolver.status().ok)  # listed again, watching again
        owner.register("orders", ServiceInstance("c", "10.0.0.3", 80))
        assert wait_for(lambda: ids(proxy.load_balancer) == {"a", "b", "c"})
        done.set()
        thread.join(WAIT)
        assert errors == [] and smallest[0] >= 2
        assert owner.online
    finally:
        done.set()
        owner.close()
        follower.close()


def test_a_watch_that_outran_a_compaction_resyncs(etcd: Etcd) -> None:
    gateway = EtcdGateway(etcd.url)
    owner = EtcdRegistry(etcd.url, deregister_at_exit=False)
    try:
        owner.register("orders", ServiceInstance("a", "10.0.0.1", 80))
        balancer = LoadBalancer()
        source = EtcdSource(gateway, "orders")
        resolver = Resolver(source, balancer, allow_empty=True, update_health=True)
        assert resolver.refresh() and ids(balancer) == {"a"}
        seen = source.revision
        # while nobody watches: changes, then a compaction past them
        owner.register("orders", ServiceInstance("b", "10.0.0.2", 80))
        owner.deregister("orders", "a")
        _, now = gateway.list_prefix("/mesh/")
        gateway.compact(now)
        assert now > seen
        with resolver:  # resumes the watch at seen + 1: compacted, so it lists again
            assert wait_for(lambda: ids(balancer) == {"b"})
            assert wait_for(lambda: source.resyncs == 2)
            owner.register("orders", ServiceInstance("c", "10.0.0.3", 80))
            assert wait_for(lambda: ids(balancer) == {"b", "c"})
    finally:
        owner.close()
        gateway.close()


def test_registry_errors_and_options(etcd: Etcd) -> None:
    with pytest.raises(ValueError, match="keepalive_interval"):
        EtcdRegistry(etcd.url, ttl=2.0, keepalive_interval=3.0)
    with pytest.raises(ValueError, match="endpoint"):
        EtcdGateway("etcd:2379")
    with pytest.raises(TypeError, match="deregister_on_sigterm"):
        EtcdRegistry(etcd.url, deregister_on_sigterm=1)  # type: ignore[arg-type]
    gateway = EtcdGateway("http://127.0.0.1:1", timeout=0.2)
    with pytest.raises(EtcdUnavailableError):
        gateway.list_prefix("/mesh/")
    gateway.close()
    registry = EtcdRegistry("http://127.0.0.1:1", timeout=0.2, deregister_at_exit=False)
    registry.register("orders", ServiceInstance("a", "10.0.0.1", 80))  # never raises for etcd
    assert not registry.online
    registry.close()
    with pytest.raises(RuntimeError, match="closed"):
        registry.register("orders", ServiceInstance("a", "10.0.0.1", 80))
    assert NoHealthyInstanceError  # the error callers would see if the pool emptied


def test_a_write_or_delete_lost_to_an_outage_is_redone_once_etcd_is_back(etcd: Etcd) -> None:
    owner = EtcdRegistry(etcd.url, ttl=60.0, retry_interval=0.05, deregister_at_exit=False)
    follower = EtcdRegistry(etcd.url, retry_interval=0.05, deregister_at_exit=False)
    balancer = LoadBalancer()
    try:
        owner.register("orders", ServiceInstance("a", "10.0.0.1", 80))
        owner.register("orders", ServiceInstance("c", "10.0.0.3", 80))  # the lease is held
        etcd.stop()
        owner.register("orders", ServiceInstance("b", "10.0.0.2", 80))  # its put fails
        assert owner.deregister("orders", "c")  # its delete fails
        assert not owner.online
        etcd.start()  # same data directory: the lease and a, c are still there
        assert wait_for(lambda: owner.online)
        follower.follow("orders", balancer)
        assert wait_for(lambda: ids(balancer) == {"a", "b"}), ids(balancer)
    finally:
        owner.close()
        follower.close()
