"""The decorators and the mesh registry they share breakers through."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from typing import Any

import pytest

import codomyrmex.service_mesh as sm
from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    LoadBalancer,
    Mesh,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
    default_mesh,
    get_circuit_breaker,
    list_circuit_breakers,
    with_circuit_breaker,
    with_retry,
)


class Boom(Exception):
    pass


class Flaky:
    """Fails ``failures`` times, then returns its arguments."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise Boom(f"attempt {self.calls}")
        return args, kwargs


def registered(name: str, clock: Any, **config: Any) -> CircuitBreaker:
    """Create the named breaker in the default mesh with a fake clock, as decorators find it."""
    return default_mesh().circuit_breaker(name, CircuitBreakerConfig(**config), clock=clock)


# -- with_circuit_breaker ------------------------------------------------------------


def test_breaker_decorator_protects_calls(flavour: Any, clock: Any) -> None:
    cb = registered("auth", clock, failure_threshold=2, timeout_seconds=10.0)
    target = Flaky(failures=2)
    call = flavour.decorate(with_circuit_breaker("auth"), target)
    for _ in range(2):
        with pytest.raises(Boom):
            call("token")
    assert cb.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        call("token")
    assert info.value.name == "auth"
    assert target.calls == 2, "an open breaker must not call the function"
    clock.advance(10.0)
    assert call("token", scope="read") == (("token",), {"scope": "read"})
    assert target.calls == 3
    assert cb.state is CircuitState.HALF_OPEN  # success_threshold is 2
    assert cb.half_open_in_flight == 0
    assert call("token") == (("token",), {})
    assert cb.state is CircuitState.CLOSED


def test_breaker_decorator_ignores_stale_results(flavour: Any, clock: Any) -> None:
    cb = registered("stale", clock, failure_threshold=1, success_threshold=1)

    def slow() -> str:
        cb.record_failure()  # meanwhile, the breaker opens...
        clock.advance(cb.config.timeout_seconds)  # ...and goes HALF_OPEN
        assert cb.state is CircuitState.HALF_OPEN
        return "late"

    call = flavour.decorate(with_circuit_breaker("stale"), slow)
    assert call() == "late"
    assert cb.state is CircuitState.HALF_OPEN, "a result admitted while CLOSED is no probe"
    assert cb.half_open_in_flight == 0


def test_breaker_decorator_success_resets_count(flavour: Any, clock: Any) -> None:
    cb = registered("reset-count", clock, failure_threshold=2)
    outcomes = iter([Boom(), None, Boom(), None, Boom()])

    def fn() -> str:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return "fine"

    call = flavour.decorate(with_circuit_breaker("reset-count"), fn)
    for _ in range(5):
        try:
            call()
        except Boom:
            pass
    assert cb.state is CircuitState.CLOSED
    assert cb.failure_count == 1


def test_breaker_decorator_base_exception_counts_as_nothing(flavour: Any, clock: Any) -> None:
    cb = registered("interrupts", clock, failure_threshold=1)

    def fn() -> None:
        raise asyncio.CancelledError

    call = flavour.decorate(with_circuit_breaker("interrupts"), fn)
    with pytest.raises(asyncio.CancelledError):
        call()
    assert cb.state is CircuitState.CLOSED
    assert cb.failure_count == 0


def test_breaker_decorator_keeps_function_metadata() -> None:
    def lookup(user_id: int, *, verbose: bool = False) -> str:
        """Find a user."""
        return str(user_id)

    async def alookup(user_id: int, *, verbose: bool = False) -> str:
        """Find a user, asynchronously."""
        return str(user_id)

    for fn in (lookup, alookup):
        wrapped = with_circuit_breaker("users")(fn)
        assert wrapped.__name__ == fn.__name__
        assert wrapped.__qualname__ == fn.__qualname__
        assert wrapped.__doc__ == fn.__doc__
        assert wrapped.__module__ == fn.__module__
        assert wrapped.__wrapped__ is fn  # type: ignore[attr-defined]
        assert inspect.signature(wrapped) == inspect.signature(fn)


def test_breaker_decorator_gives_async_wrapper_for_coroutine_functions(clock: Any) -> None:
    cb = registered("async-svc", clock, failure_threshold=1)

    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    def plain(x: int) -> int:
        return x * 2

    wrapped = with_circuit_breaker("async-svc")(fetch)
    assert inspect.iscoroutinefunction(wrapped)
    assert not inspect.iscoroutinefunction(with_circuit_breaker("async-svc")(plain))
    assert asyncio.run(wrapped(21)) == 42
    assert wrapped.circuit_breaker is cb


