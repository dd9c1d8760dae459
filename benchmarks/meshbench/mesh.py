"""Load balancer scaling and the full ServiceProxy stack (sync and async)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from .harness import (
    BenchSetupError,
    Contender,
    LoopRunner,
    Pair,
    Runner,
    Settings,
    Target,
    Workload,
)
from .peers import breaker_peer, ours, unique

LB_SIZES = (10, 1_000, 10_000)
SPEC_STRATEGIES = ("ROUND_ROBIN", "RANDOM", "WEIGHTED", "LEAST_CONNECTIONS")
PROXY_INSTANCES = 10
ROUTING_KEYS = 1_024  # keyed (consistent-hash) strategies cycle through this many keys
PAYLOAD = {"order": 42}


def _strategy_names() -> list[str]:
    """Every member of LoadBalancerStrategy present at run time (the spec's if not importable)."""
    try:
        return [member.name for member in ours().LoadBalancerStrategy]
    except Exception:
        return list(SPEC_STRATEGIES)


def _instances(sm: Any, count: int) -> list[Any]:
    return [
        sm.ServiceInstance(id=f"i{k}", host="127.0.0.1", port=1024 + k % 60_000, weight=1 + k % 4)
        for k in range(count)
    ]


def _balancer(strategy: str, size: int) -> Any:
    sm = ours()
    lb = sm.LoadBalancer(strategy=sm.LoadBalancerStrategy[strategy])
    for instance in _instances(sm, size):
        lb.register(instance)
    return lb


def _keyed(strategy: str) -> bool:
    """Consistent-hash strategies route by a key: they are measured with varying keys."""
    return "HASH" in strategy or strategy == "MAGLEV"


def _lb_label(strategy: str, size: int) -> str:
    return f"{strategy} @ {size:,}"


def _lb_build(strategy: str, size: int) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        lb = _balancer(strategy, size)
        if not _keyed(strategy):
            if lb.get_instance() is None:
                raise BenchSetupError("get_instance() returned None with healthy instances")
            return LoopRunner("lb.get_instance()", {"lb": lb})
        keys = itertools.cycle([f"user-{k}" for k in range(ROUTING_KEYS)])
        if lb.get_instance("user-0") is None:
            raise BenchSetupError("get_instance(key) returned None with healthy instances")
        return LoopRunner("lb.get_instance(next(keys))", {"lb": lb, "keys": keys})

    return build


def lb_scale() -> Workload:
    strategies = _strategy_names()
    contenders = [
        Contender(
            _lb_label(s, n), "ours", _lb_build(s, n), f"{ROUTING_KEYS:,} keys" if _keyed(s) else ""
        )
        for s in strategies
        for n in LB_SIZES
    ]
    pairs: list[Pair] = []
    for s in strategies:
        pairs.append(Pair(_lb_label(s, 10_000), _lb_label(s, 10), Target("<=", 2.0)))
        pairs.append(Pair(_lb_label(s, 1_000), _lb_label(s, 10)))
    return Workload(
        key="lb_scale",
        title="6. LoadBalancer.get_instance() by strategy and pool size",
        unit="ns/call",
        contenders=contenders,
        pairs=pairs,
        ratio_label="cost at N / cost at 10",
        description=(
            "Every LoadBalancerStrategy member present at run time. Weights 1..4, all "
            "instances healthy, no connections in flight; consistent-hash strategies get "
            "get_instance(key) with keys cycling over a fixed set."
        ),
    )


# --------------------------------------------------------------------------- proxy


def handler(instance: Any, payload: object) -> object:
    return payload


async def ahandler(instance: Any, payload: object) -> object:
    return payload


def single(payload: object) -> object:
    return payload


async def asingle(payload: object) -> object:
    return payload


def _proxy() -> Any:
    sm = ours()
    name = unique("proxy")
    lb = sm.LoadBalancer(strategy=sm.LoadBalancerStrategy.ROUND_ROBIN)
    for instance in _instances(sm, PROXY_INSTANCES):
        lb.register(instance)
    return sm.ServiceProxy(
        service_name=name,
        load_balancer=lb,
        circuit_breaker=sm.CircuitBreaker(name),
        retry_policy=sm.RetryPolicy(),
    )


def _check(result: object) -> None:
    if result is not PAYLOAD:
        raise BenchSetupError(f"expected the payload back, got {result!r}")


def _proxy_ours(settings: Settings) -> Runner:
    proxy = _proxy()
    _check(proxy.call(handler, PAYLOAD))
    return LoopRunner(
        "proxy.call(handler, payload)", {"proxy": proxy, "handler": handler, "payload": PAYLOAD}
    )


def _single_peer(label: str) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        f = breaker_peer(label).decorate(single, unique(label), 5)
        _check(f(PAYLOAD))
        return LoopRunner("f(payload)", {"f": f, "payload": PAYLOAD})

    return build


def proxy_call() -> Workload:
    return Workload(
        key="proxy_call",
        title="7. ServiceProxy.call full stack (pick + connection + breaker + retry), success",
        unit="ns/call",
        contenders=[
            Contender(
                "ours: proxy.call(handler, x)",
                "ours",
                _proxy_ours,
                f"{PROXY_INSTANCES} instances, ROUND_ROBIN",
            ),
            Contender("pybreaker", "peer", _single_peer("pybreaker"), "one decorated call"),
            Contender(
                "circuitbreaker", "peer", _single_peer("circuitbreaker"), "one decorated call"
            ),
        ],
        targets={"pybreaker": Target("<", 1.0)},
    )


def _proxy_async_ours(settings: Settings) -> Runner:
    proxy = _proxy()
    runner = LoopRunner(
        "await proxy.call_async(handler, payload)",
        {"proxy": proxy, "handler": ahandler, "payload": PAYLOAD},
        is_async=True,
    )
    _check(runner.run_coro(proxy.call_async(ahandler, PAYLOAD)))
    return runner


def _async_single_peer(label: str) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        f = breaker_peer(label).decorate(asingle, unique(label), 5)
        runner = LoopRunner("await f(payload)", {"f": f, "payload": PAYLOAD}, is_async=True)
        _check(runner.run_coro(f(PAYLOAD)))
        return runner

    return build


def async_proxy_call() -> Workload:
    return Workload(
        key="async_proxy_call",
        title="A4. ServiceProxy.call_async full stack, success",
        unit="ns/call",
        contenders=[
            Contender(
                "ours: await proxy.call_async(h, x)",
                "ours",
                _proxy_async_ours,
                f"{PROXY_INSTANCES} instances, ROUND_ROBIN",
            ),
            Contender("aiobreaker", "peer", _async_single_peer("aiobreaker"), "one decorated call"),
        ],
        description="No target; informational (the async twin of workload 7).",
    )
