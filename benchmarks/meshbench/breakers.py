"""Circuit breaker workloads: success path, rejection while OPEN, 8 threads, memory, async."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .harness import (
    BenchSetupError,
    Contender,
    LoopRunner,
    MemoryRunner,
    Role,
    Runner,
    Settings,
    Target,
    ThreadRunner,
    Workload,
)
from .peers import BREAKER_PEERS, LONG_OPEN_S, BreakerPeer, make_memory_makers, ours, unique

SUCCESS_THRESHOLD = 5  # the spec's default failure_threshold, for the success paths
OPEN_THRESHOLD = 1


class Boom(Exception):
    """The failure every protected function raises in the OPEN workloads."""


def fn() -> None:
    return None


async def afn() -> None:
    return None


def boom() -> None:
    raise Boom


async def aboom() -> None:
    raise Boom


def _check_returns(call: Callable[[], object]) -> None:
    result = call()
    if result is not None:
        raise BenchSetupError(f"expected None from the success path, got {result!r}")


def _expect_rejection(call: Callable[[], object], error: type[BaseException]) -> None:
    try:
        call()
    except error:
        return
    except Exception as exc:
        raise BenchSetupError(f"expected {error.__name__} while OPEN, got {exc!r}") from exc
    raise BenchSetupError("call returned normally although the breaker should be OPEN")


async def _aexpect_rejection(
    call: Callable[[], Awaitable[object]], error: type[BaseException]
) -> None:
    try:
        await call()
    except error:
        return
    except Exception as exc:
        raise BenchSetupError(f"expected {error.__name__} while OPEN, got {exc!r}") from exc
    raise BenchSetupError("call returned normally although the breaker should be OPEN")


def _trip(call: Callable[[], object], times: int) -> None:
    for _ in range(times):
        try:
            call()
        except Exception:
            pass


async def _atrip(call: Callable[[], Awaitable[object]], times: int) -> None:
    for _ in range(times):
        try:
            await call()
        except Exception:
            pass


def _ours_breaker(threshold: int) -> Any:
    sm = ours()
    config = sm.CircuitBreakerConfig(failure_threshold=threshold, timeout_seconds=LONG_OPEN_S)
    return sm.CircuitBreaker(unique("cb"), config)


def _ours_decorated(target: Callable[..., Any], threshold: int) -> Callable[..., Any]:
    sm = ours()
    config = sm.CircuitBreakerConfig(failure_threshold=threshold, timeout_seconds=LONG_OPEN_S)
    wrapped: Callable[..., Any] = sm.with_circuit_breaker(unique("deco"), config=config)(target)
    return wrapped


# --------------------------------------------------------------------------- 1 success path


def _success_ref(settings: Settings) -> Runner:
    return LoopRunner("fn()", {"fn": fn})


def _success_ours_execute(settings: Settings) -> Runner:
    cb = _ours_breaker(SUCCESS_THRESHOLD)
    _check_returns(lambda: cb.execute(fn))
    return LoopRunner("cb.execute(fn)", {"cb": cb, "fn": fn})


def _success_ours_decorated(settings: Settings) -> Runner:
    f = _ours_decorated(fn, SUCCESS_THRESHOLD)
    _check_returns(f)
    return LoopRunner("f()", {"f": f})


def _success_peer(peer: BreakerPeer) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        f = peer.decorate(fn, unique(peer.label), SUCCESS_THRESHOLD)
        _check_returns(f)
        return LoopRunner("f()", {"f": f})

    return build


def breaker_success() -> Workload:
    peers = [p for p in BREAKER_PEERS if p.sync]
    return Workload(
        key="breaker_success",
        title="1. Breaker success path (CLOSED, fn returns at once)",
        unit="ns/call",
        contenders=[
            Contender("bare fn() call", "ref", _success_ref, "the floor: no breaker"),
            Contender("ours: cb.execute(fn)", "ours", _success_ours_execute),
            Contender("ours: @with_circuit_breaker", "ours", _success_ours_decorated),
            *(Contender(p.label, "peer", _success_peer(p), "decorated") for p in peers),
        ],
        targets={"circuitbreaker": Target("<=", 0.35), "pybreaker": Target("<=", 0.15)},
    )


# --------------------------------------------------------------------------- 2 OPEN


_REJECT_STMT = """
try:
    {call}
except E:
    pass
