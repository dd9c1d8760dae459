"""Active health checks against real servers on 127.0.0.1 that each test starts, breaks and stops.

Thresholds are driven round by round with ``check_once()``; the background
thread and the asyncio task are checked for reacting, for stopping promptly
even in the middle of a hanging probe, and for leaving no thread behind.
Waits are bounded waits on events, never sleeps, and no test bounds how long
anything takes: promptness is shown by what did not happen (a probe that was
cut short records no result), and the interval by the injected clock and sleep.
"""

from __future__ import annotations

import asyncio
import http.server
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from codomyrmex.service_mesh import LoadBalancer, ServiceInstance
from codomyrmex.service_mesh.events import Event, InstanceHealthChanged
from codomyrmex.service_mesh.health import HealthCheckConfig, HealthChecker, HttpProbe, TcpProbe

WAIT = 5.0  # upper bound on any wait for a background reaction


class HttpBackend:
    """A real HTTP server on 127.0.0.1 whose /health answer the test controls."""

    def __init__(self) -> None:
        self.status = 200
        self.hang = False
        self.arrived = threading.Event()  # set when a request arrives while hanging
        self.release = threading.Event()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if backend.hang:
                    backend.arrived.set()
                    backend.release.wait(WAIT * 2)
                status = backend.status if self.path == "/health" else 404
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def instance(self, id: str = "web", **kwargs: Any) -> ServiceInstance:
        return ServiceInstance(id=id, host="127.0.0.1", port=self.port, **kwargs)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


class TcpBackend:
    """A real listening socket on 127.0.0.1; ``close()`` makes connects fail (refused)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]

    def instance(self, id: str = "db", **kwargs: Any) -> ServiceInstance:
        return ServiceInstance(id=id, host="127.0.0.1", port=self.port, **kwargs)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def web() -> Iterator[HttpBackend]:
    backend = HttpBackend()
    yield backend
    backend.close()


@pytest.fixture
def db() -> Iterator[TcpBackend]:
    backend = TcpBackend()
    yield backend
    backend.close()


def checker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("codomyrmex-health")]


def round_threads(lb: LoadBalancer) -> list[threading.Thread]:
    """The checker's own thread (not the probe workers of a round)."""
    return [t for t in threading.enumerate() if t.name == f"codomyrmex-health-{lb.name}"]


def balancer(*instances: ServiceInstance) -> LoadBalancer:
    lb = LoadBalancer(name="svc")
    for instance in instances:
        lb.register(instance)
    return lb


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- probes -----------------------------------------------------------------------


def test_tcp_probe_connects_or_not(db: TcpBackend) -> None:
    probe = TcpProbe(timeout=1.0)
    up = db.instance()
    assert probe.check(up) is True
    assert run(probe.check_async(up)) is True
    db.close()
    assert probe.check(up) is False
    assert run(probe.check_async(up)) is False


def test_http_probe_checks_status_range_and_path(web: HttpBackend) -> None:
    probe = HttpProbe(path="/health", timeout=1.0)
    target = web.instance()
    assert probe.check(target) is True
    assert run(probe.check_async(target)) is True
    web.status = 503
    assert probe.check(target) is False
    assert run(probe.check_async(target)) is False
    assert HttpProbe(expected_statuses=range(200, 600)).check(target) is True
    web.status = 204
    assert probe.check(target) is True
    assert HttpProbe(path="/elsewhere").check(target) is False  # 404


def test_http_probe_fails_when_the_server_is_gone_or_too_slow(web: HttpBackend) -> None:
    target = web.instance()
    web.hang = True
    assert HttpProbe(timeout=0.2).check(target) is False
    assert run(HttpProbe(timeout=0.2).check_async(target)) is False
    # The server got the requests and still holds them: the probes gave up on their own.
    assert web.arrived.is_set() and not web.release.is_set()
    web.hang = False
    web.close()
    assert HttpProbe(timeout=0.5).check(target) is False
    assert run(HttpProbe(timeout=0.5).check_async(target)) is False


def test_http_probe_rejects_a_non_http_answer(db: TcpBackend) -> None:
    answered = threading.Event()

    def serve() -> None:
        conn, _ = db.sock.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"SSH-2.0-OpenSSH\r\n")
            answered.set()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert HttpProbe(timeout=1.0).check(db.instance()) is False
    assert answered.wait(WAIT)
    server.join(WAIT)


# -- thresholds -------------------------------------------------------------------