def test_async_wrapper_holds_slot_while_awaiting(clock: Any) -> None:
    cb = registered("async-slot", clock, failure_threshold=1, half_open_max_calls=1)
    cb.record_failure()
    clock.advance(cb.config.timeout_seconds)

    async def probe() -> int:
        await asyncio.sleep(0)
        return cb.half_open_in_flight

    wrapped = with_circuit_breaker("async-slot")(probe)

    async def scenario() -> list[Any]:
        return list(await asyncio.gather(wrapped(), wrapped(), return_exceptions=True))

    first, second = asyncio.run(scenario())
    assert first == 1
    assert isinstance(second, CircuitOpenError)
    assert cb.half_open_in_flight == 0


def test_circuit_breaker_attribute_is_the_registered_breaker(clock: Any) -> None:
    cb = registered("billing", clock)

    @with_circuit_breaker("billing")
    def charge(amount: int) -> int:
        return amount

    assert charge.circuit_breaker is cb
    assert get_circuit_breaker("billing") is cb


def test_same_name_shares_one_breaker(flavour: Any, clock: Any) -> None:
    cb = registered("shared", clock, failure_threshold=2)
    first = flavour.decorate(with_circuit_breaker("shared"), Flaky(failures=10))
    second_target = Flaky(failures=0)
    second = flavour.decorate(with_circuit_breaker("shared"), second_target)
    for _ in range(2):
        with pytest.raises(Boom):
            first()
    with pytest.raises(CircuitOpenError):
        second()
    assert second_target.calls == 0, "the second function is behind the same open breaker"
    assert cb.state is CircuitState.OPEN


def test_decorator_creates_breaker_with_given_config() -> None:
    config = CircuitBreakerConfig(failure_threshold=3, timeout_seconds=5.0)

    @with_circuit_breaker("auth-service", config=config)
    def call_auth(token: str) -> str:
        return token

    breaker = get_circuit_breaker("auth-service")
    assert breaker is call_auth.circuit_breaker
    assert breaker is not None
    assert breaker.name == "auth-service"
    assert breaker.config == config
    assert call_auth("t") == "t"


def test_decorator_without_config_uses_defaults() -> None:
    @with_circuit_breaker("defaults")
    def fn() -> None:
        pass

    assert fn.circuit_breaker.config == CircuitBreakerConfig()


def test_different_config_for_registered_name_raises() -> None:
    with_circuit_breaker("conflict", CircuitBreakerConfig(failure_threshold=3))(lambda: None)
    with pytest.raises(ValueError, match="conflict"):
        with_circuit_breaker("conflict", CircuitBreakerConfig(failure_threshold=4))
    # Equal config or no config is fine, and shares the breaker.
    a = with_circuit_breaker("conflict", CircuitBreakerConfig(failure_threshold=3))(lambda: 1)
    b = with_circuit_breaker("conflict")(lambda: 2)
    assert a.circuit_breaker is b.circuit_breaker
    assert a.circuit_breaker.config.failure_threshold == 3


def test_default_config_conflicts_with_explicit_different_config() -> None:
    with_circuit_breaker("implicit")(lambda: None)
    with pytest.raises(ValueError, match="implicit"):
        with_circuit_breaker("implicit", CircuitBreakerConfig(failure_threshold=1))


@pytest.mark.parametrize(("name", "error"), [("", ValueError), (None, TypeError), (3, TypeError)])
def test_breaker_decorator_rejects_bad_names(name: Any, error: type) -> None:
    with pytest.raises(error, match="name"):
        with_circuit_breaker(name)
    assert list_circuit_breakers() == {}


def test_breaker_decorator_in_a_private_mesh() -> None:
    mesh = Mesh()

    @with_circuit_breaker("private", mesh=mesh)
    def fn() -> str:
        return "x"

    assert mesh.get_circuit_breaker("private") is fn.circuit_breaker
    assert get_circuit_breaker("private") is None
    assert fn() == "x"


# -- registry read API ------------------------------------------------------------------


def test_registry_lists_and_gets_breakers() -> None:
    assert list_circuit_breakers() == {}
    assert get_circuit_breaker("missing") is None
    a = with_circuit_breaker("a")(lambda: None).circuit_breaker
    b = with_circuit_breaker("b")(lambda: None).circuit_breaker
    assert list_circuit_breakers() == {"a": a, "b": b}
    assert default_mesh().circuit_breakers() == {"a": a, "b": b}
    assert get_circuit_breaker("a") is a
    assert default_mesh().get_circuit_breaker("b") is b
    assert sm.get_circuit_breaker is get_circuit_breaker
    assert {"get_circuit_breaker", "list_circuit_breakers"} <= set(sm.__all__)


