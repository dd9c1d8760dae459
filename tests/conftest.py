"""Shared fixtures: a fake clock, and the sync/async flavour matrix.

Every behaviour test that takes ``flavour`` runs once per flavour (plain calls,
asyncio, and uvloop when installed), so the sync and async paths cannot drift.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from codomyrmex.service_mesh import default_mesh


class FakeClock:
    """A manual clock: ``clock()`` reads it, ``advance``/``sleep`` move it. Never sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _async_loops() -> list[Any]:
    """The event loops async tests run on: asyncio, and uvloop when installed."""
    params: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        params.append(
            pytest.param(None, id="uvloop", marks=pytest.mark.skip(reason="uvloop not installed"))
        )
    else:
        params.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return params


def _loop_factories() -> list[Any]:
    return [pytest.param(None, id="sync"), *_async_loops()]


@pytest.fixture(params=_async_loops())
def loop_factory(request: pytest.FixtureRequest) -> Any:
    """For async-only behaviours (task cancellation, gather): asyncio and uvloop."""
    return request.param


@pytest.fixture
def run_async(loop_factory: Any) -> Callable[[Any], Any]:
    """Run a coroutine to completion on a fresh event loop of each kind."""

    def run(coro: Any) -> Any:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)

    return run


class Flavour:
    """Runs the same test body through the sync API or the async API.

    ``fn`` arguments are plain functions; the async flavour wraps them in
    coroutine functions, so a test states its behaviour once.
    """

    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
        self.loop_factory = loop_factory
        self.is_async = loop_factory is not None

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self.loop_factory is not None
        with asyncio.Runner(loop_factory=self.loop_factory) as runner:
            return runner.run(coro)

    def make_async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def afn(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return fn(*args, **kwargs)

        return afn

    def breaker(self, cb: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.is_async:
            return cb.execute(fn, *args, **kwargs)
        return self.run(cb.execute_async(self.make_async(fn), *args, **kwargs))

    def retry(self, policy: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.is_async:
            return policy.execute(fn, *args, **kwargs)
        return self.run(policy.execute_async(self.make_async(fn), *args, **kwargs))

    def proxy(self, proxy: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.is_async:
            return proxy.call(fn, *args, **kwargs)
        return self.run(proxy.call_async(self.make_async(fn), *args, **kwargs))

    def decorate(
        self, decorator: Callable[[Any], Any], fn: Callable[..., Any]
    ) -> Callable[..., Any]:
        """Decorate ``fn`` (as a coroutine function in async flavours) and return a sync caller."""
        if not self.is_async:
            return decorator(fn)
        wrapped = decorator(self.make_async(fn))

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(wrapped(*args, **kwargs))

        call.wrapped = wrapped  # type: ignore[attr-defined]
        return call


@pytest.fixture(params=_loop_factories())
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return Flavour(request.param)


@pytest.fixture(autouse=True)
def _clean_default_mesh() -> Any:
    """Each test starts with an empty default mesh (the decorators' registry)."""
    default_mesh().clear()
    yield
    default_mesh().clear()
