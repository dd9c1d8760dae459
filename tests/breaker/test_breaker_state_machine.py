"""The circuit breaker against a small reference model, by Hypothesis stateful testing.

Calls are driven through the slot protocol without threads: a ``permit()``
entered and exited by hand, an ``async with cb.permit()`` stepped by hand, or
an ``execute_async`` coroutine stepped with ``send``/``throw`` (no event loop),
so any interleaving of begin / end / time / manual records / reset is reachable.
Sync ``execute`` calls run and end within one step. After every step the
breaker's state, failure count, probes in flight, ``can_execute()``,
``retry_after()`` and the transitions its listener saw must match the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


class Boom(Exception):
    pass


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the reference model -------------------------------------------------------------


@dataclass
class Model:
    """The issue's semantics, written independently of the implementation.

    ``phase`` numbers the stretches between transitions (and resets): a call's
    result counts only if the breaker is still in the phase that admitted it.
    """

    failure_threshold: int
    success_threshold: int
    timeout: float
    max_probes: int
    state: CircuitState = CLOSED
    phase: int = 0
    failures: int = 0
    probe_successes: int = 0
    probes: int = 0
    open_until: float = 0.0
    last_failure: float | None = None
    transitions: list[tuple[CircuitState, CircuitState]] = field(default_factory=list)

    def _go(self, new: CircuitState, now: float) -> None:
        if new is not self.state:
            self.transitions.append((self.state, new))
        self.state = new
        self.phase += 1
        self.probes = 0
        self.probe_successes = 0
        if new is OPEN:
            self.open_until = now + self.timeout
        if new is CLOSED:
            self.failures = 0

    def refresh(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self._go(HALF_OPEN, now)

    def would_admit(self, now: float) -> bool:
        self.refresh(now)
        if self.state is CLOSED:
            return True
        if self.state is HALF_OPEN:
            return self.probes < self.max_probes
        return False

    def admit(self, now: float) -> tuple[bool, float, CircuitState]:
        """(admitted, retry_after of the rejection, state of the rejection)."""
        if self.would_admit(now):
            if self.state is HALF_OPEN:
                self.probes += 1
            return True, 0.0, self.state
        if self.state is OPEN:
            return False, self.open_until - now, OPEN
        return False, 0.0, HALF_OPEN

    def outcome(self, success: bool, now: float) -> None:
        if success:
            if self.state is CLOSED:
                self.failures = 0
            elif self.state is HALF_OPEN:
                self.probe_successes += 1
                if self.probe_successes >= self.success_threshold:
                    self._go(CLOSED, now)
            return
        self.last_failure = now
        if self.state is CLOSED:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self._go(OPEN, now)
        elif self.state is HALF_OPEN:
            self.failures += 1
            self._go(OPEN, now)

    def end(self, phase: int, result: str, now: float) -> None:
        if phase != self.phase:
            return  # admitted under an earlier state: not a result of this one
        if self.state is HALF_OPEN:
            self.probes -= 1
        if result != "interrupt":
            self.outcome(result == "success", now)

    def manual(self, success: bool, now: float) -> None:
        self.refresh(now)
        self.outcome(success, now)

    def reset(self, now: float) -> None:
        self._go(CLOSED, now)
        self.failures = 0


# -- driving the real breaker without threads ------------------------------------------


class Suspend:
    """An awaitable that yields control once, so a coroutine can be paused mid-call."""

    def __await__(self) -> Generator[None, None, None]:
        yield None


class Call:
    """One admitted, unfinished call through the real breaker."""

    def __init__(self, kind: str, cb: CircuitBreaker, phase: int) -> None:
        self.kind = kind
        self.phase = phase
        self.result = "success"
        self.permit: Any = None
        self.coro: Coroutine[Any, Any, Any] | None = None
        if kind == "permit":
            self.permit = cb.permit()
            self.permit.__enter__()
        elif kind == "async-permit":
            self.permit = cb.permit()
            finish(self.permit.__aenter__())
        else:

            async def body() -> str:
                await Suspend()
                if self.result == "failure":
                    raise Boom
                return "value"

            self.coro = cb.execute_async(body)
            try:
                self.coro.send(None)  # admission happens here; CircuitOpenError escapes
            except BaseException:
                self.coro = None
                raise

    def end(self, result: str) -> None:
        self.result = result
        exc: BaseException | None = None
        if result == "failure":
            exc = Boom()
        elif result == "interrupt":
            exc = asyncio.CancelledError() if self.kind == "execute_async" else KeyboardInterrupt()
        if self.coro is not None:
            coro, self.coro = self.coro, None
            if result == "interrupt":
                assert exc is not None
                with pytest.raises(type(exc)):
                    coro.throw(exc)
            elif result == "failure":
                with pytest.raises(Boom):
                    coro.send(None)
            else:
                with pytest.raises(StopIteration) as stop:
                    coro.send(None)
                assert stop.value.value == "value"
        elif self.kind == "permit":
            self.permit.__exit__(type(exc) if exc else None, exc, None)
        else:
            finish(self.permit.__aexit__(type(exc) if exc else None, exc, None))

    def abandon(self) -> None:
        if self.coro is not None:
            self.coro.close()


def finish(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to completion, without an event loop."""
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    return stop.value.value