def test_registry_listing_is_a_snapshot() -> None:
    with_circuit_breaker("kept")(lambda: None)
    listing = list_circuit_breakers()
    listing.clear()
    default_mesh().circuit_breakers().clear()
    assert set(list_circuit_breakers()) == {"kept"}


def test_registry_add_and_remove(clock: Any) -> None:
    mesh = Mesh()
    cb = CircuitBreaker("manual", clock=clock)
    assert mesh.add_circuit_breaker(cb) is cb
    assert mesh.circuit_breaker("manual") is cb
    with pytest.raises(ValueError, match="manual"):
        mesh.add_circuit_breaker(CircuitBreaker("manual"))
    with pytest.raises(TypeError):
        mesh.add_circuit_breaker("manual")  # type: ignore[arg-type]
    assert mesh.remove_circuit_breaker("manual") is True
    assert mesh.remove_circuit_breaker("manual") is False
    assert mesh.get_circuit_breaker("manual") is None


def test_registry_thread_storm_creates_one_breaker() -> None:
    threads_count = 16
    for round_ in range(20):
        name = f"storm-{round_}"
        start = threading.Barrier(threads_count, timeout=10.0)
        found: list[CircuitBreaker] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                start.wait()
                wrapped = with_circuit_breaker(name)(lambda: None)
                with lock:
                    found.append(wrapped.circuit_breaker)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(threads_count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10.0)
        assert errors == []
        assert len(found) == threads_count
        assert all(cb is found[0] for cb in found)
        assert get_circuit_breaker(name) is found[0]
    assert len(list_circuit_breakers()) == 20


def test_private_mesh_thread_storm_creates_one_breaker() -> None:
    mesh = Mesh()
    start = threading.Barrier(16, timeout=10.0)
    found: list[CircuitBreaker] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait()
        cb = mesh.circuit_breaker("one", CircuitBreakerConfig(failure_threshold=2))
        with lock:
            found.append(cb)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10.0)
    assert len(found) == 16
    assert len({id(cb) for cb in found}) == 1
    assert mesh.circuit_breakers() == {"one": found[0]}


# -- with_retry ---------------------------------------------------------------------------


def test_retry_decorator_retries_until_success(flavour: Any, clock: Any) -> None:
    target = Flaky(failures=2)
    decorator = with_retry(
        max_retries=3,
        initial_delay=0.5,
        jitter=False,
        sleep=clock.sleep,
        async_sleep=clock.async_sleep,
    )
    call = flavour.decorate(decorator, target)
    assert call(1, key="v") == ((1,), {"key": "v"})
    assert target.calls == 3
    assert clock.sleeps == [0.5, 1.0]


def test_retry_decorator_reraises_last_error_when_attempts_run_out(
    flavour: Any, clock: Any
) -> None:
    errors: list[Boom] = []

    def always_fails() -> None:
        errors.append(Boom(f"attempt {len(errors) + 1}"))
        raise errors[-1]

    decorator = with_retry(
        max_retries=2, initial_delay=0.0, sleep=clock.sleep, async_sleep=clock.async_sleep
    )
    call = flavour.decorate(decorator, always_fails)
    with pytest.raises(Boom) as info:
        call()
    assert len(errors) == 3
    assert info.value is errors[-1]


def test_retry_decorator_does_not_retry_open_breaker(flavour: Any, clock: Any) -> None:
    cb = registered("stacked", clock, failure_threshold=1)
    target = Flaky(failures=100)

    def stack(fn: Any) -> Any:
        inner = with_circuit_breaker("stacked")(fn)
        return with_retry(
            max_retries=5, initial_delay=0.0, sleep=clock.sleep, async_sleep=clock.async_sleep
        )(inner)

    call = flavour.decorate(stack, target)
    with pytest.raises(CircuitOpenError):
        call()
    assert target.calls == 1, "the first failure opened the breaker; rejections are not retried"
    assert cb.state is CircuitState.OPEN


def test_retry_decorator_exposes_its_policy() -> None:
    @with_retry(max_retries=5, initial_delay=0.2)
    def fetch_data(url: str) -> str:
        """Fetch it."""
        return url

    policy = fetch_data.retry_policy
    assert isinstance(policy, RetryPolicy)
    assert (policy.max_retries, policy.initial_delay, policy.max_delay) == (5, 0.2, 10.0)
    assert (policy.exponential_base, policy.jitter) == (2.0, True)
    assert fetch_data.__name__ == "fetch_data"
    assert fetch_data.__doc__ == "Fetch it."
    assert fetch_data.__wrapped__.__name__ == "fetch_data"  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(fetch_data)


