"""Circuit breaker semantics, once per flavour (sync, asyncio, uvloop) where there is a twin.

Time is a FakeClock: nothing here sleeps to move time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    ServiceMeshError,
)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
LOGGER = "codomyrmex.service_mesh"


class Boom(Exception):
    """A failure raised by the protected function."""


def make(clock: Any, name: str = "svc", **config: Any) -> CircuitBreaker:
    return CircuitBreaker(name, CircuitBreakerConfig(**config), clock=clock)


def ok(value: Any = "ok") -> Any:
    return value


def boom() -> None:
    raise Boom("down")


def fail(flavour: Any, cb: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            flavour.breaker(cb, boom)


def open_breaker(cb: CircuitBreaker) -> None:
    for _ in range(cb.config.failure_threshold):
        cb.record_failure()
    assert cb.state is OPEN


def half_open(cb: CircuitBreaker, clock: Any) -> None:
    open_breaker(cb)
    clock.advance(cb.config.timeout_seconds)
    assert cb.state is HALF_OPEN


def run(loop_factory: Any, coro: Any) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


class Spy:
    """A protected function that counts its calls."""

    def __init__(self, result: Any = "ok") -> None:
        self.calls = 0
        self.result = result

    def __call__(self) -> Any:
        self.calls += 1
        return self.result


# -- configuration -------------------------------------------------------------


def test_config_defaults_match_the_spec() -> None:
    config = CircuitBreakerConfig()
    assert (
        config.failure_threshold,
        config.success_threshold,
        config.timeout_seconds,
        config.half_open_max_calls,
    ) == (5, 2, 30.0, 3)
    assert CircuitBreaker("svc").config == config


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("failure_threshold", 0, ValueError),
        ("failure_threshold", -3, ValueError),
        ("failure_threshold", 2.5, TypeError),
        ("failure_threshold", True, TypeError),
        ("failure_threshold", "5", TypeError),
        ("success_threshold", 0, ValueError),
        ("success_threshold", None, TypeError),
        ("half_open_max_calls", 0, ValueError),
        ("half_open_max_calls", 1.0, TypeError),
        ("timeout_seconds", -0.5, ValueError),
        ("timeout_seconds", float("nan"), ValueError),
        ("timeout_seconds", float("inf"), ValueError),
        ("timeout_seconds", "30", TypeError),
        ("timeout_seconds", False, TypeError),
    ],
)
def test_bad_config_names_field_and_value(field: str, value: Any, error: type) -> None:
    with pytest.raises(error) as info:
        CircuitBreakerConfig(**{field: value})
    message = str(info.value)
    assert field in message
    assert repr(value) in message


def test_config_accepts_boundary_values() -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1, success_threshold=1, timeout_seconds=0, half_open_max_calls=1
    )
    assert config.timeout_seconds == 0


def test_config_is_frozen() -> None:
    config = CircuitBreakerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.failure_threshold = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"name": ""}, ValueError, ["name", "''"]),
        ({"name": 7}, TypeError, ["name", "7"]),
        ({"name": "svc", "config": {"failure_threshold": 3}}, TypeError, ["config"]),
        ({"name": "svc", "clock": 12.5}, TypeError, ["clock", "12.5"]),
        ({"name": "svc", "on_state_change": "nope"}, TypeError, ["listener", "'nope'"]),
    ],
)
def test_bad_breaker_arguments(kwargs: dict[str, Any], error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        CircuitBreaker(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_add_listener_rejects_non_callable(clock: Any) -> None:
    cb = make(clock)
    with pytest.raises(TypeError, match="listener"):
        cb.add_listener(42)  # type: ignore[arg-type]


# -- CLOSED ----------------------------------------------------------------------


def test_starts_closed_and_passes_results_and_arguments(flavour: Any, clock: Any) -> None:
    cb = make(clock)
    assert cb.state is CLOSED
    assert cb.can_execute()
    assert cb.failure_count == 0
    assert cb.last_failure_time is None
    assert flavour.breaker(cb, lambda a, b, *, c: (a, b, c), 1, "x", c=[2]) == (1, "x", [2])


def test_consecutive_failures_open_the_circuit(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=3)
    fail(flavour, cb, 2)
    assert cb.state is CLOSED
    assert cb.failure_count == 2
    assert cb.can_execute()
    fail(flavour, cb)
    assert cb.state is OPEN
    assert cb.failure_count == 3
    assert not cb.can_execute()


def test_failure_is_reraised_unchanged(flavour: Any, clock: Any) -> None:
    cb = make(clock)
    error = Boom("exact object")

    def raise_it() -> None:
        raise error

    with pytest.raises(Boom) as info:
        flavour.breaker(cb, raise_it)
    assert info.value is error


def test_success_resets_the_failure_count(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=3)
    fail(flavour, cb, 2)
    assert flavour.breaker(cb, ok) == "ok"
    assert cb.failure_count == 0
    fail(flavour, cb, 2)
    assert cb.state is CLOSED, "a success in between must restart the count"
    fail(flavour, cb)
    assert cb.state is OPEN


def test_failure_threshold_one_opens_on_first_failure(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=1)
    fail(flavour, cb)
    assert cb.state is OPEN


# -- OPEN ------------------------------------------------------------------------


def test_open_rejects_without_calling(flavour: Any, clock: Any) -> None:
    cb = make(clock, name="payments", failure_threshold=2, timeout_seconds=10.0)
    fail(flavour, cb, 2)
    clock.advance(4.0)
    spy = Spy()
    with pytest.raises(CircuitOpenError) as info:
        flavour.breaker(cb, spy)
    assert spy.calls == 0
    error = info.value
    assert isinstance(error, ServiceMeshError)
    assert error.name == "payments"
    assert error.state is OPEN
    assert error.retry_after == pytest.approx(6.0)
    assert "payments" in str(error)
    assert cb.retry_after() == pytest.approx(6.0)


def test_rejections_do_not_count_or_extend_open(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=1, timeout_seconds=10.0)
    fail(flavour, cb)
    for _ in range(5):
        clock.advance(1.0)
        with pytest.raises(CircuitOpenError):
            flavour.breaker(cb, ok)
    assert cb.failure_count == 1
    clock.advance(5.0)
    assert cb.state is HALF_OPEN


def test_state_reads_half_open_once_timeout_passes_without_a_call(clock: Any) -> None:
    cb = make(clock, failure_threshold=1, timeout_seconds=10.0)
    cb.record_failure()
    clock.advance(9.999)
    assert cb.state is OPEN
    assert not cb.can_execute()
    assert cb.retry_after() == pytest.approx(0.001)
    clock.advance(0.001)
    assert cb.state is HALF_OPEN
    assert cb.retry_after() == 0.0
    assert cb.can_execute()


def test_zero_timeout_is_half_open_immediately(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=1, timeout_seconds=0.0, success_threshold=1)
    fail(flavour, cb)
    assert cb.state is HALF_OPEN
    assert flavour.breaker(cb, ok) == "ok"
    assert cb.state is CLOSED


# -- HALF_OPEN -------------------------------------------------------------------


def test_half_open_limits_concurrent_probes_and_frees_slots(flavour: Any, clock: Any) -> None:
    cb = make(clock, half_open_max_calls=2, success_threshold=10)
    half_open(cb, clock)
    rejected_spy = Spy()
    seen: list[Any] = []

    def second_probe() -> str:
        seen.append(("inner", cb.half_open_in_flight, cb.can_execute()))
        with pytest.raises(CircuitOpenError) as info:
            cb.execute(rejected_spy)
        seen.append(("rejected", info.value.state, info.value.retry_after))
        with pytest.raises(CircuitOpenError):
            with cb.permit():
                rejected_spy()
        return "second"

    def first_probe() -> str:
        seen.append(("outer", cb.half_open_in_flight, cb.can_execute()))
        assert cb.execute(second_probe) == "second"
        seen.append(("after-inner", cb.half_open_in_flight, cb.can_execute()))
        return "first"

    assert flavour.breaker(cb, first_probe) == "first"
    assert seen == [
        ("outer", 1, True),
        ("inner", 2, False),
        ("rejected", HALF_OPEN, 0.0),
        ("after-inner", 1, True),
    ]
    assert rejected_spy.calls == 0
    assert cb.half_open_in_flight == 0
    assert cb.state is HALF_OPEN


def test_failed_probe_frees_its_slot_too(flavour: Any, clock: Any) -> None:
    cb = make(clock, half_open_max_calls=1, success_threshold=1, timeout_seconds=5.0)
    half_open(cb, clock)
    fail(flavour, cb)
    assert cb.state is OPEN
    clock.advance(5.0)
    assert cb.state is HALF_OPEN
    assert cb.half_open_in_flight == 0
    assert flavour.breaker(cb, ok) == "ok"
    assert cb.state is CLOSED


def test_success_threshold_successes_close(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=2, success_threshold=3)
    half_open(cb, clock)
    for _ in range(2):
        assert flavour.breaker(cb, ok) == "ok"
        assert cb.state is HALF_OPEN
    assert flavour.breaker(cb, ok) == "ok"
    assert cb.state is CLOSED
    assert cb.failure_count == 0
    # Closed again: the count starts from zero.
    fail(flavour, cb)
    assert cb.state is CLOSED
    fail(flavour, cb)
    assert cb.state is OPEN


def test_never_stuck_when_success_threshold_exceeds_slots(flavour: Any, clock: Any) -> None:
    cb = make(clock, success_threshold=5, half_open_max_calls=1)
    half_open(cb, clock)
    for _ in range(4):
        assert flavour.breaker(cb, ok) == "ok"
        assert cb.state is HALF_OPEN
        assert cb.can_execute()
    assert flavour.breaker(cb, ok) == "ok"
    assert cb.state is CLOSED


def test_half_open_failure_reopens_and_restarts_timeout(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=1, success_threshold=3, timeout_seconds=10.0)
    half_open(cb, clock)
    assert flavour.breaker(cb, ok) == "ok"
    clock.advance(3.0)
    fail(flavour, cb)
    assert cb.state is OPEN
    assert cb.retry_after() == pytest.approx(10.0)
    clock.advance(9.5)
    assert cb.state is OPEN
    with pytest.raises(CircuitOpenError) as info:
        flavour.breaker(cb, ok)
    assert info.value.retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    assert cb.state is HALF_OPEN
    # The earlier probe success was forgotten: three fresh successes are needed.
    for _ in range(2):
        flavour.breaker(cb, ok)
    assert cb.state is HALF_OPEN
    flavour.breaker(cb, ok)
    assert cb.state is CLOSED


# -- results of calls admitted under an earlier state ----------------------------


def test_stale_success_is_not_a_probe_result(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=2, success_threshold=1, half_open_max_calls=1)

    def slow_call_that_succeeds() -> str:
        # Admitted while CLOSED; meanwhile other calls open the breaker and time passes.
        open_breaker(cb)
        clock.advance(cb.config.timeout_seconds)
        assert cb.state is HALF_OPEN
        return "late"

    assert flavour.breaker(cb, slow_call_that_succeeds) == "late"
    assert cb.state is HALF_OPEN, "a stale success must not close the breaker"
    assert cb.half_open_in_flight == 0
    assert cb.can_execute()


def test_stale_failure_does_not_reopen_half_open(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=2, half_open_max_calls=1)

    def slow_call_that_fails() -> None:
        open_breaker(cb)
        clock.advance(cb.config.timeout_seconds)
        assert cb.state is HALF_OPEN
        raise Boom("late")

    with pytest.raises(Boom):
        flavour.breaker(cb, slow_call_that_fails)
    assert cb.state is HALF_OPEN, "a stale failure must not re-open the breaker"
    assert cb.half_open_in_flight == 0


def test_stale_failure_does_not_extend_open(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=2, timeout_seconds=10.0)

    def slow_call_that_fails() -> None:
        open_breaker(cb)
        clock.advance(6.0)
        raise Boom("late")

    with pytest.raises(Boom):
        flavour.breaker(cb, slow_call_that_fails)
    assert cb.state is OPEN
    assert cb.retry_after() == pytest.approx(4.0)
    clock.advance(4.0)
    assert cb.state is HALF_OPEN


def test_stale_probe_result_after_reopen_is_ignored(flavour: Any, clock: Any) -> None:
    cb = make(clock, success_threshold=1, half_open_max_calls=2, timeout_seconds=10.0)
    half_open(cb, clock)

    def probe_that_outlives_its_half_open_period() -> str:
        cb.record_failure()  # another probe failed: OPEN again
        assert cb.state is OPEN
        clock.advance(10.0)
        assert cb.state is HALF_OPEN
        return "late"

    assert flavour.breaker(cb, probe_that_outlives_its_half_open_period) == "late"
    assert cb.state is HALF_OPEN
    assert cb.half_open_in_flight == 0


# -- BaseException ---------------------------------------------------------------


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_base_exception_in_closed_counts_as_nothing(
    flavour: Any, clock: Any, exc_type: type[BaseException]
) -> None:
    cb = make(clock, failure_threshold=2)
    fail(flavour, cb)

    def interrupted() -> None:
        raise exc_type()

    for _ in range(3):
        with pytest.raises(exc_type):
            flavour.breaker(cb, interrupted)
    assert cb.state is CLOSED
    assert cb.failure_count == 1, "neither a failure nor a success"
    assert cb.last_failure_time is not None


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, asyncio.CancelledError])
def test_base_exception_in_half_open_frees_slot_and_counts_nothing(
    flavour: Any, clock: Any, exc_type: type[BaseException]
) -> None:
    cb = make(clock, success_threshold=2, half_open_max_calls=1)
    half_open(cb, clock)
    assert flavour.breaker(cb, ok) == "ok"

    def interrupted() -> None:
        assert cb.half_open_in_flight == 1
        raise exc_type()

    for _ in range(3):
        with pytest.raises(exc_type):
            flavour.breaker(cb, interrupted)
        assert cb.state is HALF_OPEN
        assert cb.half_open_in_flight == 0
        assert cb.can_execute()
    # One more success closes: the interruptions neither failed nor succeeded.
    assert flavour.breaker(cb, ok) == "ok"
    assert cb.state is CLOSED


def test_real_task_cancellation_frees_half_open_slot(loop_factory: Any, clock: Any) -> None:
    cb = make(clock, success_threshold=1, half_open_max_calls=1)
    half_open(cb, clock)

    async def scenario() -> None:
        entered = asyncio.Event()

        async def hang() -> None:
            entered.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(cb.execute_async(hang))
        await entered.wait()
        assert cb.half_open_in_flight == 1
        assert not cb.can_execute()
        with pytest.raises(CircuitOpenError):
            await cb.execute_async(asyncio.sleep, 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cb.half_open_in_flight == 0
        assert cb.state is HALF_OPEN
        assert cb.failure_count == cb.config.failure_threshold

        async def probe() -> str:
            return "probe"

        assert await cb.execute_async(probe) == "probe"

    run(loop_factory, scenario())
    assert cb.state is CLOSED


def test_execute_async_accepts_any_callable_returning_an_awaitable(clock: Any) -> None:
    cb = make(clock)
    loop = asyncio.new_event_loop()
    try:
        future: asyncio.Future[int] = loop.create_future()
        future.set_result(41)
        assert loop.run_until_complete(cb.execute_async(lambda: future)) == 41
    finally:
        loop.close()


# -- can_execute, manual recording, permit -----------------------------------------


def test_can_execute_is_pure(clock: Any) -> None:
    cb = make(clock, half_open_max_calls=1, success_threshold=1)
    half_open(cb, clock)
    for _ in range(10):
        assert cb.can_execute()
    assert cb.half_open_in_flight == 0
    # The one slot is still free for a real call.
    assert cb.execute(ok) == "ok"
    assert cb.state is CLOSED


def test_record_failure_and_success_drive_closed(clock: Any) -> None:
    cb = make(clock, failure_threshold=3)
    cb.record_failure()
    cb.record_failure()
    assert cb.failure_count == 2
    cb.record_success()
    assert cb.failure_count == 0
    for _ in range(3):
        cb.record_failure()
    assert cb.state is OPEN


def test_record_success_in_half_open_counts_without_a_slot(clock: Any) -> None:
    cb = make(clock, success_threshold=2, half_open_max_calls=1)
    half_open(cb, clock)
    cb.record_success()
    assert cb.state is HALF_OPEN
    assert cb.half_open_in_flight == 0
    cb.record_success()
    assert cb.state is CLOSED


def test_record_failure_in_half_open_reopens(clock: Any) -> None:
    cb = make(clock, timeout_seconds=7.0)
    half_open(cb, clock)
    cb.record_failure()
    assert cb.state is OPEN
    assert cb.retry_after() == pytest.approx(7.0)


def test_record_failure_while_open_does_not_extend_open(clock: Any) -> None:
    cb = make(clock, failure_threshold=1, timeout_seconds=10.0)
    cb.record_failure()
    clock.advance(8.0)
    cb.record_failure()
    assert cb.state is OPEN
    clock.advance(2.0)
    assert cb.state is HALF_OPEN


def test_record_success_while_open_does_not_close(clock: Any) -> None:
    cb = make(clock, failure_threshold=1, success_threshold=1, timeout_seconds=10.0)
    cb.record_failure()
    cb.record_success()
    assert cb.state is OPEN


def test_manual_recording_sees_lazy_half_open(clock: Any) -> None:
    cb = make(clock, failure_threshold=1, success_threshold=1, timeout_seconds=10.0)
    cb.record_failure()
    clock.advance(10.0)
    cb.record_success()  # recorded against HALF_OPEN, not against the stale OPEN
    assert cb.state is CLOSED


def _run_permit(flavour: Any, cb: CircuitBreaker, body: Any) -> Any:
    """Run ``body`` inside ``with cb.permit()`` (or ``async with`` in async flavours)."""
    if not flavour.is_async:
        with cb.permit():
            return body()

    async def scenario() -> Any:
        async with cb.permit():
            await asyncio.sleep(0)
            return body()

    return flavour.run(scenario())


def test_permit_records_block_outcome(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=2, success_threshold=2, half_open_max_calls=1)
    with pytest.raises(Boom):
        _run_permit(flavour, cb, boom)
    assert cb.failure_count == 1
    assert _run_permit(flavour, cb, ok) == "ok"
    assert cb.failure_count == 0
    for _ in range(2):
        with pytest.raises(Boom):
            _run_permit(flavour, cb, boom)
    assert cb.state is OPEN

    spy = Spy()
    with pytest.raises(CircuitOpenError) as info:
        _run_permit(flavour, cb, spy)
    assert spy.calls == 0
    assert info.value.state is OPEN

    clock.advance(cb.config.timeout_seconds)

    def inside_probe() -> str:
        assert cb.half_open_in_flight == 1
        assert not cb.can_execute()
        with pytest.raises(CircuitOpenError) as full:
            with cb.permit():
                spy()
        assert full.value.state is HALF_OPEN
        assert full.value.retry_after == 0.0
        return "probe"

    assert _run_permit(flavour, cb, inside_probe) == "probe"
    assert spy.calls == 0
    assert cb.half_open_in_flight == 0
    assert cb.state is HALF_OPEN
    assert _run_permit(flavour, cb, ok) == "ok"
    assert cb.state is CLOSED


def test_permit_base_exception_frees_slot(flavour: Any, clock: Any) -> None:
    cb = make(clock, half_open_max_calls=1, success_threshold=1)
    half_open(cb, clock)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run_permit(flavour, cb, interrupted)
    assert cb.half_open_in_flight == 0
    assert cb.state is HALF_OPEN
    assert _run_permit(flavour, cb, ok) == "ok"
    assert cb.state is CLOSED


def test_permit_rejects_on_entry_not_on_creation(clock: Any) -> None:
    cb = make(clock, failure_threshold=1)
    permit = cb.permit()  # creating it takes nothing
    cb.record_failure()
    with pytest.raises(CircuitOpenError):
        permit.__enter__()


# -- reset ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["closed-with-failures", "open", "half_open"])
def test_reset_returns_to_closed(clock: Any, where: str) -> None:
    cb = make(clock, failure_threshold=3, half_open_max_calls=1)
    if where == "closed-with-failures":
        cb.record_failure()
        cb.record_failure()
    elif where == "open":
        open_breaker(cb)
    else:
        half_open(cb, clock)
    cb.reset()
    assert cb.state is CLOSED
    assert cb.failure_count == 0
    assert cb.can_execute()
    # A full threshold of fresh failures is needed to open again.
    cb.record_failure()
    cb.record_failure()
    assert cb.state is CLOSED
    cb.record_failure()
    assert cb.state is OPEN


def test_reset_frees_held_half_open_slots(clock: Any) -> None:
    cb = make(clock, half_open_max_calls=1, success_threshold=1)
    half_open(cb, clock)
    held = cb.permit()
    held.__enter__()
    assert not cb.can_execute()
    cb.reset()
    assert cb.can_execute()
    error = Boom("late probe failure")
    held.__exit__(Boom, error, None)  # the old probe's late result is ignored
    assert cb.state is CLOSED
    assert cb.failure_count == 0
    assert cb.half_open_in_flight == 0


# -- listeners and logging ------------------------------------------------------------


def test_listeners_see_every_transition_in_order(flavour: Any, clock: Any) -> None:
    events: list[tuple[Any, CircuitState, CircuitState]] = []
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, success_threshold=1, timeout_seconds=5.0),
        clock=clock,
        on_state_change=lambda b, old, new: events.append((b, old, new)),
    )
    fail(flavour, cb)
    clock.advance(5.0)
    assert cb.state is HALF_OPEN  # a read alone makes (and announces) the transition
    assert [(o, n) for _, o, n in events] == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    flavour.breaker(cb, ok)
    assert all(b is cb for b, _, _ in events)
    assert [(o, n) for _, o, n in events] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


def test_add_and_remove_listener(clock: Any) -> None:
    first: list[CircuitState] = []
    second: list[CircuitState] = []

    def record_first(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        first.append(new)

    def record_second(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        second.append(new)

    cb = make(clock, failure_threshold=1)
    cb.add_listener(record_first)
    cb.add_listener(record_second)
    cb.record_failure()
    cb.remove_listener(record_first)
    cb.remove_listener(record_first)  # unknown now: ignored
    cb.reset()
    assert first == [OPEN]
    assert second == [OPEN, CLOSED]


def test_reset_of_closed_breaker_announces_nothing(clock: Any) -> None:
    events: list[Any] = []
    cb = make(clock)
    cb.add_listener(lambda b, old, new: events.append((old, new)))
    cb.record_failure()
    cb.reset()
    assert events == []


def test_raising_listener_is_logged_and_never_breaks_the_call(
    flavour: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    later: list[CircuitState] = []

    def broken(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("listener bug")

    cb = make(clock, name="flaky", failure_threshold=1, success_threshold=1)
    cb.add_listener(broken)
    cb.add_listener(lambda b, old, new: later.append(new))
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(Boom):  # the call's own error, not the listener's
        flavour.breaker(cb, boom)
    assert cb.state is OPEN
    assert later == [OPEN], "listeners after a raising one still run"
    clock.advance(cb.config.timeout_seconds)
    assert flavour.breaker(cb, ok) == "ok"
    assert cb.state is CLOSED
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == LOGGER]
    assert len(errors) == 3  # one per transition
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)
    assert all("flaky" in r.getMessage() for r in errors)


@pytest.mark.parametrize("trigger", ["state-read", "admission", "call-result", "manual-record"])
def test_listener_runs_outside_the_lock(flavour: Any, clock: Any, trigger: str) -> None:
    """A listener may call back into the breaker (it would deadlock under the lock)."""
    cb = make(clock, failure_threshold=1, success_threshold=1, timeout_seconds=5.0)
    seen: list[Any] = []

    def reenter(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        seen.append((new, b.can_execute(), b.failure_count))
        b.add_listener(lambda *_: None)  # takes the breaker's lock

    def drive() -> None:
        if trigger == "manual-record":
            cb.record_failure()
            return
        if trigger == "call-result":
            with pytest.raises(Boom):
                flavour.breaker(cb, boom)
            return
        cb.record_failure()
        clock.advance(5.0)
        if trigger == "state-read":
            assert cb.state is HALF_OPEN
        else:
            assert flavour.breaker(cb, ok) == "ok"

    cb.add_listener(reenter)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            drive()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(timeout=5.0)
    assert not thread.is_alive(), "a listener deadlocked on the breaker's lock"
    assert errors == []
    assert seen
    assert seen[0] == (OPEN, False, 1)
    if trigger in ("state-read", "admission"):
        assert seen[1] == (HALF_OPEN, True, 1)


def test_transitions_are_logged(clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    cb = make(clock, name="inventory", failure_threshold=1, success_threshold=1)
    cb.execute(ok)
    assert [r for r in caplog.records if r.name == LOGGER] == []
    cb.record_failure()
    clock.advance(cb.config.timeout_seconds)
    cb.execute(ok)
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 3
    messages = [r.getMessage() for r in records]
    assert all("inventory" in m for m in messages)
    assert "open" in messages[0]
    assert "closed" in messages[0]
    assert "half_open" in messages[1]
    assert all(r.levelno >= logging.INFO for r in records)


# -- last_failure_time ----------------------------------------------------------------


def test_last_failure_time_tracks_failures_in_wall_time(flavour: Any, clock: Any) -> None:
    cb = make(clock, failure_threshold=10)
    assert cb.last_failure_time is None
    flavour.breaker(cb, ok)
    assert cb.last_failure_time is None
    before = datetime.now(timezone.utc)
    fail(flavour, cb)
    after = datetime.now(timezone.utc)
    stamp = cb.last_failure_time
    assert stamp is not None
    assert stamp.tzinfo is not None
    assert before <= stamp <= after, "the wall-clock time when the failure was recorded"
    clock.advance(120.0)
    assert cb.last_failure_time == stamp, "stamped once: reads later do not move it"
    flavour.breaker(cb, ok)
    assert cb.last_failure_time == stamp, "a success does not erase the last failure"
    fail(flavour, cb)
    newer = cb.last_failure_time
    assert newer is not None
    assert newer >= stamp


# -- no lock held while the user's function runs ------------------------------------


def _two_threads_inside(cb: CircuitBreaker) -> list[BaseException]:
    barrier = threading.Barrier(2, timeout=5.0)
    errors: list[BaseException] = []

    def meet() -> str:
        barrier.wait()
        return "met"

    def worker() -> None:
        try:
            assert cb.execute(meet) == "met"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10.0)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_calls_run_concurrently_when_closed(clock: Any) -> None:
    cb = make(clock)
    assert _two_threads_inside(cb) == []


def test_probes_run_concurrently_when_half_open(clock: Any) -> None:
    cb = make(clock, half_open_max_calls=2, success_threshold=5)
    half_open(cb, clock)
    assert _two_threads_inside(cb) == []
    assert cb.state is HALF_OPEN
    assert cb.half_open_in_flight == 0


def test_async_calls_do_not_block_the_loop(loop_factory: Any, clock: Any) -> None:
    cb = make(clock, half_open_max_calls=2, success_threshold=5)
    half_open(cb, clock)
    result: list[Any] = []

    async def scenario() -> list[str]:
        arrived = 0
        both_inside = asyncio.Event()

        async def meet() -> str:
            nonlocal arrived
            arrived += 1
            if arrived == 2:
                both_inside.set()
            await asyncio.wait_for(both_inside.wait(), 5.0)
            return "met"

        return list(await asyncio.gather(cb.execute_async(meet), cb.execute_async(meet)))

    runner = threading.Thread(
        target=lambda: result.append(run(loop_factory, scenario())), daemon=True
    )
    runner.start()
    runner.join(timeout=10.0)
    assert not runner.is_alive(), "the event loop was blocked"
    assert result == [["met", "met"]]
    assert cb.half_open_in_flight == 0


def test_uses_injected_clock_not_real_time(clock: Any) -> None:
    cb = make(clock, failure_threshold=1, timeout_seconds=0.01)
    cb.record_failure()
    time.sleep(0.02)  # real time passing must not matter
    assert cb.state is OPEN
