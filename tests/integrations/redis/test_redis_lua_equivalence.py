"""The Lua state machine of the Redis store against the breaker's own, on a real Redis.

The same sequences of outcomes (successes, failures, slow calls, calls that count as
nothing, probes held across other calls, time passing, operator actions) run
through a :class:`CircuitBreaker` on a fake clock and through the store's Lua
scripts, driven as the store's links drive them, on the same clock (the scripts'
optional clock argument). After every step both must be in the same state, with
the same retry time, counts and window; every transition the Lua makes must be in
:data:`TRANSITIONS`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

import redis_server
from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
)
from codomyrmex.service_mesh.circuit_breaker import TRANSITIONS
from codomyrmex.service_mesh.integrations.redis import RedisStore
from codomyrmex.service_mesh.integrations.redis.connection import text
from codomyrmex.service_mesh.integrations.redis.scripts import breaker_args, parse_reply
from codomyrmex.service_mesh.store import SharedState

pytestmark = pytest.mark.redis

redis_url = redis_server.redis_url

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
FORCED_OPEN, DISABLED = CircuitState.FORCED_OPEN, CircuitState.DISABLED
METRICS_ONLY = CircuitState.METRICS_ONLY

TICK_MS = 125
"""The clock moves in eighths of a second: exact in binary floats and in whole ms."""
START_S = 1_000_000
"""Where the clock starts, in whole seconds (time windows' buckets then agree)."""


class Boom(Exception):
    pass


class Cancelled(BaseException):
    """Neither a success nor a failure: frees the call's slot."""


class Clock:
    def __init__(self) -> None:
        self.ticks = 0

    def __call__(self) -> float:
        return START_S + self.ticks * TICK_MS / 1000

    @property
    def ms(self) -> int:
        return START_S * 1000 + self.ticks * TICK_MS


@dataclass
class Ticket:
    """A call the Lua side admitted: in which state, epoch and version, with which lease."""

    state: CircuitState
    epoch: int
    version: int
    lease: str
    start: int


class LuaBreaker:
    """The store's scripts for one breaker, called as a link calls them, on ``clock``."""

    _ids = itertools.count(1)

    def __init__(self, store: RedisStore, name: str, config: CircuitBreakerConfig, clock: Clock):
        self.store = store
        self.keys = store.keys(name)
        self.args = breaker_args(store, name, "model", config)[:-1]  # the clock comes last
        self.config = config
        self.clock = clock
        self.state = CLOSED
        self.epoch = 0  # the breaker's epoch: one more with every state entered
        self.transitions: list[tuple[CircuitState, CircuitState]] = []

    def run(self, script: Any, *op: str | int) -> tuple[SharedState, bool]:
        reply = script(keys=self.keys, args=[*self.args, self.clock.ms, *op])
        shared, _, granted = parse_reply(reply)
        if shared.state is not self.state:
            self.transitions.append((self.state, shared.state))
            self.state = shared.state
            self.epoch += 1
        return shared, granted

    def read(self) -> SharedState:
        return self.run(self.store._sync, "none", "")[0]

    def admit(self) -> Ticket | None:
        """Admission as the breaker and its link decide it (OPEN and HALF_OPEN ask Redis)."""
        shared = self.read()
        if shared.state in (CLOSED, DISABLED, METRICS_ONLY):
            return Ticket(shared.state, self.epoch, shared.version, "", self.clock.ticks)
        if shared.state is FORCED_OPEN:
            return None
        lease = f"lease-{next(self._ids)}"
        shared, granted = self.run(self.store._acquire, lease)
        if not granted:
            return None
        return Ticket(HALF_OPEN, self.epoch, shared.version, lease, self.clock.ticks)

    def finish(self, ticket: Ticket, outcome: str | bool) -> None:
        """Report an admitted call's outcome as the link does."""
        if outcome == "cancelled":
            if ticket.lease:
                self.store.client.zrem(self.keys[1], ticket.lease)
            return
        failed = outcome in ("fail", True)
        threshold = self.config.slow_call_duration_threshold
        duration = (self.clock.ticks - ticket.start) * TICK_MS / 1000
        slow = threshold is not None and duration > threshold
        if ticket.state is HALF_OPEN:  # the script itself ignores a probe of an older version
            verdict = "fail" if failed or slow else "ok"
            op = ("probe", ticket.lease, ticket.version, verdict, int(failed))
            self.run(self.store._record, *op)
            return
        if ticket.state is not CLOSED or self.epoch != ticket.epoch:
            return  # the breaker drops outcomes of a past epoch and of operator states
        if not self.config.windowed:
            self.run(self.store._record, "closed", int(not failed), int(failed), 0, 0, "")
            return
        counted = self.config.sliding_window_type == "count"
        code = str(int(failed) + 2 * int(slow)) if counted else ""  # as in lua/window.lua
        self.run(self.store._record, "closed", 0, int(failed), 1, int(slow), code)

    def record_manually(self, failed: bool) -> None:
        """``record_success`` / ``record_failure``: no slot, the breaker's state at the time."""
        shared = self.read()
        if shared.state is CLOSED:
            self.finish(Ticket(CLOSED, self.epoch, shared.version, "", self.clock.ticks), failed)
        elif shared.state is HALF_OPEN or (shared.state is OPEN and shared.retry_after == 0.0):
            op = ("probe", "", shared.version, "fail" if failed else "ok", int(failed))
            self.run(self.store._record, *op)

    def operate(self, state: CircuitState) -> None:
        epoch = self.epoch
        self.run(self.store._sync, "operate", state.value)
        self.epoch = epoch + 1  # an operator's action starts an epoch, even in the same state

    def window(self) -> tuple[int, int, int]:
        """The fleet's window now: calls, failures, slow calls."""
        client = self.store.client
        if self.config.sliding_window_type == "count":
            raw = client.hget(self.keys[2], "o")
            codes = [int(c) for c in text(raw or b"")]
            return len(codes), sum(c & 1 for c in codes), sum(c >> 1 for c in codes)
        second = self.clock.ms // 1000
        totals = {"c": 0, "f": 0, "s": 0}
        for field, value in client.hgetall(self.keys[2]).items():
            kind, at = text(field).split(":")
            if int(at) > second - self.config.sliding_window_size:
                totals[kind] += int(value)
        return totals["c"], totals["f"], totals["s"]


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[RedisStore]:
    """A store whose scripts the tests call directly (it is never bound, so no threads)."""
    prefix = f"test:lua-equivalence:{uuid.uuid4().hex[:8]}:"
    made = RedisStore(redis_url, prefix=prefix, probe_lease=1e6)
    yield made
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
        made.close()


def ticks(low: int, high: int) -> st.SearchStrategy[float]:
    return st.integers(low, high).map(lambda n: n * TICK_MS / 1000)


@st.composite
def configs(draw: st.DrawFn, mode: str) -> CircuitBreakerConfig:
    timeout = draw(ticks(0, 16))
    common: dict[str, Any] = {
        "success_threshold": draw(st.integers(1, 3)),
        "timeout_seconds": timeout,
        "half_open_max_calls": draw(st.integers(1, 3)),
        "open_backoff_multiplier": draw(st.sampled_from([1.0, 1.5, 2.0])),
        "max_open_seconds": draw(st.none() | ticks(0, 24).map(lambda extra: timeout + extra)),
    }
    if mode == "consecutive":
        return CircuitBreakerConfig(failure_threshold=draw(st.integers(1, 4)), **common)
    slow = draw(st.none() | ticks(0, 4))
    return CircuitBreakerConfig(
        failure_rate_threshold=draw(st.sampled_from([None, 25.0, 50.0, 100.0]))
        if slow is not None
        else draw(st.sampled_from([25.0, 50.0, 60.0, 100.0])),
        slow_call_duration_threshold=slow,
        slow_call_rate_threshold=draw(st.sampled_from([50.0, 100.0])),
        sliding_window_type=mode,  # type: ignore[arg-type]
        sliding_window_size=draw(st.integers(1, 6) if mode == "count" else st.integers(1, 4)),
        minimum_number_of_calls=draw(st.integers(1, 6)),
        **common,
    )


OUTCOMES = st.sampled_from(["ok", "ok", "fail", "fail", "cancelled"])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), OUTCOMES, st.integers(0, 40)),
        st.tuples(st.just("hold"), st.just(""), st.just(0)),
        st.tuples(st.just("end"), OUTCOMES, st.integers(0, 3)),
        st.tuples(st.just("advance"), st.just(""), st.integers(1, 48)),
        st.tuples(st.just("record"), st.sampled_from(["ok", "fail"]), st.just(0)),
        st.tuples(
            st.just("operate"),
            st.sampled_from([CLOSED, CLOSED, FORCED_OPEN, DISABLED, METRICS_ONLY]).map(
                lambda s: s.value
            ),
            st.just(0),
        ),
    ),
    min_size=10,
    max_size=50,
)

