"""Retry workloads: success path, two failures then success at zero delay, async."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from .harness import BenchSetupError, Contender, LoopRunner, Runner, Settings, Target, Workload
from .peers import ATTEMPTS, RETRY_PEERS, RetryPeer, ours

MAX_RETRIES = ATTEMPTS - 1
RESULT = "ok"


class Flaky(Exception):
    """Raised by the flaky functions on their first two attempts."""


def ok() -> str:
    return RESULT


async def aok() -> str:
    return RESULT


def make_flaky() -> Callable[[], str]:
    """A function failing twice, then succeeding, over and over (1, 2 fail; 3 succeeds)."""
    calls = itertools.count(1)

    def flaky() -> str:
        if next(calls) % 3:
            raise Flaky
        return RESULT

    return flaky


def _ours_policy() -> Any:
    return ours().RetryPolicy(max_retries=MAX_RETRIES, initial_delay=0.0)


def _ours_decorate(target: Callable[..., Any]) -> Callable[..., Any]:
    wrapped: Callable[..., Any] = ours().with_retry(max_retries=MAX_RETRIES, initial_delay=0.0)(
        target
    )
    return wrapped


def _check(result: object) -> None:
    if result != RESULT:
        raise BenchSetupError(f"expected {RESULT!r}, got {result!r}")


def _ours_execute(make: Callable[[], Callable[[], str]]) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        policy, target = _ours_policy(), make()
        _check(policy.execute(target))
        return LoopRunner("policy.execute(f)", {"policy": policy, "f": target})

    return build


def _ours_decorated(make: Callable[[], Callable[[], str]]) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        f = _ours_decorate(make())
        _check(f())
        return LoopRunner("f()", {"f": f})

    return build


def _peer(peer: RetryPeer, make: Callable[[], Callable[[], str]]) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        f = peer.decorate(make())
        _check(f())
        return LoopRunner("f()", {"f": f})

    return build


def _contenders(make: Callable[[], Callable[[], str]]) -> list[Contender]:
    return [
        Contender("ours: policy.execute(fn)", "ours", _ours_execute(make)),
        Contender("ours: @with_retry", "ours", _ours_decorated(make)),
        *(Contender(p.label, "peer", _peer(p, make), "decorated") for p in RETRY_PEERS),
    ]


def retry_success() -> Workload:
    return Workload(
        key="retry_success",
        title="4. Retry success path (decorated fn, no failure)",
        unit="ns/call",
        contenders=[
            Contender("bare fn() call", "ref", lambda s: LoopRunner("f()", {"f": ok})),
            *_contenders(lambda: ok),
        ],
        targets={"backoff": Target("<=", 0.1), "tenacity": Target("<=", 0.02)},
        description=f"All configured for {ATTEMPTS} attempts and zero wait.",
    )


def retry_failures() -> Workload:
    return Workload(
        key="retry_failures",
        title="5. Retry: two failures then success, zero delay",
        unit="ns/call",
        contenders=_contenders(make_flaky),
        targets={"tenacity": Target("<=", 0.05)},
        description=(
            "One call = three attempts (raise, raise, return). Ours: with_retry(max_retries=3, "
            "initial_delay=0.0); tenacity wait_none(), backoff constant(interval=0), stamina "
            "wait_initial=wait_max=wait_jitter=0 (each may still call sleep(0))."
        ),
    )


# --------------------------------------------------------------------------- async


def _async_ours_execute(settings: Settings) -> Runner:
    policy = _ours_policy()
    runner = LoopRunner(
        "await policy.execute_async(f)", {"policy": policy, "f": aok}, is_async=True
    )
    _check(runner.run_coro(policy.execute_async(aok)))
    return runner


def _async_ours_decorated(settings: Settings) -> Runner:
    f = _ours_decorate(aok)
    runner = LoopRunner("await f()", {"f": f}, is_async=True)
    _check(runner.run_coro(f()))
    return runner


def _async_peer(peer: RetryPeer) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        f: Callable[[], Awaitable[str]] = peer.decorate(aok)
        runner = LoopRunner("await f()", {"f": f}, is_async=True)
        _check(runner.run_coro(_await(f)))
        return runner

    return build


async def _await(f: Callable[[], Awaitable[str]]) -> str:
    return await f()


ASYNC_TARGET_PEERS = ("tenacity", "stamina")


def async_retry_success() -> Workload:
    return Workload(
        key="async_retry_success",
        title="A3. Async retry success path (await, no failure)",
        unit="ns/call",
        contenders=[
            Contender(
                "bare await afn()",
                "ref",
                lambda s: LoopRunner("await f()", {"f": aok}, is_async=True),
            ),
            Contender("ours: await policy.execute_async(fn)", "ours", _async_ours_execute),
            Contender("ours: @with_retry async", "ours", _async_ours_decorated),
            *(Contender(p.label, "peer", _async_peer(p), "decorated") for p in RETRY_PEERS),
        ],
        fastest_peer_target=Target("<=", 0.5),
        fastest_among=ASYNC_TARGET_PEERS,
        description="Target (issue 4): <= 0.5 x the fastest of tenacity and stamina.",
    )