def test_thresholds_flip_health_round_by_round(web: HttpBackend) -> None:
    target = web.instance()
    lb = balancer(target)
    config = HealthCheckConfig(healthy_threshold=2, unhealthy_threshold=3)
    checker = HealthChecker(lb, HttpProbe(timeout=1.0), config)
    assert checker.check_once() == {"web": True}
    web.status = 500
    checker.check_once()
    checker.check_once()
    assert target.healthy is True and checker.streak("web") == -2
    checker.check_once()
    assert target.healthy is False and lb.get_instance() is None
    web.status = 200
    checker.check_once()
    assert target.healthy is False and checker.streak("web") == 1
    checker.check_once()
    assert target.healthy is True and lb.get_instance() is target


def test_a_stopped_then_restarted_server_is_taken_out_and_back(db: TcpBackend) -> None:
    lb = balancer(db.instance("a"))
    config = HealthCheckConfig(healthy_threshold=1, unhealthy_threshold=1)
    checker = HealthChecker(lb, TcpProbe(timeout=1.0), config)
    checker.check_once()
    assert lb.get_instance() is not None
    port = db.port
    db.close()
    checker.check_once()
    assert lb.get_instance() is None
    restarted = socket.socket()
    restarted.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        restarted.bind(("127.0.0.1", port))
        restarted.listen(8)
        checker.check_once()
        assert lb.get_instance() is lb.get("a")
    finally:
        restarted.close()


def test_new_unhealthy_instance_joins_after_passing_and_gone_ones_are_forgotten(
    web: HttpBackend,
) -> None:
    lb = balancer(web.instance("old"))
    checker = HealthChecker(lb, HttpProbe(), HealthCheckConfig(healthy_threshold=2))
    lb.register(web.instance("new", healthy=False))
    checker.check_once()
    assert lb.get("new").healthy is False  # type: ignore[union-attr]
    checker.check_once()
    assert lb.get("new").healthy is True  # type: ignore[union-attr]
    lb.deregister("old")
    checker.check_once()
    assert checker.streak("old") == 0
    assert checker.streak("new") == 3


# -- background thread --------------------------------------------------------------


def test_thread_reacts_and_stops_promptly_mid_probe(web: HttpBackend) -> None:
    before = checker_threads()
    lb = balancer(web.instance())
    went_down = threading.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, InstanceHealthChanged) and not event.healthy:
            went_down.set()

    lb.subscribe(on_event)
    config = HealthCheckConfig(interval=0.01, healthy_threshold=1, unhealthy_threshold=1)
    checker = HealthChecker(lb, HttpProbe(timeout=60.0), config).start()
    assert checker.running and len(round_threads(lb)) == 1
    web.status = 503
    assert went_down.wait(WAIT)
    web.hang = True  # the next probe will wait on a server that never answers
    assert web.arrived.wait(WAIT)
    streak = checker.streak("web")
    checker.stop()
    # Cut short, not run out: a probe that ran out its timeout would have counted a failure.
    assert checker.streak("web") == streak
    assert not web.release.is_set()  # and the server never answered
    assert not checker.running
    assert checker_threads() == before


def test_context_manager_starts_and_stops_the_thread(db: TcpBackend) -> None:
    lb = balancer(db.instance())
    first_round = threading.Event()

    class CountingProbe(TcpProbe):
        def check(self, instance: ServiceInstance, wake: socket.socket | None = None) -> bool:
            ok = TcpProbe.check(self, instance, wake)
            first_round.set()
            return ok

    with HealthChecker(lb, CountingProbe(), HealthCheckConfig(interval=3600.0)) as checker:
        assert first_round.wait(WAIT)  # the first round runs at once
        with pytest.raises(RuntimeError, match="already running"):
            checker.start()
    # Leaving the block ended the hour-long interval wait: the thread is gone.
    assert not checker.running
    assert checker_threads() == []