_names = itertools.count(1)


def run_python_call(cb: CircuitBreaker, clock: Clock, outcome: str, duration: int) -> bool:
    """One call through the breaker, taking ``duration`` ticks; whether it was admitted."""

    def call() -> None:
        clock.ticks += duration
        if outcome == "fail":
            raise Boom
        if outcome == "cancelled":
            raise Cancelled

    try:
        cb.execute(call)
    except CircuitOpenError:
        return False
    except (Boom, Cancelled):
        pass
    return True


def end_permit(permit: Any, outcome: str) -> None:
    if outcome == "ok":
        permit.__exit__(None, None, None)
    else:
        exc = Boom() if outcome == "fail" else Cancelled()
        permit.__exit__(type(exc), exc, None)


def check_agreement(cb: CircuitBreaker, lua: LuaBreaker, step: object) -> None:
    shared = lua.read()
    lua_state = shared.state
    if lua_state is OPEN and shared.retry_after == 0.0:
        lua_state = HALF_OPEN  # the breaker reads an expired OPEN as HALF_OPEN
    state = cb.state
    assert state is lua_state, step
    if state is OPEN:
        assert abs(cb.retry_after() - shared.retry_after) < 0.001, step
    if state in (CLOSED, OPEN, HALF_OPEN) and not cb.config.windowed:
        assert cb.failure_count == shared.failures, step
    if state is CLOSED and cb.config.windowed:
        metrics = cb.metrics
        assert lua.window() == (metrics["calls"], metrics["failures"], metrics["slow_calls"]), step
    for old, new in lua.transitions:
        assert new in TRANSITIONS[old], (old, new)


