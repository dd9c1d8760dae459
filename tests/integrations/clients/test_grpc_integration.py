"""gRPC through the mesh against real grpc.server instances on 127.0.0.1 (generic handlers)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc.aio")

from http_backends import Recorder, make_proxy  # noqa: E402

from codomyrmex.service_mesh import (  # noqa: E402
    CircuitBreakerConfig,
    CircuitState,
    Mesh,
    ServiceInstance,
    TokenBucketRetryBudget,
)
from codomyrmex.service_mesh.integrations.grpc import (  # noqa: E402
    GrpcSemantics,
    aio_mesh_channel,
    load_service_config,
    mesh_channel,
)

UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"

Behave = Callable[[bytes, Any], bytes]


class GrpcBackend:
    """A real grpc.server on 127.0.0.1 with generic handlers (bytes in, bytes out)."""

    def __init__(self, behave: Behave | None = None, name: str = "") -> None:
        self.behave = behave
        self.name = name
        self.hits = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Stream": grpc.unary_stream_rpc_method_handler(self._stream),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _count(self) -> None:
        with self._lock:
            self.hits += 1

    def _unary(self, request: bytes, context: Any) -> bytes:
        self._count()
        if self.behave is not None:
            return self.behave(request, context)
        return self.name.encode() + b":" + request

    def _stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        self._count()
        if self.behave is not None:
            self.behave(request, context)
        for i in range(3):
            yield f"{self.name}:{i}".encode()

    def instance(self) -> ServiceInstance:
        return ServiceInstance(self.name, "127.0.0.1", self.port)

    def stop(self) -> None:
        self.release.set()
        self.server.stop(None).wait()


def unavailable(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.UNAVAILABLE, "down")
    return b""


def pushback(ms: str) -> Behave:
    def answer(request: bytes, context: Any) -> bytes:
        context.set_trailing_metadata((("grpc-retry-pushback-ms", ms),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
        return b""

    return answer


@pytest.fixture
def servers() -> Iterator[Callable[..., GrpcBackend]]:
    started: list[GrpcBackend] = []

    def start(behave: Behave | None = None, name: str = "x") -> GrpcBackend:
        backend = GrpcBackend(behave, name)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


def test_unary_calls_go_to_each_instance_and_unavailable_moves_on(servers) -> None:
    bad, a, b = servers(unavailable, "bad"), servers(name="a"), servers(name="b")
    proxy = make_proxy(bad.instance(), a.instance(), b.instance())
    channel = mesh_channel(proxy, "orders")
    call = channel.unary_unary(UNARY)
    answers = [call(b"hi", timeout=5) for _ in range(6)]
    assert set(answers) == {b"a:hi", b"b:hi"}
    assert bad.hits == 3  # round robin hands it every other first attempt; each moved on
    response, rpc = call.with_call(b"again")
    assert response in {b"a:again", b"b:again"}
    assert rpc.code() is grpc.StatusCode.OK
    channel.close()


def test_a_status_outside_the_retryable_codes_is_the_servers_answer(servers) -> None:
    def not_found(request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item")
        return b""

    backend = servers(not_found, "a")
    proxy = make_proxy(backend.instance())
    channel = mesh_channel(proxy, "orders")
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(UNARY)(b"x")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert backend.hits == 1
    assert proxy.circuit_breaker.failure_count == 0
    strict = mesh_channel(proxy, "orders", semantics=GrpcSemantics({"NOT_FOUND", 14}))
    with pytest.raises(grpc.RpcError):
        strict.unary_unary(UNARY)(b"x")
    assert backend.hits == 1 + 3
    channel.close()
    strict.close()


def test_giving_up_raises_the_last_status(servers) -> None:
    backend = servers(unavailable, "a")
    channel = mesh_channel(make_proxy(backend.instance(), max_retries=2), "orders")
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(UNARY)(b"x")
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert backend.hits == 3
    channel.close()


def test_resource_exhausted_honours_the_pushback(servers) -> None:
    answers = iter([pushback("250"), None])
    behaviours: list[Any] = []

    def behave(request: bytes, context: Any) -> bytes:
        chosen = behaviours[0] if behaviours else next(answers)
        if chosen is None:
            return b"done"
        behaviours.append(None)
        return chosen(request, context)

    backend = servers(behave, "a")
    recorder = Recorder()
    channel = mesh_channel(make_proxy(backend.instance(), recorder=recorder), "orders")
    assert channel.unary_unary(UNARY)(b"x") == b"done"
    assert recorder.sleeps == [0.25]

    refusing = servers(pushback("-1"), "r")
    channel2 = mesh_channel(make_proxy(refusing.instance()), "orders")
    with pytest.raises(grpc.RpcError) as caught:
        channel2.unary_unary(UNARY)(b"x")
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusing.hits == 1  # a negative pushback: do not retry
    channel.close()
    channel2.close()


def test_a_stream_is_retried_only_before_its_first_message(servers) -> None:
    bad, good = servers(unavailable, "bad"), servers(name="good")
    channel = mesh_channel(make_proxy(bad.instance(), good.instance()), "orders")
    stream = channel.unary_stream(STREAM)(b"x", timeout=5)
    assert list(stream) == [b"good:0", b"good:1", b"good:2"]
    assert (bad.hits, good.hits) == (1, 1)

    def fail_after_first(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first"
        context.abort(grpc.StatusCode.UNAVAILABLE, "gone mid-stream")

    late = servers(name="late")
    late.server.stop(None).wait()
    late2 = GrpcBackend(name="late2")
    try:
        handlers = {"Stream": grpc.unary_stream_rpc_method_handler(fail_after_first)}
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        proxy = make_proxy(ServiceInstance("mid", "127.0.0.1", port), late2.instance())
        midway = mesh_channel(proxy, "orders")
        got = []
        with pytest.raises(grpc.RpcError) as caught:
            for message in midway.unary_stream(STREAM)(b"x"):
                got.append(message)
        assert got == [b"first"]  # committed after the first message: never retried
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert late2.hits == 0
        midway.close()
        server.stop(None).wait()
    finally:
        late2.stop()
    channel.close()


def test_per_instance_breakers_eject_through_the_balancer(servers) -> None:
    bad, good = servers(unavailable, "bad"), servers(name="good")
    mesh = Mesh()
    proxy = mesh.register_service(make_proxy(bad.instance(), good.instance()))
    channel = mesh_channel(
        mesh, "orders", instance_breaker=CircuitBreakerConfig(failure_threshold=1)
    )
    for _ in range(4):
        assert channel.unary_unary(UNARY)(b"x") == b"good:x"
    assert mesh.get_circuit_breaker("orders/bad").state is CircuitState.OPEN
    assert proxy.load_balancer.is_ejected("bad") and proxy.load_balancer.get("bad").healthy
    assert bad.hits == 1
    channel.close()


def test_aio_unary_and_stream_through_the_mesh(servers) -> None:
    bad, good = servers(unavailable, "bad"), servers(name="good")

    async def main() -> None:
        proxy = make_proxy(bad.instance(), good.instance())
        async with aio_mesh_channel(proxy, "orders") as channel:
            call = channel.unary_unary(UNARY)
            assert [await call(b"x", timeout=5) for _ in range(2)] == [b"good:x", b"good:x"]
            messages = [m async for m in channel.unary_stream(STREAM)(b"x")]
            assert messages == [b"good:0", b"good:1", b"good:2"]
            assert bad.hits == 3 and good.hits == 3  # each call: bad first, then good
        dead = make_proxy(bad.instance(), max_retries=1)
        async with aio_mesh_channel(dead, "orders") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(UNARY)(b"x")
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())


def test_a_hung_instance_is_left_when_the_attempt_timeout_cuts_it(servers) -> None:
    from codomyrmex.service_mesh.integrations.protocol import Timeouts

    hung = servers(name="hung")
    hung.behave = lambda request, context: (hung.release.wait(10), b"late")[1]
    fast = servers(name="fast")
    channel = mesh_channel(
        make_proxy(hung.instance(), fast.instance()), "orders", timeouts=Timeouts(attempt=0.3)
    )
    assert channel.unary_unary(UNARY)(b"x", timeout=5) == b"fast:x"
    assert hung.hits == 1
    channel.close()


SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "test.Echo", "method": "Unary"}],
            "timeout": "2.5s",
            "retryPolicy": {
                "maxAttempts": 9,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "ABORTED"],
            },
        },
        {
            "name": [{"service": "test.Other"}],
            "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s"},
        },
    ],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}


def test_service_config_import() -> None:
    config = load_service_config(json.dumps(SERVICE_CONFIG))
    unary = config.for_method(UNARY)
    assert unary is not None
    assert unary.max_attempts == 5  # capped as gRPC does
    assert unary.timeout == 2.5
    assert unary.retryable_codes == {"UNAVAILABLE", "ABORTED"}
    policy = unary.retry_policy(config.budget)
    assert (policy.max_retries, policy.initial_delay, policy.max_delay) == (4, 0.1, 1.0)
    assert policy.exponential_base == 2.0
    assert isinstance(policy.budget, TokenBucketRetryBudget)
    assert (config.max_tokens, config.token_ratio) == (10.0, 0.1)
    other = config.for_method("/test.Other/Any")
    assert other is not None and (other.hedging_max_attempts, other.hedging_delay) == (3, 0.05)
    assert config.for_method("/test.Echo/Stream") is None


def test_service_config_retryable_codes_and_attempts_apply(servers) -> None:
    def aborted(request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.ABORTED, "conflict")
        return b""

    backend = servers(aborted, "a")
    channel = mesh_channel(make_proxy(backend.instance()), "orders", service_config=SERVICE_CONFIG)
    with pytest.raises(grpc.RpcError):
        channel.unary_unary(UNARY)(b"x")
    assert backend.hits == 5  # ABORTED retried, maxAttempts capped at 5
    channel.close()


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"maxAttempts": 1}, "maxAttempts must be at least 2"),
        ({"maxAttempts": "3"}, "maxAttempts must be an integer"),
        ({"initialBackoff": "100ms"}, "initialBackoff must be a duration"),
        ({"initialBackoff": 0.1}, "initialBackoff must be a duration"),
        ({"maxBackoff": "0s"}, "maxBackoff must be > 0s"),
        ({"backoffMultiplier": 0}, "backoffMultiplier must be > 0"),
        ({"retryableStatusCodes": []}, "retryableStatusCodes must be a non-empty list"),
        ({"retryableStatusCodes": ["NOPE"]}, "retryableStatusCodes must hold gRPC status codes"),
    ],
)
def test_service_config_is_validated_as_grpc_does(patch: dict[str, Any], message: str) -> None:
    config = json.loads(json.dumps(SERVICE_CONFIG))
    config["methodConfig"][0]["retryPolicy"].update(patch)
    with pytest.raises((ValueError, TypeError), match=message):
        load_service_config(config)


def test_bad_throttling_and_arguments() -> None:
    with pytest.raises(ValueError, match="maxTokens"):
        load_service_config({"retryThrottling": {"maxTokens": 1001, "tokenRatio": 0.1}})
    with pytest.raises(ValueError, match="tokenRatio"):
        load_service_config({"retryThrottling": {"maxTokens": 10, "tokenRatio": 0}})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_service_config("{")
    proxy = make_proxy(ServiceInstance("a", "127.0.0.1", 9))
    with pytest.raises(TypeError, match="service"):
        mesh_channel(proxy, "")
    with pytest.raises(TypeError, match="semantics"):
        mesh_channel(proxy, "orders", semantics={"UNAVAILABLE"})
    with pytest.raises(ValueError, match="retryable_codes"):
        GrpcSemantics({"SOMETIMES"})
    with pytest.raises(TypeError, match="channel_factory"):
        mesh_channel(proxy, "orders", channel_factory="insecure")


def test_the_interceptor_over_instance_channels_composes_with_intercept_channel(servers) -> None:
    from codomyrmex.service_mesh.integrations.grpc import InstanceChannels, MeshInterceptor

    bad, a, b = servers(unavailable, "bad"), servers(name="a"), servers(name="b")
    interceptor = MeshInterceptor(make_proxy(bad.instance(), a.instance(), b.instance()), "orders")
    pool = InstanceChannels(interceptor.engine_proxy)
    channel = grpc.intercept_channel(pool, interceptor)
    call = channel.unary_unary(UNARY)
    answers = [call(b"hi", timeout=5) for _ in range(6)]
    assert set(answers) == {b"a:hi", b"b:hi"}
    assert bad.hits == 3  # each first attempt on it moved on to another instance
    response, _ = call.with_call(b"again", timeout=5)
    assert response in {b"a:again", b"b:again"}
    messages = list(channel.unary_stream(STREAM)(b"x", timeout=5))
    assert [m.split(b":")[1] for m in messages] == [b"0", b"1", b"2"]
    assert messages[0].split(b":")[0] in {b"a", b"b"}
    interceptor.close()
    pool.close()


def test_mesh_channel_future_and_with_call(servers) -> None:
    good = servers(name="good")
    channel = mesh_channel(make_proxy(good.instance()), "orders")
    call = channel.unary_unary(UNARY)
    response, rpc = call.with_call(b"x", timeout=5)
    assert response == b"good:x" and rpc.code() == grpc.StatusCode.OK
    assert call.future(b"y", timeout=5).result() == b"good:y"
    channel.close()


def test_metadata_trace_context_and_options_reach_the_server(servers) -> None:
    from codomyrmex.service_mesh.integrations.protocol import propagation, set_trace_injector

    seen: list[dict[str, str]] = []

    def record(request: bytes, context: Any) -> bytes:
        seen.append(dict(context.invocation_metadata()))
        return b"seen"

    backend = servers(record, "m")
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    before = propagation._trace_injector
    try:
        channel = mesh_channel(make_proxy(backend.instance()), "orders")
        call = channel.unary_unary(UNARY)
        assert call(b"x", timeout=5, metadata=(("k", "v"),), wait_for_ready=True) == b"seen"
        set_trace_injector(lambda headers: headers.__setitem__("traceparent", parent))
        assert call(b"x", 5, (("k", "w"),), None, True) == b"seen"
        assert call(b"x") == b"seen"
        assert len(list(channel.unary_stream(STREAM)(b"x", metadata=(("k", "s"),)))) == 3

        async def aio() -> None:
            async with aio_mesh_channel(make_proxy(backend.instance()), "orders") as channel:
                assert await channel.unary_unary(UNARY)(b"x", metadata=(("k", "a"),)) == b"seen"
                stream = channel.unary_stream(STREAM)(b"x", wait_for_ready=True)
                assert len([m async for m in stream]) == 3

        asyncio.run(aio())
        channel.close()
    finally:
        set_trace_injector(before)
    assert seen[0]["k"] == "v" and "traceparent" not in seen[0]
    assert [s.get("k") for s in seen[1:]] == ["w", None, "s", "a", None]
    assert all(s["traceparent"] == parent for s in seen[1:])


def test_an_unknown_service_is_refused_until_it_is_registered(servers) -> None:
    from codomyrmex.service_mesh.integrations.protocol import UnknownService

    good = servers(name="good")
    mesh = Mesh()
    channel = mesh_channel(mesh, "orders")
    call = channel.unary_unary(UNARY)
    with pytest.raises(UnknownService):
        call(b"x")
    mesh.register_service(make_proxy(good.instance()))
    assert call(b"x", timeout=5) == b"good:x"
    mesh.remove_service("orders")
    with pytest.raises(UnknownService):
        call(b"x")
    mesh.register_service(make_proxy(good.instance()))  # a new proxy: routed anew
    assert call(b"y", timeout=5) == b"good:y"
    channel.close()


def test_aio_per_instance_breakers_eject_through_the_balancer(servers) -> None:
    bad, good = servers(unavailable, "bad"), servers(name="good")
    mesh = Mesh()
    proxy = mesh.register_service(make_proxy(bad.instance(), good.instance()))

    async def main() -> None:
        breaker = CircuitBreakerConfig(failure_threshold=1)
        async with aio_mesh_channel(mesh, "orders", instance_breaker=breaker) as channel:
            call = channel.unary_unary(UNARY)
            assert [await call(b"x", timeout=5) for _ in range(4)] == [b"good:x"] * 4
            assert mesh.get_circuit_breaker("orders/bad").state is CircuitState.OPEN
            assert proxy.load_balancer.is_ejected("bad")
            assert bad.hits == 1

    asyncio.run(main())
