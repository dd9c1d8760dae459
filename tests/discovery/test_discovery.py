"""The discovery seam: bulk membership diffs, last known good, staleness, grace, SIGTERM, Mesh.

The sources here are small real implementations of the Source protocol (a list
the test edits, a callable that raises when told); the network sources have
their own tests (test_discovery_dns.py, test_discovery_etcd.py, test_redis_registry.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from codomyrmex.service_mesh import (
    LoadBalancer,
    LoadBalancerStrategy,
    Mesh,
    ServiceInstance,
    ServiceProxy,
    SlowStartConfig,
)
from codomyrmex.service_mesh.cli import _print_status
from codomyrmex.service_mesh.discovery import PollingSource, Resolution, Resolver


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ListSource(PollingSource):
    """A polling source over a list the test edits; ``error`` makes the next listing fail."""

    def __init__(self, *instances: ServiceInstance, ttl: float | None = None) -> None:
        super().__init__(min_interval=1.0, max_interval=60.0, retry_interval=0.5)
        self.listing = list(instances)
        self.ttl = ttl
        self.error: Exception | None = None

    @property
    def description(self) -> str:
        return "list"

    def resolve(self) -> Resolution:
        if self.error is not None:
            raise self.error
        copies = (
            ServiceInstance(i.id, i.host, i.port, i.weight, i.healthy, metadata=dict(i.metadata))
            for i in self.listing
        )
        return Resolution(tuple(copies), self.ttl)


def inst(id: str, weight: float = 1.0, port: int = 80, **metadata: object) -> ServiceInstance:
    return ServiceInstance(id, "10.0.0.1", port, weight, metadata=dict(metadata))


def ids(balancer: LoadBalancer) -> list[str]:
    return [i.id for i in balancer.instances]


# -- LoadBalancer.update_members ----------------------------------------------------------


def test_update_members_keeps_in_flight_counts_and_changes_in_place() -> None:
    balancer = LoadBalancer(LoadBalancerStrategy.WEIGHTED)
    balancer.update_members([inst("a"), inst("b")])
    a = balancer.get("a")
    assert a is not None
    with balancer.connection() as first, balancer.connection() as second:
        assert {first.id, second.id} <= {"a", "b"}
        busy = a.connections
        change = balancer.update_members(
            [inst("a", weight=5.0, port=81, zone="z1"), inst("c")], ["b"]
        )
        assert change.added == ("c",) and change.updated == ("a",) and change.removed == ("b",)
        assert balancer.get("a") is a  # the same object, changed in place
        assert (a.weight, a.port, a.metadata, a.connections) == (5.0, 81, {"zone": "z1"}, busy)
    assert a.connections == 0  # the calls in flight during the update released cleanly
    assert ids(balancer) == ["a", "c"]
    picks = Counter(i.id for i in (balancer.get_instance() for _ in range(6000)) if i)
    assert 4.0 < picks["a"] / picks["c"] < 6.5  # the new weight is in use


def test_update_members_starts_slow_start_for_new_instances_only() -> None:
    clock = FakeClock()
    balancer = LoadBalancer(
        LoadBalancerStrategy.WEIGHTED,
        clock=clock,
        slow_start=SlowStartConfig(window=10.0),
    )
    balancer.update_members([inst("old")])
    clock.now += 20.0  # "old" has ramped fully
    balancer.update_members([inst("old"), inst("new")])
    picks = Counter(i.id for i in (balancer.get_instance() for _ in range(4000)) if i)
    assert picks["new"] < picks["old"] / 4  # "new" starts at 10% of its weight
    clock.now += 20.0
    picks = Counter(i.id for i in (balancer.get_instance() for _ in range(4000)) if i)
    assert 0.8 < picks["new"] / picks["old"] < 1.25


def test_update_members_leaves_health_alone_unless_asked() -> None:
    balancer = LoadBalancer()
    balancer.update_members([inst("a")])
    balancer.mark_healthy("a", False)
    balancer.update_members([inst("a", weight=2.0)])
    assert [i.id for i in balancer.healthy_instances] == []  # the operator's word stands
    balancer.update_members([inst("a")], update_health=True)
    assert [i.id for i in balancer.healthy_instances] == ["a"]


def test_update_members_rejects_bad_input() -> None:
    balancer = LoadBalancer()
    with pytest.raises(TypeError, match="upsert"):
        balancer.update_members(["a"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="remove"):
        balancer.update_members(remove=[1])  # type: ignore[list-item]


# -- Resolver --------------------------------------------------------------------------------


def test_resolver_applies_only_the_difference_and_keeps_hand_registered_instances() -> None:
    balancer = LoadBalancer()
    balancer.register(ServiceInstance("by-hand", "10.0.0.9", 80))
    source = ListSource(inst("a"), inst("b"))
    resolver = Resolver(source, balancer)
    assert resolver.refresh()
    assert ids(balancer) == ["by-hand", "a", "b"]
    updates = resolver.status().updates
    assert resolver.refresh()  # nothing changed: no diff applied
    assert resolver.status().updates == updates
    source.listing = [inst("b", weight=3.0), inst("c")]
    assert resolver.refresh()
    assert ids(balancer) == ["by-hand", "b", "c"]
    b = balancer.get("b")
    assert b is not None and b.weight == 3.0
    assert sorted(resolver.known) == ["b", "c"]


def test_a_failing_source_keeps_the_last_known_good_list_warns_once_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    balancer = LoadBalancer()
    source = ListSource(inst("a"), inst("b"))
    resolver = Resolver(source, balancer, clock=clock)
    assert resolver.refresh()
    assert resolver.status().stale == 0.0
    source.error = OSError("connection refused")
    with caplog.at_level(logging.INFO, logger="codomyrmex.service_mesh.discovery"):
        for _ in range(3):
            clock.now += 5.0
            assert not resolver.refresh()
        status = resolver.status()
        assert ids(balancer) == ["a", "b"]  # never emptied
        assert (status.ok, status.stale, status.age) == (False, 15.0, 15.0)
        assert status.error == "OSError: connection refused"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "keeping the 2 instances" in warnings[0].getMessage()
        source.error = None
        source.listing = [inst("a")]
        assert resolver.refresh()
        assert resolver.status().ok and resolver.status().stale == 0.0
        assert ids(balancer) == ["a"]
        assert any("answering again" in r.getMessage() for r in caplog.records)
        source.error = OSError("again")
        assert not resolver.refresh()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2  # a new outage
    assert not resolver.ok


def test_an_empty_listing_is_a_failure_unless_allowed() -> None:
    balancer = LoadBalancer()
    source = ListSource(inst("a"))
    resolver = Resolver(source, balancer)
    resolver.refresh()
    source.listing = []
    assert not resolver.refresh()
    assert ids(balancer) == ["a"] and resolver.status().error == "the source listed no instances"
    allowing = Resolver(source, LoadBalancer(), allow_empty=True)
    source.listing = [inst("a")]
    allowing.refresh()
    source.listing = []
    assert allowing.refresh() and ids(allowing.balancer) == []


def test_after_an_outage_removals_wait_for_the_grace_period() -> None:
    clock = FakeClock()
    balancer = LoadBalancer()
    source = ListSource(inst("a"), inst("b"))
    resolver = Resolver(source, balancer, clock=clock, removal_grace=10.0, allow_empty=True)
    resolver.refresh()
    source.error = OSError("down")
    resolver.refresh()
    source.error = None
    source.listing = []  # the source came back empty (restarted with no data)
    clock.now += 1.0
    assert resolver.refresh()
    assert ids(balancer) == ["a", "b"] and resolver.status().held == 2
    source.listing = [inst("a")]  # its owner registered again
    clock.now += 5.0
    resolver.refresh()
    assert ids(balancer) == ["a", "b"] and resolver.status().held == 1
    clock.now += 5.0  # the grace period is over: what is still missing goes
    resolver.refresh()
    assert ids(balancer) == ["a"] and resolver.status().held == 0
    resolver.remove("a")  # an explicit removal is never held
    assert ids(balancer) == []


def test_polling_delay_follows_the_ttl_within_bounds() -> None:
    source = ListSource(inst("a"), ttl=30.0)
    resolver = Resolver(source, LoadBalancer())
    resolver.refresh()
    assert source.next_delay(True) == 30.0
    source.ttl = 0.0
    resolver.refresh()
    assert source.next_delay(True) == 1.0  # min_interval
    source.ttl = 3600.0
    resolver.refresh()
    assert source.next_delay(True) == 60.0  # max_interval
    assert source.next_delay(False) == 0.5  # retry_interval
    with pytest.raises(ValueError, match="max_interval"):
        PollingSource.__init__(source, max_interval=0.1)


def test_the_source_thread_applies_updates_while_callers_only_pick() -> None:
    balancer = LoadBalancer()
    source = ListSource(inst("a"), inst("b"))
    resolver = Resolver(source, balancer)
    with resolver:
        for _ in range(2000):  # bounded: the first listing lands within this many picks
            if balancer.get_instance() is not None:
                break
            resolver.status()
        else:
            pytest.fail("the resolver thread never delivered")  # pragma: no cover
    assert not resolver.running
    assert sorted(ids(balancer)) == ["a", "b"]


def test_async_code_gets_the_same_outcome() -> None:
    def run_sync() -> list[str]:
        balancer = LoadBalancer()
        source = ListSource(inst("a"), inst("b"))
        resolver = Resolver(source, balancer)
        resolver.refresh()
        source.listing = [inst("b"), inst("c")]
        resolver.refresh()
        return ids(balancer)

    async def run_async() -> list[str]:
        balancer = LoadBalancer()
        source = ListSource(inst("a"), inst("b"))
        resolver = Resolver(source, balancer)
        await resolver.arefresh()
        source.listing = [inst("b"), inst("c")]
        assert await resolver.arefresh()
        return ids(balancer)

    assert asyncio.run(run_async()) == run_sync() == ["b", "c"]


def test_resolver_options_are_checked() -> None:
    source = ListSource()
    with pytest.raises(TypeError, match="source"):
        Resolver(object(), LoadBalancer())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="balancer"):
        Resolver(source, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="removal_grace"):
        Resolver(source, LoadBalancer(), removal_grace=-1)
    with pytest.raises(TypeError, match="allow_empty"):
        Resolver(source, LoadBalancer(), allow_empty=1)  # type: ignore[arg-type]


# -- Mesh and the status command ----------------------------------------------------------


def test_mesh_declares_one_resolver_per_service_and_reports_its_staleness(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()
    mesh = Mesh()
    mesh.register_service(ServiceProxy("orders"))
    source = ListSource(inst("a"))
    with pytest.raises(ValueError, match="service"):
        mesh.add_resolver("missing", source)
    resolver = mesh.add_resolver("orders", source, start=False, clock=clock)
    assert mesh.get_resolver("orders") is resolver
    resolver.refresh()
    source.error = TimeoutError("no answer")
    clock.now += 2.5
    resolver.refresh()
    status = mesh.status()
    (orders,) = status["services"]
    assert orders["instance_count"] == 1
    assert orders["discovery"]["source"] == "list"
    assert orders["discovery"]["ok"] is False and orders["discovery"]["stale"] == 2.5
    json.dumps(status)
    _print_status(status, "http://x/status")
    out = capsys.readouterr().out
    assert "stale 2.5s" in out and "list" in out
    other = Resolver(ListSource(), LoadBalancer())
    with pytest.raises(ValueError, match="balancer"):
        mesh.add_resolver("orders", other)
    assert mesh.remove_resolver("orders") and not mesh.remove_resolver("orders")
    started = mesh.add_resolver("orders", ListSource(inst("b")))
    assert started.running
    assert mesh.remove_service("orders")
    assert not started.running and mesh.get_resolver("orders") is None


# -- SIGTERM --------------------------------------------------------------------------------

_SIGTERM_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from codomyrmex.service_mesh.discovery import on_sigterm
    out = sys.argv[1]
    def hook(name):
        def run():
            with open(out, "a") as f:
                f.write(name + "\\n")
        return run
    if sys.argv[2] == "chained":
        signal.signal(signal.SIGTERM, lambda s, f: (hook("previous")(), sys.exit(7)))
    on_sigterm(hook("first"))
    undo = on_sigterm(hook("undone"))
    on_sigterm(hook("second"))
    undo()
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
    """
)


@pytest.mark.parametrize(("mode", "code"), [("default", -signal.SIGTERM), ("chained", 7)])
def test_sigterm_hooks_run_newest_first_then_the_previous_handler(
    tmp_path: Path, mode: str, code: int
) -> None:
    out = tmp_path / "hooks.txt"
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_CHILD, str(out), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    os.kill(child.pid, signal.SIGTERM)
    assert child.wait(timeout=60) == code
    expected = ["second", "first"] + (["previous"] if mode == "chained" else [])
    assert out.read_text().split() == expected
