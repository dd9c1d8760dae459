"""Overload-protection workloads: each limiter's success path, next to the breaker's.

Every contender admits the call and runs ``fn()``, which returns at once; nothing is
ever refused (the limits are far above one call in flight, the rate far above the
loop's). The ratios are each limiter's cost over ``cb.execute(fn)`` (the breaker's
success path) on the same run, sync and async alike.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from .harness import BenchSetupError, Contender, LoopRunner, Pair, Runner, Settings, Workload
from .peers import LONG_OPEN_S, ours, unique


def fn() -> None:
    return None


async def afn() -> None:
    return None


def _limits() -> Any:
    return importlib.import_module("codomyrmex.service_mesh.limits")


def _breaker() -> Any:
    sm = ours()
    config = sm.CircuitBreakerConfig(failure_threshold=5, timeout_seconds=LONG_OPEN_S)
    return sm.CircuitBreaker(unique("limits-cb"), config)


ALGORITHMS: dict[str, Callable[[Any], Any]] = {
    "FixedLimit": lambda lim: lim.FixedLimit(1000),
    "AIMDLimit": lambda lim: lim.AIMDLimit(initial_limit=100, max_limit=1000),
    "VegasLimit": lambda lim: lim.VegasLimit(initial_limit=100),
    "Gradient2Limit": lambda lim: lim.Gradient2Limit(initial_limit=100, max_concurrency=1000),
    "WindowedLimit(Vegas)": lambda lim: lim.WindowedLimit(lim.VegasLimit(initial_limit=100)),
}

_PERMIT = """
with limiter.acquire():
    fn()
"""
_APERMIT = """
with limiter.acquire():
    await fn()
"""
_RATE = """
if rate.try_acquire() == 0.0:
    fn()
"""
_ARATE = """
if await rate.try_acquire_async() == 0.0:
    await fn()
"""


def _ref(settings: Settings) -> Runner:
    return LoopRunner("fn()", {"fn": fn})


def _semaphore(settings: Settings) -> Runner:
    sem = threading.BoundedSemaphore(1000)
    stmt = """
if sem.acquire(False):
    try:
        fn()
    finally:
        sem.release()
"""
    return LoopRunner(stmt, {"sem": sem, "fn": fn})


def _breaker_runner(is_async: bool) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        cb = _breaker()
        if is_async:
            return LoopRunner("await cb.execute_async(afn)", {"cb": cb, "afn": afn}, is_async=True)
        return LoopRunner("cb.execute(fn)", {"cb": cb, "fn": fn})

    return build


def _limiter_runner(name: str, is_async: bool) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        lim = _limits()
        limiter = lim.ConcurrencyLimiter(ALGORITHMS[name](lim))
        with limiter.acquire():
            pass
        if limiter.in_flight != 0:
            raise BenchSetupError("the permit did not free its place")
        if is_async:
            return LoopRunner(_APERMIT, {"limiter": limiter, "fn": afn}, is_async=True)
        return LoopRunner(_PERMIT, {"limiter": limiter, "fn": fn})

    return build


def _rate_runner(is_async: bool) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        rate = _limits().RateLimiter(1e12, burst=1e6)
        if rate.try_acquire() != 0.0:
            raise BenchSetupError("the rate limiter refused a call")
        if is_async:
            return LoopRunner(_ARATE, {"rate": rate, "fn": afn}, is_async=True)
        return LoopRunner(_RATE, {"rate": rate, "fn": fn})

    return build


def _handler(instance: Any) -> None:
    return None


async def _ahandler(instance: Any) -> None:
    return None


def _proxy_runner(limit: str | None, is_async: bool) -> Callable[[Settings], Runner]:
    """``proxy.call`` on one instance, with no limit, a Vegas limiter or a rate limiter."""

    def build(settings: Settings) -> Runner:
        sm, lim = ours(), _limits()
        name = unique("limits-proxy")
        lb = sm.LoadBalancer()
        lb.register(sm.ServiceInstance("i1", "127.0.0.1", 8080))
        kwargs: dict[str, Any] = {}
        if limit == "concurrency":
            kwargs["concurrency_limit"] = lim.ConcurrencyLimiter(lim.VegasLimit(initial_limit=100))
        elif limit == "rate":
            kwargs["rate_limit"] = lim.RateLimiter(1e12, burst=1e6)
        proxy = sm.ServiceProxy(name, lb, sm.CircuitBreaker(name), sm.RetryPolicy(), **kwargs)
        if is_async:
            return LoopRunner(
                "await proxy.call_async(h)", {"proxy": proxy, "h": _ahandler}, is_async=True
            )
        proxy.call(_handler)
        return LoopRunner("proxy.call(h)", {"proxy": proxy, "h": _handler})

    return build


def _workload(is_async: bool) -> Workload:
    breaker = "ours: breaker cb.execute" + ("_async" if is_async else "")
    contenders = []
    if not is_async:
        contenders += [
            Contender("bare fn() call", "ref", _ref, "the floor: no limit"),
            Contender("threading.BoundedSemaphore", "ref", _semaphore, "a static cap, no timing"),
        ]
    contenders.append(Contender(breaker, "ours", _breaker_runner(is_async)))
    pairs = []
    for name in ALGORITHMS:
        label = f"ours: ConcurrencyLimiter({name})"
        contenders.append(Contender(label, "ours", _limiter_runner(name, is_async)))
        pairs.append(Pair(label, breaker))
    rate = "ours: RateLimiter (GCRA)"
    contenders.append(Contender(rate, "ours", _rate_runner(is_async)))
    pairs.append(Pair(rate, breaker))
    plain = "ours: proxy.call" + ("_async" if is_async else "") + ", no limit"
    contenders.append(Contender(plain, "ours", _proxy_runner(None, is_async)))
    for kind, label in (("concurrency", "+ concurrency_limit (Vegas)"), ("rate", "+ rate_limit")):
        full = f"ours: proxy.call{'_async' if is_async else ''} {label}"
        contenders.append(Contender(full, "ours", _proxy_runner(kind, is_async)))
        pairs.append(Pair(full, plain))
    return Workload(
        key="async_limiter_success" if is_async else "limiter_success",
        title=("13. Async l" if is_async else "12. L") + "imiter success path, next to the breaker",
        unit="ns/call",
        contenders=contenders,
        pairs=pairs,
        ratio_label="limiter/breaker (proxy rows: with/without the stage)",
        description=(
            "One admitted call per iteration through each limit (with limiter.acquire(): "
            "fn(); or a GCRA try_acquire), compared with the breaker's CLOSED success path; "
            "and a whole proxy call with each stage, compared with the same proxy without."
        ),
    )


def limiter_success() -> Workload:
    return _workload(False)


def async_limiter_success() -> Workload:
    return _workload(True)
