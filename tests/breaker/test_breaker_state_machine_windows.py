"""The window-mode breaker against a small reference model, by Hypothesis stateful testing.

Covers what the consecutive-mode machine (test_breaker_state_machine.py) does
not: count and time windows, minimum calls, slow calls, three-way
classification (failure / success / ignored), result predicates, open-state
backoff and the operator states. Calls are begun and ended by hand (a
``permit()`` or an ``execute_async`` coroutine stepped with ``send``), so any
interleaving of calls, time, operator actions and manual records is reachable;
a FakeClock moves only when a rule says so.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
)
from codomyrmex.service_mesh.breaker.state import TRANSITIONS
from conftest import FakeClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED
METRICS_ONLY = CircuitState.METRICS_ONLY

SLOW_AFTER = 2.0


class Boom(Exception):
    """Recorded: a failure."""


class Ignored(Exception):
    """In ``ignore_exceptions``: counts as nothing."""


class Benign(Exception):
    """Outside ``record_exceptions``: a success."""


BAD = "bad-result"  # what the result predicate calls a failure


# -- the reference model -------------------------------------------------------------------


@dataclass
class Model:
    """Issue 5's breaker, written independently: a window is a plain list, recounted."""

    window_type: str
    size: int
    minimum: int
    failure_rate: float | None
    slow_rate: float | None
    success_threshold: int
    max_probes: int
    timeout: float
    multiplier: float
    max_open: float | None
    state: CircuitState = CLOSED
    phase: int = 0
    probes: int = 0
    probe_successes: int = 0
    reopenings: int = 0
    open_until: float = 0.0
    calls: list[tuple[float, bool, bool]] = field(default_factory=list)  # (at, failed, slow)
    transitions: list[tuple[CircuitState, CircuitState]] = field(default_factory=list)

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        if self.window_type == "count":
            return self.calls[-self.size :]
        second = math.floor(now)
        return [c for c in self.calls if second - self.size < math.floor(c[0]) <= second]

    def _go(self, new: CircuitState, now: float) -> None:
        if new is not self.state:
            self.transitions.append((self.state, new))
        self.state = new
        self.phase += 1
        self.probes = 0
        self.probe_successes = 0
        if new is OPEN:
            wait = self.timeout * self.multiplier**self.reopenings
            if self.max_open is not None:
                wait = min(wait, max(self.max_open, self.timeout))
            self.open_until = now + wait
        elif new is CLOSED:
            self.calls = []
            self.reopenings = 0

    def refresh(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self._go(HALF_OPEN, now)

    def would_admit(self, now: float) -> bool:
        self.refresh(now)
        if self.state in (CLOSED, DISABLED, METRICS_ONLY):
            return True
        if self.state is HALF_OPEN:
            return self.probes < self.max_probes
        return False

    def admit(self, now: float) -> tuple[bool, CircuitState, float]:
        """(admitted, state of the rejection, its retry_after)."""
        if self.would_admit(now):
            if self.state is HALF_OPEN:
                self.probes += 1
            return True, self.state, 0.0
        if self.state is OPEN:
            return False, OPEN, self.open_until - now
        if self.state is HALF_OPEN:
            return False, HALF_OPEN, 0.0
        return False, FORCED_OPEN, math.inf

    def outcome(self, failed: bool, slow: bool, now: float) -> None:
        state = self.state
        if state in (DISABLED, OPEN, FORCED_OPEN):
            return
        if state is HALF_OPEN:
            if failed or slow:
                self.reopenings += 1
                self._go(OPEN, now)
            else:
                self.probe_successes += 1
                if self.probe_successes >= self.success_threshold:
                    self._go(CLOSED, now)
            return
        self.calls.append((now, failed, slow))
        window = self.window(now)
        minimum = min(self.minimum, self.size) if self.window_type == "count" else self.minimum
        if state is CLOSED and len(window) >= minimum:
            failures = 100.0 * sum(c[1] for c in window) / len(window)
            slows = 100.0 * sum(c[2] for c in window) / len(window)
            if (self.failure_rate is not None and failures >= self.failure_rate) or (
                self.slow_rate is not None and slows >= self.slow_rate
            ):
                self._go(OPEN, now)

    def end(self, phase: int, verdict: str, slow: bool, now: float) -> None:
        """A call admitted in ``phase`` ended: ``verdict`` is failure, success or ignored."""
        if phase != self.phase:
            return  # admitted under an earlier state
        if self.state is HALF_OPEN:
            self.probes -= 1
        if verdict != "ignored":
            self.outcome(verdict == "failure", slow, now)

    def manual(self, failed: bool, now: float) -> None:
        self.refresh(now)
        self.outcome(failed, False, now)

    def operate(self, new: CircuitState, now: float) -> None:
        self._go(new, now)
        self.calls = []
        self.reopenings = 0


# -- driving the real breaker ---------------------------------------------------------------


class Suspend:
    def __await__(self) -> Generator[None, None, None]:
        yield None


RESULTS = ["success", "failure", "ignored", "benign", "bad-result", "interrupt"]


def verdict_of(kind: str, result: str) -> str:
    """How the breaker must classify ``result`` of a call of ``kind``."""
    if result in ("failure",) or (result == "bad-result" and kind == "execute_async"):
        return "failure"
    if result in ("ignored", "interrupt"):
        return "ignored"
    return "success"  # success, benign, and bad-result through a permit (no result to judge)


class Call:
    """One admitted, unfinished call."""

    def __init__(self, kind: str, cb: CircuitBreaker, phase: int, started: float) -> None:
        self.kind = kind
        self.phase = phase
        self.started = started
        self.result = "success"
        self.permit: Any = None
        self.coro: Coroutine[Any, Any, Any] | None = None
        if kind == "permit":
            self.permit = cb.permit()
            self.permit.__enter__()
        else:

            async def body() -> str:
                await Suspend()
                return self._finish()

            self.coro = cb.execute_async(body)
            try:
                self.coro.send(None)
            except BaseException:
                self.coro = None
                raise

    def _finish(self) -> str:
        raise_for = {"failure": Boom, "ignored": Ignored, "benign": Benign}
        if self.result in raise_for:
            raise raise_for[self.result]()
        if self.result == "interrupt":
            raise asyncio.CancelledError
        return BAD if self.result == "bad-result" else "value"

    def end(self, result: str) -> None:
        self.result = result
        if self.coro is not None:
            coro, self.coro = self.coro, None
            if result == "success":
                with pytest.raises(StopIteration):
                    coro.send(None)
            elif result == "bad-result":
                with pytest.raises(StopIteration) as stop:
                    coro.send(None)
                assert stop.value.value == BAD  # returned to the caller, only counted as failed
            else:
                with pytest.raises(BaseException):
                    coro.send(None)
            return
        try:
            self._finish()
        except BaseException as exc:
            self.permit.__exit__(type(exc), exc, None)
        else:
            self.permit.__exit__(None, None, None)

    def abandon(self) -> None:
        if self.coro is not None:
            self.coro.close()


class WindowedBreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.calls: list[Call] = []
        self.events: list[tuple[CircuitState, CircuitState]] = []
        self.cb: CircuitBreaker
        self.model: Model

    @initialize(
        window_type=st.sampled_from(["count", "time"]),
        size=st.integers(1, 5),
        minimum=st.integers(1, 6),
        rates=st.sampled_from([(50.0, None), (100.0, None), (None, 50.0), (50.0, 100.0)]),
        success_threshold=st.integers(1, 2),
        max_probes=st.integers(1, 2),
        timeout=st.sampled_from([0.0, 1.0, 3.0]),
        multiplier=st.sampled_from([1.0, 2.0]),
        max_open=st.sampled_from([None, 5.0]),
    )
    def setup(
        self,
        window_type: str,
        size: int,
        minimum: int,
        rates: tuple[float | None, float | None],
        success_threshold: int,
        max_probes: int,
        timeout: float,
        multiplier: float,
        max_open: float | None,
    ) -> None:
        failure_rate, slow_rate = rates
        config = CircuitBreakerConfig(
            failure_rate_threshold=failure_rate,
            slow_call_duration_threshold=SLOW_AFTER if slow_rate is not None else None,
            slow_call_rate_threshold=slow_rate if slow_rate is not None else 100.0,
            sliding_window_type=window_type,  # type: ignore[arg-type]
            sliding_window_size=size,
            minimum_number_of_calls=minimum,
            success_threshold=success_threshold,
            half_open_max_calls=max_probes,
            timeout_seconds=timeout,
            open_backoff_multiplier=multiplier,
            max_open_seconds=max_open,
            record_exceptions=(Boom, Ignored),
            ignore_exceptions=(Ignored,),
            result_predicate=lambda result: result == BAD,
        )
        self.cb = CircuitBreaker(
            "model",
            config,
            clock=self.clock,
            on_state_change=lambda b, old, new: self.events.append((old, new)),
        )
        self.model = Model(
            window_type,
            size,
            minimum,
            50.0 if failure_rate is None else failure_rate,  # the default rate when slow-only
            slow_rate,
            success_threshold,
            max_probes,
            timeout,
            multiplier,
            max_open,
        )

    # -- rules ----------------------------------------------------------------------------

    @rule(kind=st.sampled_from(["permit", "execute_async"]))
    def begin(self, kind: str) -> None:
        now = self.clock.now
        admitted, state, retry_after = self.model.admit(now)
        try:
            call = Call(kind, self.cb, self.model.phase, now)
        except CircuitOpenError as error:
            assert not admitted, "the breaker rejected a call the model admits"
            assert error.state is state
            assert error.retry_after == pytest.approx(retry_after)
            return
        assert admitted, "the breaker admitted a call the model rejects"
        self.calls.append(call)

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), result=st.sampled_from(RESULTS))
    def end(self, data: st.DataObject, result: str) -> None:
        call = self.calls.pop(data.draw(st.integers(0, len(self.calls) - 1), label="call"))
        call.end(result)
        now = self.clock.now
        slow = self.model.slow_rate is not None and now - call.started > SLOW_AFTER
        self.model.end(call.phase, verdict_of(call.kind, result), slow, now)

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 3.5, 7.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(failed=st.booleans())
    def record_manually(self, failed: bool) -> None:
        (self.cb.record_failure if failed else self.cb.record_success)()
        self.model.manual(failed, self.clock.now)

    # Half the draws do nothing: an operator action makes every call in flight stale,
    # so at full rate it would crowd out the automatic transitions.
    @rule(action=st.sampled_from([None] * 4 + ["force_open", "disable", "metrics_only", "reset"]))
    def operate(self, action: str | None) -> None:
        if action is None:
            return
        getattr(self.cb, action)()
        target = {
            "force_open": FORCED_OPEN,
            "disable": DISABLED,
            "metrics_only": METRICS_ONLY,
            "reset": CLOSED,
        }[action]
        self.model.operate(target, self.clock.now)

    # -- checks ---------------------------------------------------------------------------

    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "model"):
            return
        now = self.clock.now
        model = self.model
        would_admit = model.would_admit(now)
        assert self.cb.state is model.state
        assert self.cb.half_open_in_flight == (model.probes if model.state is HALF_OPEN else 0)
        assert self.cb.can_execute() is would_admit
        window = model.window(now)
        metrics = self.cb.metrics
        assert metrics["calls"] == len(window)
        assert metrics["failures"] == sum(c[1] for c in window)
        assert metrics["slow_calls"] == sum(c[2] for c in window)
        assert self.cb.failure_count == metrics["failures"]
        if model.state is OPEN:
            assert self.cb.retry_after() == pytest.approx(model.open_until - now)
        elif model.state is FORCED_OPEN:
            assert self.cb.retry_after() == math.inf
        else:
            assert self.cb.retry_after() == 0.0
        assert self.events == model.transitions
        assert all(new in TRANSITIONS[old] for old, new in self.events)

    def teardown(self) -> None:
        for call in self.calls:
            call.abandon()


WindowedBreakerMachine.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWindowedBreakerMachine = WindowedBreakerMachine.TestCase