"""

# For a peer that re-raises one exception object: drop the traceback it accumulates,
# which would otherwise grow without bound and slow every later rejection.
_REJECT_CLEAR_STMT = """
try:
    {call}
except E as exc:
    exc.__traceback__ = None
"""

CLEARED_NOTE = "re-raises one error object; its traceback is cleared each call"


def _reject_stmt(peer: BreakerPeer, call: str) -> str:
    return (_REJECT_CLEAR_STMT if peer.reraises_one_error else _REJECT_STMT).format(call=call)


def _open_note(peer: BreakerPeer) -> str:
    return CLEARED_NOTE if peer.reraises_one_error else "decorated"


def _open_ours_execute(settings: Settings) -> Runner:
    sm = ours()
    cb = _ours_breaker(OPEN_THRESHOLD)
    _trip(lambda: cb.execute(boom), OPEN_THRESHOLD)
    _expect_rejection(lambda: cb.execute(boom), sm.CircuitOpenError)
    stmt = _REJECT_STMT.format(call="cb.execute(boom)")
    return LoopRunner(stmt, {"cb": cb, "boom": boom, "E": sm.CircuitOpenError})


def _open_ours_decorated(settings: Settings) -> Runner:
    sm = ours()
    f = _ours_decorated(boom, OPEN_THRESHOLD)
    _trip(f, OPEN_THRESHOLD)
    _expect_rejection(f, sm.CircuitOpenError)
    return LoopRunner(_REJECT_STMT.format(call="f()"), {"f": f, "E": sm.CircuitOpenError})


def _open_peer(peer: BreakerPeer) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        error = peer.open_error()
        f = peer.decorate(boom, unique(peer.label), OPEN_THRESHOLD)
        _trip(f, OPEN_THRESHOLD)
        _expect_rejection(f, error)
        return LoopRunner(_reject_stmt(peer, "f()"), {"f": f, "E": error})

    return build


def breaker_open() -> Workload:
    peers = [p for p in BREAKER_PEERS if p.sync]
    return Workload(
        key="breaker_open",
        title="2. Breaker rejection while OPEN (raise + catch the open error)",
        unit="ns/call",
        contenders=[
            Contender("ours: cb.execute(fn)", "ours", _open_ours_execute),
            Contender("ours: @with_circuit_breaker", "ours", _open_ours_decorated),
            *(Contender(p.label, "peer", _open_peer(p), _open_note(p)) for p in peers),
        ],
        targets={"circuitbreaker": Target("<=", 0.5)},
    )


# --------------------------------------------------------------------------- 3 threads


def _threads_ours_execute(settings: Settings) -> Runner:
    cb = _ours_breaker(SUCCESS_THRESHOLD)
    _check_returns(lambda: cb.execute(fn))
    return ThreadRunner("cb.execute(fn)", {"cb": cb, "fn": fn}, threads=settings.threads)


def _threads_ours_decorated(settings: Settings) -> Runner:
    f = _ours_decorated(fn, SUCCESS_THRESHOLD)
    _check_returns(f)
    return ThreadRunner("f()", {"f": f}, threads=settings.threads)


def _threads_peer(peer: BreakerPeer) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        f = peer.decorate(fn, unique(peer.label), SUCCESS_THRESHOLD)
        _check_returns(f)
        return ThreadRunner("f()", {"f": f}, threads=settings.threads)

    return build


def breaker_threads() -> Workload:
    peers = [p for p in BREAKER_PEERS if p.sync]
    return Workload(
        key="breaker_threads",
        title="3. Eight threads calling one shared breaker (total throughput)",
        unit="calls/s",
        contenders=[
            Contender("ours: cb.execute(fn)", "ours", _threads_ours_execute),
            Contender("ours: @with_circuit_breaker", "ours", _threads_ours_decorated),
            *(Contender(p.label, "peer", _threads_peer(p), "decorated") for p in peers),
        ],
        targets={"circuitbreaker": Target(">=", 2.0), "pybreaker": Target(">=", 10.0)},
    )


# --------------------------------------------------------------------------- 8 memory


def _memory(key: str, make_factory: Callable[[], Callable[[str], object]]) -> Contender:
    def build(settings: Settings) -> Runner:
        return MemoryRunner(make_factory(), prefix=unique(f"mem-{key}"))

    role: Role = "ours" if key == "ours" else "peer"
    label = "ours: CircuitBreaker(name)" if key == "ours" else key
    note = "factory registry" if key == "purgatory" else ""
    return Contender(label, role, build, note)


def breaker_memory() -> Workload:
    return Workload(
        key="breaker_memory",
        title="8. Memory of idle breakers (tracemalloc, per breaker)",
        unit="B/breaker",
        contenders=[_memory(key, make) for key, make in make_memory_makers().items()],
        targets={"pybreaker": Target("<=", 1.0)},
    )


# --------------------------------------------------------------------------- async


def _async_ref(settings: Settings) -> Runner:
    return LoopRunner("await afn()", {"afn": afn}, is_async=True)


def _async_ours_execute(settings: Settings) -> Runner:
    cb = _ours_breaker(SUCCESS_THRESHOLD)
    runner = LoopRunner("await cb.execute_async(afn)", {"cb": cb, "afn": afn}, is_async=True)
    result = runner.run_coro(cb.execute_async(afn))
    if result is not None:
        raise BenchSetupError(f"expected None, got {result!r}")
    return runner


def _async_ours_decorated(settings: Settings) -> Runner:
    f = _ours_decorated(afn, SUCCESS_THRESHOLD)
    runner = LoopRunner("await f()", {"f": f}, is_async=True)
    if runner.run_coro(f()) is not None:
        raise BenchSetupError("expected None from the decorated coroutine")
    return runner


def _async_peer(peer: BreakerPeer) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        f = peer.decorate(afn, unique(peer.label), SUCCESS_THRESHOLD)
        runner = LoopRunner("await f()", {"f": f}, is_async=True)
        if runner.run_coro(f()) is not None:
            raise BenchSetupError("expected None from the decorated coroutine")
        return runner

    return build


def _async_open_ours(settings: Settings) -> Runner:
    sm = ours()
    cb = _ours_breaker(OPEN_THRESHOLD)
    stmt = _REJECT_STMT.format(call="await cb.execute_async(aboom)")
    runner = LoopRunner(stmt, {"cb": cb, "aboom": aboom, "E": sm.CircuitOpenError}, is_async=True)
    runner.run_coro(_atrip(lambda: cb.execute_async(aboom), OPEN_THRESHOLD))
    runner.run_coro(_aexpect_rejection(lambda: cb.execute_async(aboom), sm.CircuitOpenError))
    return runner


def _async_open_peer(peer: BreakerPeer) -> Callable[[Settings], Runner]:
    def build(settings: Settings) -> Runner:
        error = peer.open_error()
        f = peer.decorate(aboom, unique(peer.label), OPEN_THRESHOLD)
        runner = LoopRunner(_reject_stmt(peer, "await f()"), {"f": f, "E": error}, is_async=True)
        runner.run_coro(_atrip(f, OPEN_THRESHOLD))
        runner.run_coro(_aexpect_rejection(f, error))
        return runner

    return build


ASYNC_TARGET_PEERS = ("aiobreaker", "purgatory")


def async_breaker_success() -> Workload:
    peers = [p for p in BREAKER_PEERS if p.is_async]
    return Workload(
        key="async_breaker_success",
        title="A1. Async breaker success path (await, CLOSED)",
        unit="ns/call",
        contenders=[
            Contender("bare await afn()", "ref", _async_ref, "the floor: no breaker"),
            Contender("ours: await cb.execute_async(fn)", "ours", _async_ours_execute),
            Contender("ours: @with_circuit_breaker async", "ours", _async_ours_decorated),
            *(Contender(p.label, "peer", _async_peer(p), "decorated") for p in peers),
        ],
        fastest_peer_target=Target("<=", 0.5),
        fastest_among=ASYNC_TARGET_PEERS,
        description="Target (issue 4): <= 0.5 x the fastest of aiobreaker and purgatory.",
    )


def async_breaker_open() -> Workload:
    peers = [p for p in BREAKER_PEERS if p.is_async]
    return Workload(
        key="async_breaker_open",
        title="A2. Async breaker rejection while OPEN",
        unit="ns/call",
        contenders=[
            Contender("ours: await cb.execute_async(fn)", "ours", _async_open_ours),
            *(Contender(p.label, "peer", _async_open_peer(p), _open_note(p)) for p in peers),
        ],
        description="No target; informational.",
    )
