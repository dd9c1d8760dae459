"""DNS discovery against a real dnsmasq on a loopback port, its records changed by SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from codomyrmex.service_mesh import LoadBalancer, LoadBalancerStrategy
from codomyrmex.service_mesh.discovery import Resolver
from codomyrmex.service_mesh.integrations.dns import DnsSource
from discovery_servers import WAIT, Dnsmasq, free_port, wait_for


@pytest.fixture
def dnsmasq() -> Iterator[Dnsmasq]:
    server = Dnsmasq(ttl=30)
    server.srv = [
        "_http._tcp.svc.test,app.test,8080,1,10",
        "_http._tcp.svc.test,other.test,8081,1,30",
        "_http._tcp.svc.test,backup.test,9090,2,5",
    ]
    server.set_hosts([("10.0.0.1", "app.test"), ("10.0.0.2", "app.test")])
    server.start()
    try:
        yield server
    finally:
        server.close()


def source_for(server: Dnsmasq, name: str = "app.test", **options: object) -> DnsSource:
    options.setdefault("port", 8080)
    options.setdefault("timeout", 2.0)
    return DnsSource(
        name,
        nameservers=["127.0.0.1"],
        nameserver_port=server.port,
        **options,  # type: ignore[arg-type]
    )


def ids(balancer: LoadBalancer) -> set[str]:
    return {i.id for i in balancer.instances}


def test_a_records_added_and_removed_follow_the_server(dnsmasq: Dnsmasq) -> None:
    balancer = LoadBalancer()
    source = source_for(dnsmasq, record="A")
    resolver = Resolver(source, balancer)
    assert resolver.refresh()
    assert ids(balancer) == {"10.0.0.1:8080", "10.0.0.2:8080"}
    assert source.next_delay(True) == 30.0  # the records' TTL
    first = balancer.get("10.0.0.1:8080")
    with balancer.connection():
        # an instance added
        dnsmasq.set_hosts([(f"10.0.0.{i}", "app.test") for i in (1, 2, 3)])
        dnsmasq.reload()
        assert resolver.refresh()
        assert ids(balancer) == {"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"}
        assert balancer.get("10.0.0.1:8080") is first  # kept, in-flight count and all
        # an instance removed
        dnsmasq.set_hosts([("10.0.0.2", "app.test"), ("10.0.0.3", "app.test")])
        dnsmasq.reload()
        assert resolver.refresh()
        assert ids(balancer) == {"10.0.0.2:8080", "10.0.0.3:8080"}
    assert all(i.connections == 0 for i in balancer.instances)


def test_a_and_aaaa_together(dnsmasq: Dnsmasq) -> None:
    dnsmasq.set_hosts([("10.0.0.1", "app.test"), ("fd00::7", "app.test")])
    dnsmasq.reload()
    balancer = LoadBalancer()
    assert Resolver(source_for(dnsmasq), balancer).refresh()
    assert ids(balancer) == {"10.0.0.1:8080", "[fd00::7]:8080"}
    v6 = balancer.get("[fd00::7]:8080")
    assert v6 is not None and v6.host == "fd00::7" and v6.address == "fd00::7:8080"


def test_server_down_keeps_the_pool_and_server_back_recovers(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    balancer = LoadBalancer()
    resolver = Resolver(source_for(dnsmasq, record="A", timeout=0.3), balancer)
    assert resolver.refresh()
    dnsmasq.stop()  # the server down
    with caplog.at_level(logging.WARNING, logger="codomyrmex.service_mesh.discovery"):
        assert not resolver.refresh()
        assert not resolver.refresh()
    assert ids(balancer) == {"10.0.0.1:8080", "10.0.0.2:8080"}
    assert balancer.get_instance() is not None
    status = resolver.status()
    assert not status.ok and status.stale > 0.0 and status.error is not None
    assert len([r for r in caplog.records if "discovery source failing" in r.getMessage()]) == 1
    dnsmasq.set_hosts([("10.0.0.2", "app.test"), ("10.0.0.4", "app.test")])
    dnsmasq.start()  # the server back, with other records
    assert resolver.refresh()
    assert resolver.status().ok and resolver.status().stale == 0.0
    assert ids(balancer) == {"10.0.0.2:8080", "10.0.0.4:8080"}


def test_no_records_is_a_failure_not_an_empty_pool(dnsmasq: Dnsmasq) -> None:
    balancer = LoadBalancer()
    resolver = Resolver(source_for(dnsmasq, record="A"), balancer)
    assert resolver.refresh()
    dnsmasq.set_hosts([])
    dnsmasq.reload()
    assert not resolver.refresh()
    assert ids(balancer) == {"10.0.0.1:8080", "10.0.0.2:8080"}
    assert "no A records" in (resolver.status().error or "")


def test_srv_priority_and_weight_become_weight_and_the_port_comes_from_the_record(
    dnsmasq: Dnsmasq,
) -> None:
    dnsmasq.set_hosts(
        [
            ("10.0.0.1", "app.test"),
            ("10.0.0.2", "other.test"),
            ("10.0.0.9", "backup.test"),
        ]
    )
    dnsmasq.reload()
    balancer = LoadBalancer(LoadBalancerStrategy.WEIGHTED)
    source = DnsSource(
        "_http._tcp.svc.test",
        record="SRV",
        nameservers=["127.0.0.1"],
        nameserver_port=dnsmasq.port,
    )
    resolver = Resolver(source, balancer)
    assert resolver.refresh()
    weights = {i.id: i.weight for i in balancer.instances}
    assert weights == {"10.0.0.1:8080": 10, "10.0.0.2:8081": 30, "10.0.0.9:9090": 5 * 0.001}
    backup = balancer.get("10.0.0.9:9090")
    assert backup is not None and backup.metadata["priority"] == 2
    assert backup.metadata["target"] == "backup.test"
    picks = [balancer.get_instance() for _ in range(4000)]
    share = sum(1 for p in picks if p is not None and p.port == 8081) / len(picks)
    assert 0.68 < share < 0.82  # 30 of 40 (the backup takes ~0.01%)
    # a target's address changes: the instance moves
    dnsmasq.set_hosts(
        [("10.0.0.5", "app.test"), ("10.0.0.2", "other.test"), ("10.0.0.9", "backup.test")]
    )
    dnsmasq.reload()
    assert resolver.refresh()
    assert ids(balancer) == {"10.0.0.5:8080", "10.0.0.2:8081", "10.0.0.9:9090"}


def test_the_resolver_thread_re_resolves_at_the_ttl() -> None:
    server = Dnsmasq(ttl=0)  # TTL 0: re-resolve at min_interval
    server.set_hosts([("10.0.0.1", "app.test")])
    server.start()
    try:
        balancer = LoadBalancer()
        source = source_for(server, record="A", min_interval=0.05)
        with Resolver(source, balancer) as resolver:
            assert wait_for(lambda: ids(balancer) == {"10.0.0.1:8080"}, WAIT)
            server.set_hosts([("10.0.0.1", "app.test"), ("10.0.0.8", "app.test")])
            server.reload()
            assert wait_for(lambda: len(balancer) == 2, WAIT)
            assert resolver.status().ok
    finally:
        server.close()


class GarbageDns:
    """A UDP server on loopback answering every query with a malformed DNS message."""

    def __init__(self) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.answered = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(512)
            except OSError:
                return
            # the query's id, "a response, 1 question, 3 answers", then a cut-off body
            reply = query[:2] + bytes.fromhex("8180000100030000") + b"\x03bad\xc0\xff"
            self.sock.sendto(reply, peer)
            self.answered.set()

    def close(self) -> None:
        self.sock.close()


def test_a_malformed_answer_keeps_the_last_known_good_list(dnsmasq: Dnsmasq) -> None:
    balancer = LoadBalancer()
    resolver = Resolver(source_for(dnsmasq, record="A"), balancer)
    assert resolver.refresh()
    garbage = GarbageDns()
    try:
        bad = Resolver(
            DnsSource(
                "app.test",
                record="A",
                port=8080,
                nameservers=["127.0.0.1"],
                nameserver_port=garbage.port,
                timeout=0.5,
            ),
            balancer,
        )
        bad.replace(balancer.instances)  # it takes over the same instances ...
        assert not bad.refresh()  # ... and a malformed answer removes none of them
        assert garbage.answered.is_set()
        assert ids(balancer) == {"10.0.0.1:8080", "10.0.0.2:8080"}
        assert not bad.status().ok
    finally:
        garbage.close()


def test_invalid_options_name_the_field() -> None:
    with pytest.raises(ValueError, match="record"):
        DnsSource("x.test", record="MX", port=80)
    with pytest.raises(ValueError, match="port"):
        DnsSource("x.test", record="A")
    with pytest.raises(ValueError, match="port"):
        DnsSource("_x._tcp.test", record="SRV", port=80)
    with pytest.raises(ValueError, match="nameservers"):
        DnsSource("x.test", port=80, nameservers=["not-an-ip"])
    with pytest.raises(ValueError, match="max_interval"):
        DnsSource("x.test", port=80, min_interval=10, max_interval=1)


def test_async_refresh_never_blocks_the_event_loop(dnsmasq: Dnsmasq) -> None:
    balancer = LoadBalancer()
    assert Resolver(source_for(dnsmasq, record="A"), balancer).refresh()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # reads queries, never answers
    silent.bind(("127.0.0.1", 0))
    source = DnsSource(
        "app.test",
        record="A",
        port=8080,
        nameservers=["127.0.0.1"],
        nameserver_port=silent.getsockname()[1],
        timeout=0.5,
    )
    resolver = Resolver(source, balancer)
    resolver.replace(balancer.instances)

    async def main() -> tuple[bool, bool, int]:
        # the resolution waits for its whole timeout ...
        ticks = 0
        picks_ok = True
        refresh = asyncio.ensure_future(resolver.arefresh())
        for _ in range(10_000_000):  # ... while the loop goes on picking
            if refresh.done():
                break
            picks_ok = picks_ok and balancer.get_instance() is not None
            ticks += 1
            await asyncio.sleep(0)
        return await refresh, picks_ok, ticks

    try:
        refreshed, picks_ok, ticks = asyncio.run(main())
    finally:
        silent.close()
    assert not refreshed and picks_ok and ticks > 10
    assert ids(balancer) == {"10.0.0.1:8080", "10.0.0.2:8080"}