def test_retry_decorator_gives_async_wrapper_for_coroutine_functions() -> None:
    async def fetch(url: str) -> str:
        """Fetch it, asynchronously."""
        return url

    wrapped = with_retry(max_retries=1)(fetch)
    assert inspect.iscoroutinefunction(wrapped)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == fetch.__doc__
    assert inspect.signature(wrapped) == inspect.signature(fetch)
    assert isinstance(wrapped.retry_policy, RetryPolicy)
    assert asyncio.run(wrapped("u")) == "u"


def test_retry_decorator_async_wrapper_does_not_retry_cancellation(clock: Any) -> None:
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    wrapped = with_retry(max_retries=3, initial_delay=0.0, async_sleep=clock.async_sleep)(cancelled)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(wrapped())
    assert calls == 1


def test_retry_decorator_shares_a_given_policy(clock: Any) -> None:
    policy = RetryPolicy(max_retries=1, initial_delay=0.0, sleep=clock.sleep)
    a = with_retry(policy=policy)(Flaky(failures=1))
    b = with_retry(policy=policy)(Flaky(failures=1))
    assert a.retry_policy is policy
    assert b.retry_policy is policy
    assert a() == ((), {})
    assert b() == ((), {})


def test_retry_decorator_validates_arguments() -> None:
    with pytest.raises(TypeError, match="policy"):
        with_retry(policy="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_retries"):
        with_retry(max_retries=-1)
    with pytest.raises(ValueError, match="exponential_base"):
        with_retry(exponential_base=0.5)


def test_decorated_methods_work(clock: Any) -> None:
    registered("methods", clock)

    class Client:
        def __init__(self) -> None:
            self.base = 10

        @with_circuit_breaker("methods")
        def add(self, x: int) -> int:
            return self.base + x

        @with_retry(max_retries=0)
        async def aadd(self, x: int) -> int:
            return self.base + x

    client = Client()
    assert client.add(5) == 15
    assert asyncio.run(client.aadd(1)) == 11


def test_decorators_on_partial_objects() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    wrapped = with_circuit_breaker("partial")(functools.partial(add, 1))
    assert wrapped(2) == 3


# -- mesh services --------------------------------------------------------------------------


def _proxy(name: str, clock: Any) -> ServiceProxy:
    lb = LoadBalancer()
    lb.register(ServiceInstance(id=f"{name}-1", host="10.0.0.1", port=8080))
    return ServiceProxy(name, lb, CircuitBreaker(name, clock=clock), RetryPolicy(max_retries=0))


def test_register_and_get_service(clock: Any) -> None:
    mesh = Mesh()
    assert mesh.get_service("orders") is None
    proxy = _proxy("orders", clock)
    assert mesh.register_service(proxy) is proxy
    assert mesh.get_service("orders") is proxy
    assert mesh.services() == {"orders": proxy}
    assert mesh.get_circuit_breaker("orders") is proxy.circuit_breaker
    found = mesh.get_service("orders")
    assert found is not None
    assert found.call(lambda inst, x: (inst.address, x), 7) == ("10.0.0.1:8080", 7)


def test_register_service_replaces_same_name(clock: Any) -> None:
    mesh = Mesh()
    first = mesh.register_service(_proxy("orders", clock))
    second = mesh.register_service(_proxy("orders", clock))
    assert first is not second
    assert mesh.get_service("orders") is second
    assert len(mesh.services()) == 1


def test_register_service_rejects_non_proxy() -> None:
    with pytest.raises(TypeError, match="proxy"):
        Mesh().register_service("orders")  # type: ignore[arg-type]


def test_remove_service_and_clear(clock: Any) -> None:
    mesh = Mesh()
    mesh.register_service(_proxy("a", clock))
    mesh.register_service(_proxy("b", clock))
    assert mesh.remove_service("a") is True
    assert mesh.remove_service("a") is False
    assert set(mesh.services()) == {"b"}
    services = mesh.services()
    services.clear()
    assert set(mesh.services()) == {"b"}, "services() is a snapshot"
    mesh.clear()
    assert mesh.services() == {}
    assert mesh.circuit_breakers() == {}


def test_default_mesh_is_one_process_wide_instance() -> None:
    assert default_mesh() is default_mesh()
    assert isinstance(default_mesh(), Mesh)


def test_with_retry_takes_a_policy_or_its_arguments_not_both() -> None:
    shared = RetryPolicy(max_retries=1)
    with pytest.raises(TypeError, match="not both"):
        with_retry(max_retries=0, policy=shared)
    with pytest.raises(TypeError, match="not both"):
        with_retry(policy=shared, sleep=lambda s: None)
    assert with_retry(policy=shared)(lambda: 1).retry_policy is shared
