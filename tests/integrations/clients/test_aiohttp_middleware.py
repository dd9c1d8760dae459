"""MeshMiddleware (aiohttp client middleware) against real aiohttp.web servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from http_backends import Recorder, make_proxy  # noqa: E402

from codomyrmex.service_mesh import (  # noqa: E402
    CircuitBreakerConfig,
    CircuitState,
    Mesh,
    ServiceInstance,
)
from codomyrmex.service_mesh.integrations.aiohttp import (  # noqa: E402
    MeshMiddleware,
    UnknownServiceError,
)
from codomyrmex.service_mesh.integrations.protocol import Timeouts  # noqa: E402

BACKEND: web.AppKey[WebBackend] = web.AppKey("backend")
Behave = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebBackend:
    """A real aiohttp.web server on 127.0.0.1; ``behave`` answers each request."""

    def __init__(self, behave: Behave | None = None) -> None:
        self.behave = behave
        self.seen: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.release = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            {"method": request.method, "path": request.path_qs, "host": request.host, "body": body}
        )
        if self.behave is None:
            return web.Response(text="ok")
        return await self.behave(request)

    async def start(self) -> WebBackend:
        app = web.Application()
        app[BACKEND] = self
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def hits(self) -> int:
        return len(self.seen)

    def instance(self, name: str) -> ServiceInstance:
        return ServiceInstance(name, "127.0.0.1", self.port)


def status(code: int, headers: dict[str, str] | None = None, text: str = "") -> Behave:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers, text=text)

    return answer


def run(body: Callable[..., Awaitable[None]], *behaviours: Behave | None) -> None:
    async def main() -> None:
        backends = [await WebBackend(b).start() for b in behaviours]
        try:
            await body(*backends)
        finally:
            for backend in backends:
                await backend.stop()

    asyncio.run(main())


def session(services: Any, **options: Any) -> Any:
    return aiohttp.ClientSession(middlewares=(MeshMiddleware(services, **options),))


def test_routes_to_each_instance_and_keeps_the_service_host() -> None:
    async def body(a: WebBackend, b: WebBackend) -> None:
        async with session(make_proxy(a.instance("a"), b.instance("b"))) as s:
            for _ in range(4):
                async with s.get("http://orders/items/1?x=2") as response:
                    assert response.status == 200 and await response.text() == "ok"
        assert (a.hits, b.hits) == (2, 2)
        assert {i["path"] for i in a.seen + b.seen} == {"/items/1?x=2"}
        assert {i["host"] for i in a.seen} == {"orders"}

    run(body, None, None)


def test_an_instance_moved_in_place_is_reached_at_its_new_address() -> None:
    async def body(a: WebBackend, b: WebBackend) -> None:
        instance = a.instance("only")
        async with session(make_proxy(instance)) as s:
            for _ in range(2):
                async with s.get("http://orders/x") as response:
                    assert await response.text() == "ok"
            instance.update_from(b.instance("only"))  # as discovery updates a member
            async with s.get("http://orders/x") as response:
                assert await response.text() == "ok"
        assert (a.hits, b.hits) == (2, 1)

    run(body, None, None)


def test_a_503_moves_on_after_retry_after_and_a_post_gets_one_attempt() -> None:
    async def body(bad: WebBackend, good: WebBackend) -> None:
        recorder = Recorder()
        proxy = make_proxy(bad.instance("bad"), good.instance("good"), recorder=recorder)
        async with session(proxy) as s:
            async with s.get("http://orders/") as response:
                assert await response.text() == "ok"
            assert recorder.sleeps == []  # failing over to another instance: no wait
            assert (bad.hits, good.hits) == (1, 1)
            async with s.post("http://orders/", data=b"x") as response:
                assert response.status == 503  # round robin: bad again; not retried
                assert await response.text() == "busy"
            assert (bad.hits, good.hits) == (2, 1)

    run(body, status(503, {"Retry-After": "2"}, "busy"), None)


def test_giving_up_returns_the_last_failing_response_read_in_full() -> None:
    async def body(bad: WebBackend) -> None:
        async with session(make_proxy(bad.instance("bad"), max_retries=2)) as s:
            async with s.put("http://orders/", data=b"payload") as response:
                assert response.status == 500
                assert await response.text() == "bug"
        assert bad.hits == 3
        assert {i["body"] for i in bad.seen} == {b"payload"}  # the body is sent each time

    run(body, status(500, text="bug"))


def test_a_streamed_body_is_sent_once() -> None:
    async def body(bad: WebBackend) -> None:
        async def chunks() -> Any:
            yield b"a"
            yield b"b"

        async with session(make_proxy(bad.instance("bad"), max_retries=3)) as s:
            async with s.put("http://orders/", data=chunks()) as response:
                assert response.status == 503
        assert bad.hits == 1

    run(body, status(503))


def test_a_hung_instance_is_left_after_the_attempt_timeout() -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await request.app[BACKEND].release.wait()  # until the backend stops
        return web.Response(text="late")

    async def body(hung: WebBackend, fast: WebBackend) -> None:
        proxy = make_proxy(hung.instance("hung"), fast.instance("fast"))
        timeout = aiohttp.ClientTimeout(total=0.9)  # the deadline; 0.3 s per attempt
        async with aiohttp.ClientSession(
            middlewares=(MeshMiddleware(proxy),), timeout=timeout
        ) as s:
            async with s.get("http://orders/") as response:
                assert await response.text() == "ok"
        assert (hung.hits, fast.hits) == (1, 1)

    run(body, hang, None)


def test_a_hung_instance_is_cut_off_at_the_middlewares_attempt_timeout() -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await request.app[BACKEND].release.wait()  # until the backend stops
        return web.Response(text="late")

    async def body(hung: WebBackend, fast: WebBackend) -> None:
        proxy = make_proxy(hung.instance("hung"), fast.instance("fast"))
        middleware = MeshMiddleware(proxy, timeouts=Timeouts(attempt=0.3))
        no_timeout = aiohttp.ClientTimeout(total=None)  # only the mesh bounds the attempts
        async with aiohttp.ClientSession(middlewares=(middleware,), timeout=no_timeout) as s:
            for _ in range(2):  # the second call: the timer armed by the first still serves
                async with s.get("http://orders/") as response:
                    assert await response.text() == "ok"
        assert hung.hits >= 1 and fast.hits == 2

    run(body, hang, None)


def test_unknown_service_and_passthrough() -> None:
    async def body(a: WebBackend) -> None:
        async with session(make_proxy(a.instance("a"))) as s:
            with pytest.raises(UnknownServiceError, match="nowhere"):
                await s.get("http://nowhere/")
        async with session(make_proxy(a.instance("a")), passthrough=True) as s:
            async with s.get(f"http://127.0.0.1:{a.port}/direct") as response:
                assert response.status == 200
        assert a.seen[-1]["path"] == "/direct"

    run(body, None)


def test_per_instance_breakers_eject_through_the_balancer() -> None:
    async def body(bad: WebBackend, good: WebBackend) -> None:
        mesh = Mesh()
        proxy = mesh.register_service(make_proxy(bad.instance("bad"), good.instance("good")))
        middleware = MeshMiddleware(
            mesh, instance_breaker=CircuitBreakerConfig(failure_threshold=1)
        )
        async with aiohttp.ClientSession(middlewares=(middleware,)) as s:
            for _ in range(5):
                async with s.get("http://orders/") as response:
                    assert response.status == 200
        assert mesh.get_circuit_breaker("orders/bad").state is CircuitState.OPEN
        assert proxy.load_balancer.is_ejected("bad")
        assert proxy.load_balancer.get("bad").healthy is True
        assert bad.hits == 1
        middleware.close()
        assert not proxy.load_balancer.is_ejected("bad")

    run(body, status(503), None)


def test_bad_arguments_name_the_argument() -> None:
    proxy = make_proxy(ServiceInstance("a", "127.0.0.1", 9))
    with pytest.raises(TypeError, match="services"):
        MeshMiddleware([proxy])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failure_statuses"):
        MeshMiddleware(proxy, failure_statuses=[99])
    with pytest.raises(TypeError, match="retry_methods"):
        MeshMiddleware(proxy, retry_methods="GET")
    with pytest.raises(TypeError, match="passthrough"):
        MeshMiddleware(proxy, passthrough=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeouts"):
        MeshMiddleware(proxy, timeouts=Timeouts)  # type: ignore[arg-type]