KINDS = ["permit", "async-permit", "execute_async"]
RESULTS = ["success", "failure", "interrupt"]


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.calls: list[Call] = []
        self.events: list[tuple[CircuitState, CircuitState]] = []
        self.cb: CircuitBreaker
        self.model: Model

    @initialize(
        failure_threshold=st.integers(1, 3),
        success_threshold=st.integers(1, 3),
        timeout=st.sampled_from([0.0, 1.0, 5.0]),
        max_probes=st.integers(1, 3),
    )
    def setup(
        self, failure_threshold: int, success_threshold: int, timeout: float, max_probes: int
    ) -> None:
        config = CircuitBreakerConfig(
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            timeout_seconds=timeout,
            half_open_max_calls=max_probes,
        )
        self.cb = CircuitBreaker(
            "model",
            config,
            clock=self.clock,
            on_state_change=lambda b, old, new: self.events.append((old, new)),
        )
        self.model = Model(failure_threshold, success_threshold, timeout, max_probes)

    # -- rules ------------------------------------------------------------------------

    @rule(kind=st.sampled_from(KINDS))
    def begin(self, kind: str) -> None:
        now = self.clock.now
        admitted, retry_after, state = self.model.admit(now)
        try:
            call = Call(kind, self.cb, self.model.phase)
        except CircuitOpenError as error:
            assert not admitted, "the breaker rejected a call the model admits"
            assert error.state is state
            assert error.retry_after == pytest.approx(retry_after)
            assert error.name == "model"
            return
        assert admitted, "the breaker admitted a call the model rejects"
        self.calls.append(call)

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), result=st.sampled_from(RESULTS))
    def end(self, data: st.DataObject, result: str) -> None:
        index = data.draw(st.integers(0, len(self.calls) - 1), label="call")
        call = self.calls.pop(index)
        call.end(result)
        self.model.end(call.phase, result, self.clock.now)

    @rule(result=st.sampled_from(RESULTS))
    def execute_now(self, result: str) -> None:
        """A sync ``execute`` whose function runs and ends at once."""
        now = self.clock.now
        admitted, _, state = self.model.admit(now)
        ran: list[bool] = []

        def fn() -> str:
            ran.append(True)
            if result == "failure":
                raise Boom
            if result == "interrupt":
                raise KeyboardInterrupt
            return "value"

        try:
            assert self.cb.execute(fn) == "value"
        except CircuitOpenError as error:
            assert not admitted, "the breaker rejected a call the model admits"
            assert error.state is state
            assert ran == [], "a rejected call must not run"
            return
        except (Boom, KeyboardInterrupt):
            pass
        assert admitted, "the breaker admitted a call the model rejects"
        assert ran == [True]
        self.model.end(self.model.phase, result, now)

    @rule(kind=st.sampled_from(KINDS), result=st.sampled_from(RESULTS))
    def begin_and_end(self, kind: str, result: str) -> None:
        """A call through the slot protocol that ends before anything else happens."""
        now = self.clock.now
        admitted, _, _ = self.model.admit(now)
        try:
            call = Call(kind, self.cb, self.model.phase)
        except CircuitOpenError:
            assert not admitted, "the breaker rejected a call the model admits"
            return
        assert admitted, "the breaker admitted a call the model rejects"
        call.end(result)
        self.model.end(call.phase, result, now)

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def wait_out_timeout(self) -> None:
        """Advance exactly to the end of the open period (the boundary matters)."""
        self.clock.now += self.model.timeout

    @rule()
    def trip(self) -> None:
        """Record failures until the breaker opens (reaching HALF_OPEN takes many steps)."""
        for _ in range(self.model.failure_threshold):
            self.cb.record_failure()
            self.model.manual(False, self.clock.now)

    @rule(seconds=st.sampled_from([1.0, 5.0]), success=st.booleans())
    def advance_then_record(self, seconds: float, success: bool) -> None:
        """Move time and record at once: the lazy OPEN -> HALF_OPEN step must come first."""
        self.clock.now += seconds
        if success:
            self.record_success()
        else:
            self.record_failure()

    @rule(seconds=st.sampled_from([1.0, 5.0]), kind=st.sampled_from(KINDS))
    def advance_then_begin(self, seconds: float, kind: str) -> None:
        self.clock.now += seconds
        self.begin(kind)

    @rule()
    def record_success(self) -> None:
        self.cb.record_success()
        self.model.manual(True, self.clock.now)

    @rule()
    def record_failure(self) -> None:
        self.cb.record_failure()
        self.model.manual(False, self.clock.now)

    @rule()
    def reset(self) -> None:
        self.cb.reset()
        self.model.reset(self.clock.now)

    # -- checks -------------------------------------------------------------------------

    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "model"):
            return
        now = self.clock.now
        model = self.model
        would_admit = model.would_admit(now)  # also makes the model's lazy transition
        assert self.cb.state is model.state
        assert self.cb.half_open_in_flight == (model.probes if model.state is HALF_OPEN else 0)
        in_flight = self.cb.half_open_in_flight
        assert self.cb.can_execute() is would_admit
        assert self.cb.half_open_in_flight == in_flight, "can_execute() took a slot"
        if model.state is CLOSED:
            assert self.cb.failure_count == model.failures
        else:
            assert self.cb.failure_count >= model.failure_threshold
        if model.state is OPEN:
            assert self.cb.retry_after() == pytest.approx(model.open_until - now)
        else:
            assert self.cb.retry_after() == 0.0
        assert (self.cb.last_failure_time is None) is (model.last_failure is None)
        assert self.events == model.transitions

    def teardown(self) -> None:
        for call in self.calls:
            call.abandon()


BreakerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerMachine = BreakerMachine.TestCase