@pytest.mark.parametrize("mode", ["consecutive", "count", "time"])
def test_lua_and_python_breakers_agree_after_every_step(store: RedisStore, mode: str) -> None:
    @settings(max_examples=100, deadline=None)
    @given(config=configs(mode), steps=STEPS)
    def agree(config: CircuitBreakerConfig, steps: list[tuple[str, str, int]]) -> None:
        clock = Clock()
        name = f"eq-{next(_names)}"
        cb = CircuitBreaker(name, config, clock=clock)
        lua = LuaBreaker(store, name, config, clock)
        held: list[tuple[Any, Ticket]] = []
        for step in steps:
            kind, arg, n = step
            if kind == "call":
                ticket = lua.admit()
                admitted = run_python_call(cb, clock, arg, n)  # moves the clock if admitted
                assert admitted == (ticket is not None), step
                if ticket is not None:
                    lua.finish(ticket, arg)
            elif kind == "hold" and len(held) < 4:
                ticket = lua.admit()
                permit = cb.permit()
                try:
                    permit.__enter__()
                except CircuitOpenError:
                    assert ticket is None, step
                else:
                    assert ticket is not None, step
                    held.append((permit, ticket))
            elif kind == "end" and held:
                permit, ticket = held.pop(n % len(held))
                end_permit(permit, arg)
                lua.finish(ticket, arg)
            elif kind == "record":
                (cb.record_failure if arg == "fail" else cb.record_success)()
                lua.record_manually(arg == "fail")
            elif kind == "advance":
                clock.ticks += n
            elif kind == "operate":
                state = CircuitState(arg)
                {
                    CLOSED: cb.reset,
                    FORCED_OPEN: cb.force_open,
                    DISABLED: cb.disable,
                    METRICS_ONLY: cb.metrics_only,
                }[state]()
                lua.operate(state)
            check_agreement(cb, lua, step)

    agree()


# -- every transition the scripts can make, from every state --------------------------------


def test_every_transition_the_scripts_make_is_in_the_table(store: RedisStore) -> None:
    clock = Clock()
    config = CircuitBreakerConfig(failure_threshold=1, success_threshold=1, timeout_seconds=1.0)
    windowed = CircuitBreakerConfig(
        failure_rate_threshold=50.0, minimum_number_of_calls=1, success_threshold=1
    )
    operations: list[tuple[str, CircuitBreakerConfig, tuple[str | int, ...]]] = [
        ("_record", config, ("closed", 0, 1, 0, 0, "")),
        ("_record", config, ("closed", 1, 0, 0, 0, "")),
        ("_record", windowed, ("closed", 0, 1, 1, 0, "1")),
        ("_record", config, ("probe", "", 1, "ok", 0)),
        ("_record", config, ("probe", "", 1, "fail", 1)),
        ("_acquire", config, ("lease",)),
        ("_sync", config, ("open_if_closed", 1000)),
        ("_sync", config, ("none", "")),
        *(("_sync", config, ("operate", state.value)) for state in CircuitState),
    ]
    seen: set[tuple[CircuitState, CircuitState]] = set()
    for start in CircuitState:
        for due in (False, True):
            for script, cfg, op in operations:
                name = f"table-{next(_names)}"
                lua = LuaBreaker(store, name, cfg, clock)
                open_until = clock.ms + (-1 if due else 60_000)
                store.client.hset(
                    lua.keys[0],
                    mapping={
                        "state": start.value,
                        "version": 1,
                        "failures": 0,
                        "open_until": open_until,
                        "reopens": 0,
                        "probe_ok": 0,
                    },
                )
                lua.state = start
                lua.run(getattr(store, script), *op)
                for old, new in lua.transitions:
                    assert new in TRANSITIONS[old], (script, op, old, new)
                    seen.add((old, new))
    # the automatic transitions are all reachable through the scripts
    assert {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)} <= seen