def test_a_probe_that_raises_is_logged_and_counts_as_failed(
    db: TcpBackend, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenProbe(TcpProbe):
        def check(self, instance: ServiceInstance, wake: socket.socket | None = None) -> bool:
            raise RuntimeError("probe bug")

    lb = balancer(db.instance())
    checker = HealthChecker(lb, BrokenProbe(), HealthCheckConfig(unhealthy_threshold=1))
    assert checker.check_once() == {"db": False}
    assert "probe bug" in caplog.text
    assert lb.get_instance() is None


# -- asyncio task ---------------------------------------------------------------------


def test_asyncio_task_reacts_and_stops_promptly(web: HttpBackend) -> None:
    before = set(threading.enumerate())
    lb = balancer(web.instance())

    async def main() -> int:
        went_down = asyncio.Event()
        came_back = asyncio.Event()

        def on_event(event: Event) -> None:
            if isinstance(event, InstanceHealthChanged):
                (came_back if event.healthy else went_down).set()

        lb.subscribe(on_event)
        config = HealthCheckConfig(interval=0.01, healthy_threshold=1, unhealthy_threshold=1)
        async with HealthChecker(lb, HttpProbe(timeout=60.0), config) as checker:
            assert checker.running
            web.status = 500
            await asyncio.wait_for(went_down.wait(), WAIT)
            web.status = 200
            await asyncio.wait_for(came_back.wait(), WAIT)
            web.hang = True
            await asyncio.get_running_loop().run_in_executor(None, web.arrived.wait, WAIT)
            streak = checker.streak("web")
        assert not checker.running
        assert not web.release.is_set()  # the server never answered the last probe
        return checker.streak("web") - streak

    assert run(main()) == 0  # cut short: the hanging probe counted nothing
    web.release.set()
    leftover = {t for t in set(threading.enumerate()) - before if t.is_alive()}
    assert all(not t.name.startswith(("codomyrmex-health", "asyncio")) for t in leftover)


def test_stop_async_without_start_is_a_no_op(db: TcpBackend) -> None:
    checker = HealthChecker(balancer(db.instance()))
    run(checker.stop_async())
    checker.stop()
    assert not checker.running


# -- concurrency, the interval, and errors (issue 15 item 15) ---------------------------


def _sick_changed(lb: LoadBalancer, flag: Any) -> None:
    def on_event(event: Event) -> None:
        if isinstance(event, InstanceHealthChanged) and event.instance_id == "sick":
            flag.set()

    lb.subscribe(on_event)


def test_one_hung_instance_delays_no_other_detection_in_the_thread(web: HttpBackend) -> None:
    sick = HttpBackend()
    try:
        web.hang = True  # "hung" never answers while the test runs
        sick.status = 503
        lb = balancer(web.instance("hung"), sick.instance("sick"))  # hung is probed first
        changed = threading.Event()
        _sick_changed(lb, changed)
        config = HealthCheckConfig(interval=3600.0, unhealthy_threshold=1)
        checker = HealthChecker(lb, HttpProbe(timeout=60.0), config).start()
        try:
            assert changed.wait(WAIT)  # sick is out while hung's probe is still waiting
            assert checker.streak("hung") == 0 and lb.get("hung").healthy  # type: ignore[union-attr]
        finally:
            checker.stop()
        assert not web.release.is_set()
    finally:
        sick.close()


def test_one_hung_instance_delays_no_other_detection_in_the_task(web: HttpBackend) -> None:
    sick = HttpBackend()
    try:
        web.hang = True
        sick.status = 503
        lb = balancer(web.instance("hung"), sick.instance("sick"))

        async def main() -> int:
            changed = asyncio.Event()
            _sick_changed(lb, changed)
            config = HealthCheckConfig(interval=3600.0, unhealthy_threshold=1)
            async with HealthChecker(lb, HttpProbe(timeout=60.0), config) as checker:
                await asyncio.wait_for(changed.wait(), WAIT)
                return checker.streak("hung")

        assert run(main()) == 0  # hung's probe was still waiting
    finally:
        sick.close()


def test_check_once_probes_concurrently_and_counts_each_result(web: HttpBackend) -> None:
    sick = HttpBackend()
    try:
        web.hang = True
        sick.status = 503
        lb = balancer(web.instance("hung"), sick.instance("sick"))
        changed = threading.Event()
        _sick_changed(lb, changed)
        checker = HealthChecker(
            lb, HttpProbe(timeout=60.0), HealthCheckConfig(unhealthy_threshold=1)
        )
        worker = threading.Thread(target=checker.check_once, daemon=True)
        worker.start()
        assert changed.wait(WAIT)  # counted before the round (held up by hung) is over
        assert checker.streak("hung") == 0
        web.release.set()  # let the round finish
        worker.join(WAIT * 3)
        assert checker.streak("hung") == 1
    finally:
        sick.close()


class ClockedProbe(TcpProbe):
    """A TCP probe whose rounds take ``cost`` seconds of the fake clock."""

    clock: Any = None
    cost: float = 0.0

    def check(self, instance: ServiceInstance, wake: socket.socket | None = None) -> bool:
        type(self).clock.advance(type(self).cost)
        return TcpProbe.check(self, instance, wake)

    async def check_async(self, instance: ServiceInstance) -> bool:
        type(self).clock.advance(type(self).cost)
        return await TcpProbe.check_async(self, instance)


@pytest.mark.parametrize(("cost", "expected"), [(3.0, 7.0), (12.0, 0.0)])
def test_the_thread_interval_runs_from_the_start_of_a_round(
    db: TcpBackend, clock: Any, cost: float, expected: float
) -> None:
    ClockedProbe.clock, ClockedProbe.cost = clock, cost
    sleeps: list[float] = []
    three = threading.Event()
    release = threading.Event()

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if len(sleeps) >= 3:
            three.set()
            release.wait(WAIT)  # hold the thread here until the test stops it

    checker = HealthChecker(
        balancer(db.instance()),
        ClockedProbe(),
        HealthCheckConfig(interval=10.0),
        clock=clock,
        sleep=sleep,
    ).start()
    assert three.wait(WAIT)
    release.set()
    checker.stop()
    assert sleeps[:3] == [expected] * 3


@pytest.mark.parametrize(("cost", "expected"), [(3.0, 7.0), (12.0, 0.0)])
def test_the_task_interval_runs_from_the_start_of_a_round(
    db: TcpBackend, clock: Any, cost: float, expected: float
) -> None:
    ClockedProbe.clock, ClockedProbe.cost = clock, cost
    sleeps: list[float] = []

    async def main() -> None:
        three = asyncio.Event()

        async def async_sleep(seconds: float) -> None:
            sleeps.append(seconds)
            clock.advance(seconds)
            if len(sleeps) >= 3:
                three.set()
                await asyncio.Event().wait()  # until cancelled by the stop
            await asyncio.sleep(0)

        checker = HealthChecker(
            balancer(db.instance()),
            ClockedProbe(),
            HealthCheckConfig(interval=10.0),
            clock=clock,
            async_sleep=async_sleep,
        )
        async with checker:
            await asyncio.wait_for(three.wait(), WAIT)

    run(main())
    assert sleeps == [expected] * 3


def test_the_async_checker_survives_a_probe_that_raises(
    db: TcpBackend, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    class FlakyProbe(TcpProbe):
        async def check_async(self, instance: ServiceInstance) -> bool:
            calls.append(instance.id)
            if len(calls) == 1:
                raise RuntimeError("probe bug")
            return await TcpProbe.check_async(self, instance)

    lb = balancer(db.instance())
    events: list[bool] = []
    lb.subscribe(
        lambda e: events.append(e.healthy) if isinstance(e, InstanceHealthChanged) else None
    )

    async def main() -> bool:
        three = asyncio.Event()

        async def async_sleep(seconds: float) -> None:
            clock.advance(seconds)
            if len(calls) >= 3:
                three.set()
            await asyncio.sleep(0)

        config = HealthCheckConfig(interval=5.0, healthy_threshold=1, unhealthy_threshold=1)
        checker = HealthChecker(lb, FlakyProbe(), config, clock=clock, async_sleep=async_sleep)
        async with checker:
            await asyncio.wait_for(three.wait(), WAIT)
            return checker.running

    assert run(main()) is True  # still probing after the probe raised
    assert "probe bug" in caplog.text
    assert events[:2] == [False, True]  # the raise counted as a failure, then it recovered


# -- configuration --------------------------------------------------------------------


def test_jitter_comes_from_the_injected_rng() -> None:
    config = HealthCheckConfig(interval=5.0, jitter=2.0)
    checker = HealthChecker(balancer(), config=config, rng=random.Random(7))
    reference = random.Random(7)
    delays = [checker.next_delay() for _ in range(50)]
    assert delays == [5.0 + reference.uniform(0.0, 2.0) for _ in range(50)]
    assert all(5.0 <= d <= 7.0 for d in delays)
    assert HealthChecker(balancer(), config=HealthCheckConfig(interval=3.0)).next_delay() == 3.0


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: HealthCheckConfig(interval=0), "interval"),
        (lambda: HealthCheckConfig(jitter=-1), "jitter"),
        (lambda: HealthCheckConfig(healthy_threshold=0), "healthy_threshold"),
        (lambda: HealthCheckConfig(unhealthy_threshold=0), "unhealthy_threshold"),
        (lambda: TcpProbe(timeout=0), "timeout"),
        (lambda: HttpProbe(path="health"), "path"),
        (lambda: HttpProbe(expected_statuses=range(200, 200)), "expected_statuses"),
        (lambda: HttpProbe(expected_statuses=range(50, 100)), "expected_statuses"),
        (lambda: HealthChecker("lb"), "balancer"),  # type: ignore[arg-type]
        (lambda: HealthChecker(balancer(), probe=object()), "probe"),  # type: ignore[arg-type]
        (lambda: HealthChecker(balancer(), clock=1.0), "clock"),  # type: ignore[arg-type]
        (lambda: HealthChecker(balancer(), sleep=1.0), "sleep"),  # type: ignore[arg-type]
        (lambda: HealthChecker(balancer(), async_sleep=1), "async_sleep"),  # type: ignore[arg-type]
    ],
)
def test_bad_configuration_names_the_field(factory: Any, field: str) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        factory()
