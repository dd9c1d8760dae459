"""Circuit breaker policies beyond consecutive failures (issue 5).

Failure-rate and slow-call windows, minimum calls, three-way classification,
result predicates, open-state backoff, operator states and listeners. Behaviour
shared by ``execute`` and ``execute_async`` runs once per flavour; time comes
from the ``clock`` fixture, and a slow call is one whose body moves that clock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
)
from codomyrmex.service_mesh.breaker.state import TRANSITIONS
from codomyrmex.service_mesh.events import CallRejected, Event, StateTransition

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED
METRICS_ONLY = CircuitState.METRICS_ONLY


class Boom(Exception):
    """A failure."""


class Ignored(Exception):
    """An exception configured to count as nothing."""


class Benign(Exception):
    """An exception outside ``record_exceptions``: it counts as a success."""


class Abort(BaseException):
    """A non-Exception interruption."""


@dataclass
class Response:
    """A stand-in for an HTTP response object."""

    status: int


def server_error(result: Any) -> bool:
    return isinstance(result, Response) and result.status >= 500


def ok() -> str:
    return "ok"


def boom() -> str:
    raise Boom


def outcome(flavour: Any, cb: CircuitBreaker, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` through the breaker; return its result or the exception it raised."""
    try:
        return flavour.breaker(cb, fn)
    except Exception as exc:
        return exc


def taking(clock: Any, seconds: float, fn: Callable[[], Any] = ok) -> Callable[[], Any]:
    """``fn``, taking ``seconds`` of fake time."""

    def slow() -> Any:
        clock.advance(seconds)
        return fn()

    return slow


def windowed(clock: Any, **options: Any) -> CircuitBreaker:
    config = CircuitBreakerConfig(**{"minimum_number_of_calls": 4, **options})
    return CircuitBreaker("svc", config, clock=clock)


# -- failure-rate windows ----------------------------------------------------------------


def test_failure_rate_opens_only_once_minimum_calls_are_in_the_window(
    flavour: Any, clock: Any
) -> None:
    cb = windowed(clock, failure_rate_threshold=50.0, sliding_window_size=10)
    for _ in range(3):
        assert isinstance(outcome(flavour, cb, boom), Boom)
    assert cb.state is CLOSED  # 100% failures, but only 3 of the 4 calls needed
    assert cb.metrics["failure_rate"] == 100.0
    outcome(flavour, cb, boom)
    assert cb.state is OPEN


def test_failure_rate_below_the_threshold_keeps_the_circuit_closed(
    flavour: Any, clock: Any
) -> None:
    cb = windowed(clock, failure_rate_threshold=50.0, sliding_window_size=10)
    for fn in [boom, ok, ok, ok, boom, ok, ok, ok, boom, ok]:  # 30%
        outcome(flavour, cb, fn)
    assert cb.state is CLOSED
    assert cb.metrics == {
        "calls": 10,
        "failures": 3,
        "slow_calls": 0,
        "failure_rate": 30.0,
        "slow_call_rate": 0.0,
    }
    assert cb.failure_count == 3


def test_failure_rate_exactly_at_the_threshold_opens(flavour: Any, clock: Any) -> None:
    cb = windowed(clock, failure_rate_threshold=50.0, sliding_window_size=4)
    for fn in [ok, boom, ok, boom]:
        outcome(flavour, cb, fn)
    assert cb.state is OPEN


def test_consecutive_failures_do_not_open_a_failure_rate_breaker(clock: Any) -> None:
    """In window mode ``failure_threshold`` is unused: the rate decides."""
    cb = windowed(clock, failure_threshold=1, failure_rate_threshold=60.0, sliding_window_size=10)
    for fn in [ok, ok, ok, ok, ok, boom, boom, boom]:  # 3 in a row, 37.5%
        outcome(Sync, cb, fn)
    assert cb.state is CLOSED


def test_count_window_failures_slide_out(clock: Any) -> None:
    cb = windowed(clock, failure_rate_threshold=50.0, sliding_window_size=4)
    for fn in [boom, ok, ok, ok, ok, ok]:
        outcome(Sync, cb, fn)
    assert cb.failure_count == 0  # the failure has left the last 4 calls
    for fn in [boom, ok]:
        outcome(Sync, cb, fn)
    assert cb.state is CLOSED  # 1 of the last 4
    outcome(Sync, cb, boom)
    assert cb.state is OPEN  # 2 of the last 4


def test_minimum_calls_larger_than_a_count_window_is_capped_by_the_window(clock: Any) -> None:
    """A count window can never hold more than its size, so it cannot wait for more."""
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_rate_threshold=50.0, sliding_window_size=5),  # minimum 10
        clock=clock,
    )
    for _ in range(5):
        outcome(Sync, cb, boom)
    assert cb.state is OPEN


def test_time_window_forgets_failures_older_than_its_size(flavour: Any, clock: Any) -> None:
    cb = windowed(
        clock, failure_rate_threshold=50.0, sliding_window_type="time", sliding_window_size=10
    )
    for _ in range(3):
        outcome(flavour, cb, boom)
    clock.advance(10.0)  # those three are now outside the last 10 seconds
    assert cb.failure_count == 0
    assert cb.metrics["calls"] == 0
    for fn in [ok, ok, boom]:
        outcome(flavour, cb, fn)
    assert cb.state is CLOSED  # 1 of 3: not even the minimum
    outcome(flavour, cb, boom)
    assert cb.state is OPEN  # 2 of 4


def test_time_window_counts_every_call_of_the_window_however_many(clock: Any) -> None:
    cb = windowed(
        clock,
        failure_rate_threshold=10.0,
        sliding_window_type="time",
        sliding_window_size=2,
        minimum_number_of_calls=1000,
    )
    for i in range(999):
        outcome(Sync, cb, boom if i % 20 == 0 else ok)
    assert cb.metrics["calls"] == 999
    assert cb.state is CLOSED
    outcome(Sync, cb, ok)
    assert cb.state is CLOSED  # 5% at 1000 calls


def test_closing_empties_the_window(clock: Any) -> None:
    cb = windowed(
        clock,
        failure_rate_threshold=50.0,
        sliding_window_size=10,
        timeout_seconds=5.0,
        success_threshold=1,
    )
    for _ in range(4):
        outcome(Sync, cb, boom)
    assert cb.state is OPEN
    clock.advance(5.0)
    outcome(Sync, cb, ok)
    assert cb.state is CLOSED
    assert cb.metrics["calls"] == 0
    for _ in range(3):
        outcome(Sync, cb, boom)
    assert cb.state is CLOSED  # the minimum is counted afresh


def test_consecutive_mode_reports_zero_window_metrics(clock: Any) -> None:
    cb = CircuitBreaker("svc", clock=clock)
    outcome(Sync, cb, boom)
    assert cb.metrics == {
        "calls": 0,
        "failures": 1,
        "slow_calls": 0,
        "failure_rate": 0.0,
        "slow_call_rate": 0.0,
    }


# -- slow calls ---------------------------------------------------------------------------


def test_slow_successes_open_the_circuit_at_the_slow_call_rate(flavour: Any, clock: Any) -> None:
    cb = windowed(
        clock,
        slow_call_duration_threshold=2.0,
        slow_call_rate_threshold=50.0,
        sliding_window_size=10,
    )
    outcome(flavour, cb, taking(clock, 0.5))
    outcome(flavour, cb, taking(clock, 3.0))
    outcome(flavour, cb, taking(clock, 0.1))
    assert cb.state is CLOSED
    result = outcome(flavour, cb, taking(clock, 5.0))
    assert result == "ok"  # a slow call still returns its result
    assert cb.metrics["slow_calls"] == 2
    assert cb.metrics["failures"] == 0
    assert cb.state is OPEN


def test_a_slow_failure_counts_as_slow_and_as_failed(flavour: Any, clock: Any) -> None:
    cb = windowed(
        clock,
        failure_rate_threshold=100.0,
        slow_call_duration_threshold=1.0,
        slow_call_rate_threshold=100.0,
        minimum_number_of_calls=10,
    )
    assert isinstance(outcome(flavour, cb, taking(clock, 1.5, boom)), Boom)
    assert isinstance(outcome(flavour, cb, taking(clock, 0.5, boom)), Boom)
    outcome(flavour, cb, taking(clock, 1.5, ok))
    metrics = cb.metrics
    assert (metrics["calls"], metrics["failures"], metrics["slow_calls"]) == (3, 2, 2)


def test_a_slow_exception_outside_record_exceptions_is_a_slow_success(clock: Any) -> None:
    cb = windowed(
        clock,
        slow_call_duration_threshold=1.0,
        record_exceptions=(Boom,),
        minimum_number_of_calls=10,
    )

    def benign() -> str:
        raise Benign

    outcome(Sync, cb, taking(clock, 2.0, benign))
    metrics = cb.metrics
    assert (metrics["calls"], metrics["failures"], metrics["slow_calls"]) == (1, 0, 1)


def test_slow_calls_alone_can_open_a_breaker_also_judging_failures(clock: Any) -> None:
    cb = windowed(
        clock,
        failure_rate_threshold=50.0,
        slow_call_duration_threshold=1.0,
        slow_call_rate_threshold=75.0,
    )
    for _ in range(4):
        outcome(Sync, cb, taking(clock, 1.5))
    assert cb.state is OPEN
    assert cb.metrics["failure_rate"] == 0.0


def test_a_slow_probe_reopens_the_circuit(flavour: Any, clock: Any) -> None:
    cb = windowed(
        clock,
        slow_call_duration_threshold=1.0,
        slow_call_rate_threshold=100.0,
        timeout_seconds=10.0,
        success_threshold=1,
    )
    for _ in range(4):
        outcome(flavour, cb, taking(clock, 2.0))
    assert cb.state is OPEN
    clock.advance(10.0)
    assert outcome(flavour, cb, taking(clock, 2.0)) == "ok"
    assert cb.state is OPEN
    clock.advance(10.0)
    outcome(flavour, cb, taking(clock, 0.5))
    assert cb.state is CLOSED


def test_permit_times_its_block(clock: Any) -> None:
    cb = windowed(clock, slow_call_duration_threshold=1.0, minimum_number_of_calls=10)
    with cb.permit():
        clock.advance(3.0)
    with cb.permit():
        clock.advance(0.2)
    assert cb.metrics["slow_calls"] == 1
    assert cb.metrics["calls"] == 2


def test_decorator_wrapper_times_calls(clock: Any) -> None:
    cb = windowed(clock, slow_call_duration_threshold=1.0, minimum_number_of_calls=10)
    wrapped = cb.wrap(taking(clock, 2.0))
    assert wrapped() == "ok"
    assert cb.metrics["slow_calls"] == 1


# -- classification ------------------------------------------------------------------------


def test_ignored_exceptions_count_as_nothing_in_consecutive_mode(flavour: Any, clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=2, ignore_exceptions=(Ignored,)),
        clock=clock,
    )

    def ignored() -> str:
        raise Ignored

    outcome(flavour, cb, boom)
    assert isinstance(outcome(flavour, cb, ignored), Ignored)  # raised to the caller as is
    assert cb.failure_count == 1  # neither a failure nor a success that resets the count
    outcome(flavour, cb, boom)
    assert cb.state is OPEN


def test_ignored_exceptions_count_as_nothing_in_window_mode(clock: Any) -> None:
    cb = windowed(
        clock,
        failure_rate_threshold=50.0,
        slow_call_duration_threshold=1.0,
        ignore_exceptions=(Ignored,),
    )

    def ignored() -> str:
        raise Ignored

    for _ in range(10):
        outcome(Sync, cb, taking(clock, 5.0, ignored))  # slow, but ignored
    assert cb.metrics["calls"] == 0
    assert cb.state is CLOSED


def test_ignored_outcome_frees_its_half_open_slot(flavour: Any, clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(
            failure_threshold=1,
            success_threshold=1,
            half_open_max_calls=1,
            timeout_seconds=5.0,
            ignore_exceptions=(Ignored,),
        ),
        clock=clock,
    )
    outcome(flavour, cb, boom)
    clock.advance(5.0)

    def ignored() -> str:
        assert cb.half_open_in_flight == 1
        raise Ignored

    for _ in range(3):  # the single slot comes back each time
        assert isinstance(outcome(flavour, cb, ignored), Ignored)
        assert cb.state is HALF_OPEN
        assert cb.half_open_in_flight == 0
    assert outcome(flavour, cb, ok) == "ok"
    assert cb.state is CLOSED


def test_ignore_list_is_checked_before_the_record_list(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, ignore_exceptions=(Ignored,)),
        clock=clock,
    )  # record_exceptions=(Exception,) covers Ignored too

    def ignored() -> str:
        raise Ignored

    outcome(Sync, cb, ignored)
    assert cb.state is CLOSED


def test_exceptions_outside_the_record_list_count_as_successes(flavour: Any, clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=2, record_exceptions=(Boom,)),
        clock=clock,
    )

    def benign() -> str:
        raise Benign

    outcome(flavour, cb, boom)
    assert isinstance(outcome(flavour, cb, benign), Benign)
    assert cb.failure_count == 0  # a success resets the consecutive count
    outcome(flavour, cb, boom)
    assert cb.state is CLOSED


def test_failure_predicate_decides_for_recorded_exceptions(flavour: Any, clock: Any) -> None:
    class HttpError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(status)
            self.status = status

    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(
            failure_threshold=2,
            record_exceptions=(HttpError,),
            failure_predicate=lambda exc: getattr(exc, "status", 0) >= 500,
        ),
        clock=clock,
    )

    def status(code: int) -> Callable[[], Any]:
        def fn() -> Any:
            raise HttpError(code)

        return fn

    outcome(flavour, cb, status(503))
    outcome(flavour, cb, status(404))  # a client error: the service is fine
    assert cb.failure_count == 0
    outcome(flavour, cb, status(500))
    outcome(flavour, cb, status(502))
    assert cb.state is OPEN


def test_a_failure_predicate_that_raises_is_logged_and_counts_a_failure(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    cb = CircuitBreaker(
        "svc", CircuitBreakerConfig(failure_threshold=1, failure_predicate=broken), clock=clock
    )
    with caplog.at_level(logging.ERROR, logger="codomyrmex.service_mesh"):
        assert isinstance(outcome(Sync, cb, boom), Boom)
    assert cb.state is OPEN
    assert "failure_predicate of circuit svc raised" in caplog.text


def test_base_exceptions_still_count_as_nothing_with_a_classifier(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, record_exceptions=(BaseException,)),
        clock=clock,
    )

    def abort() -> str:
        raise Abort

    with pytest.raises(Abort):
        cb.execute(abort)
    assert cb.state is CLOSED


# -- result predicate ----------------------------------------------------------------------


def test_result_predicate_marks_a_503_response_as_a_failure(flavour: Any, clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=2, result_predicate=server_error),
        clock=clock,
    )
    unavailable = Response(503)
    assert outcome(flavour, cb, lambda: unavailable) is unavailable  # returned, not raised
    assert cb.failure_count == 1
    assert outcome(flavour, cb, lambda: Response(200)) == Response(200)
    assert cb.failure_count == 0
    outcome(flavour, cb, lambda: Response(503))
    outcome(flavour, cb, lambda: Response(502))
    assert cb.state is OPEN
    assert isinstance(outcome(flavour, cb, lambda: Response(200)), CircuitOpenError)


def test_result_predicate_in_window_mode(clock: Any) -> None:
    cb = windowed(clock, failure_rate_threshold=50.0, result_predicate=server_error)
    for status in (200, 503, 200, 503):
        outcome(Sync, cb, lambda status=status: Response(status))
    assert cb.metrics["failures"] == 2
    assert cb.state is OPEN


def test_result_predicate_applies_to_the_decorator_wrapper(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc", CircuitBreakerConfig(failure_threshold=1, result_predicate=server_error), clock=clock
    )
    assert cb.wrap(lambda: Response(503))() == Response(503)
    assert cb.state is OPEN


def test_a_result_predicate_that_raises_is_logged_and_keeps_the_success(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(result: Any) -> bool:
        raise RuntimeError("predicate bug")

    cb = CircuitBreaker(
        "svc", CircuitBreakerConfig(failure_threshold=1, result_predicate=broken), clock=clock
    )
    with caplog.at_level(logging.ERROR, logger="codomyrmex.service_mesh"):
        assert outcome(Sync, cb, ok) == "ok"
    assert cb.state is CLOSED
    assert "result_predicate of circuit svc raised" in caplog.text


# -- open-state backoff ------------------------------------------------------------------


def reopen_waits(clock: Any, cb: CircuitBreaker, reopenings: int) -> list[float]:
    """The OPEN wait after the first opening and after each re-opening from HALF_OPEN."""
    waits = []
    outcome(Sync, cb, boom)
    for i in range(reopenings + 1):
        assert cb.state is OPEN
        wait = cb.retry_after()
        waits.append(wait)
        clock.advance(wait - 0.001)
        assert cb.state is OPEN
        clock.advance(0.001)
        assert cb.state is HALF_OPEN
        if i < reopenings:
            outcome(Sync, cb, boom)
    return waits


def test_open_wait_grows_by_the_multiplier_up_to_the_cap(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(
            failure_threshold=1,
            timeout_seconds=10.0,
            open_backoff_multiplier=2.0,
            max_open_seconds=60.0,
        ),
        clock=clock,
    )
    assert reopen_waits(clock, cb, 5) == pytest.approx([10.0, 20.0, 40.0, 60.0, 60.0, 60.0])


def test_open_wait_resets_when_the_circuit_closes(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(
            failure_threshold=1,
            success_threshold=1,
            timeout_seconds=10.0,
            open_backoff_multiplier=3.0,
        ),
        clock=clock,
    )
    assert reopen_waits(clock, cb, 2) == pytest.approx([10.0, 30.0, 90.0])
    outcome(Sync, cb, ok)
    assert cb.state is CLOSED
    outcome(Sync, cb, boom)
    assert cb.retry_after() == pytest.approx(10.0)


def test_reset_also_resets_the_open_wait(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, timeout_seconds=1.0, open_backoff_multiplier=2.0),
        clock=clock,
    )
    reopen_waits(clock, cb, 3)
    cb.reset()
    outcome(Sync, cb, boom)
    assert cb.retry_after() == pytest.approx(1.0)


def test_a_manual_failure_while_half_open_grows_the_wait_too(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, timeout_seconds=2.0, open_backoff_multiplier=2.0),
        clock=clock,
    )
    cb.record_failure()
    clock.advance(2.0)
    assert cb.state is HALF_OPEN
    cb.record_failure()
    assert cb.retry_after() == pytest.approx(4.0)


def test_without_a_multiplier_the_open_wait_stays_put(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc", CircuitBreakerConfig(failure_threshold=1, timeout_seconds=7.0), clock=clock
    )
    assert reopen_waits(clock, cb, 3) == pytest.approx([7.0] * 4)


def test_huge_growth_is_capped_without_overflow(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(
            failure_threshold=1,
            timeout_seconds=1.0,
            open_backoff_multiplier=1e300,
            max_open_seconds=5.0,
        ),
        clock=clock,
    )
    assert reopen_waits(clock, cb, 4) == pytest.approx([1.0, 5.0, 5.0, 5.0, 5.0])


def test_a_rejection_reports_the_grown_wait(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, timeout_seconds=4.0, open_backoff_multiplier=2.5),
        clock=clock,
    )
    reopen_waits(clock, cb, 1)
    outcome(Sync, cb, boom)  # the probe fails: the second re-opening
    error = outcome(Sync, cb, ok)
    assert isinstance(error, CircuitOpenError)
    assert error.retry_after == pytest.approx(25.0)


# -- operator states ------------------------------------------------------------------------


def test_forced_open_rejects_everything_until_reset(flavour: Any, clock: Any) -> None:
    cb = CircuitBreaker("svc", CircuitBreakerConfig(timeout_seconds=1.0), clock=clock)
    cb.force_open()
    ran: list[bool] = []
    error = outcome(flavour, cb, lambda: ran.append(True))
    assert isinstance(error, CircuitOpenError)
    assert error.state is FORCED_OPEN
    assert error.retry_after == math.inf
    assert ran == []
    clock.advance(1e6)  # no timeout ever lets a probe through
    assert cb.state is FORCED_OPEN
    assert not cb.can_execute()
    assert cb.retry_after() == math.inf
    with pytest.raises(CircuitOpenError):
        cb.permit().__enter__()
    cb.reset()
    assert cb.state is CLOSED
    assert outcome(flavour, cb, ok) == "ok"


def test_disabled_admits_everything_and_records_nothing(flavour: Any, clock: Any) -> None:
    cb = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    outcome(flavour, cb, boom)
    assert cb.state is OPEN
    cb.disable()
    assert cb.state is DISABLED
    for _ in range(20):
        assert isinstance(outcome(flavour, cb, boom), Boom)
    cb.record_failure()
    assert cb.state is DISABLED
    assert cb.can_execute()
    assert cb.failure_count == 0
    assert cb.last_failure_time is not None  # from before it was disabled
    cb.reset()
    assert cb.failure_count == 0
    outcome(flavour, cb, boom)
    assert cb.state is OPEN


def test_disabled_records_nothing_in_window_mode(clock: Any) -> None:
    cb = windowed(clock, failure_rate_threshold=50.0, slow_call_duration_threshold=1.0)
    cb.disable()
    for _ in range(10):
        outcome(Sync, cb, taking(clock, 2.0, boom))
    assert cb.metrics["calls"] == 0
    assert cb.state is DISABLED


def test_metrics_only_records_but_never_transitions(flavour: Any, clock: Any) -> None:
    cb = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=2), clock=clock)
    cb.metrics_only()
    for _ in range(10):
        outcome(flavour, cb, boom)
    assert cb.state is METRICS_ONLY
    assert cb.failure_count == 10
    assert cb.can_execute()
    outcome(flavour, cb, ok)
    assert cb.failure_count == 0


def test_metrics_only_fills_the_window_but_never_opens(clock: Any) -> None:
    cb = windowed(clock, failure_rate_threshold=50.0, slow_call_duration_threshold=1.0)
    cb.metrics_only()
    for _ in range(6):
        outcome(Sync, cb, taking(clock, 2.0, boom))
    assert cb.metrics["failure_rate"] == 100.0
    assert cb.metrics["slow_call_rate"] == 100.0
    assert cb.state is METRICS_ONLY


def test_entering_an_operator_state_forgets_what_was_counted(clock: Any) -> None:
    cb = windowed(clock, failure_rate_threshold=50.0, minimum_number_of_calls=10)
    for _ in range(5):
        outcome(Sync, cb, boom)
    cb.metrics_only()
    assert cb.metrics["calls"] == 0
    cb.reset()
    assert cb.metrics["calls"] == 0


def test_a_call_admitted_before_an_operator_change_does_not_count(clock: Any) -> None:
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, half_open_max_calls=1, timeout_seconds=1.0),
        clock=clock,
    )
    permit = cb.permit()
    permit.__enter__()  # admitted while CLOSED
    cb.metrics_only()
    permit.__exit__(Boom, Boom(), None)
    assert cb.failure_count == 0

    cb.reset()
    cb.record_failure()
    clock.advance(1.0)
    probe = cb.permit()
    probe.__enter__()  # takes the only half-open slot
    cb.force_open()
    cb.reset()
    probe.__exit__(Boom, Boom(), None)  # its failure belongs to a finished episode
    assert cb.state is CLOSED
    assert cb.half_open_in_flight == 0


@pytest.mark.parametrize("start", [CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED, METRICS_ONLY])
@pytest.mark.parametrize("enter", ["force_open", "disable", "metrics_only", "reset"])
def test_operators_reach_their_state_from_every_state(
    clock: Any, start: CircuitState, enter: str
) -> None:
    cb = CircuitBreaker(
        "svc", CircuitBreakerConfig(failure_threshold=1, timeout_seconds=1.0), clock=clock
    )
    seen: list[tuple[CircuitState, CircuitState]] = []
    if start in (OPEN, HALF_OPEN):
        cb.record_failure()
        if start is HALF_OPEN:
            clock.advance(1.0)
    elif start is not CLOSED:
        {FORCED_OPEN: cb.force_open, DISABLED: cb.disable, METRICS_ONLY: cb.metrics_only}[start]()
    assert cb.state is start
    cb.add_listener(lambda b, old, new: seen.append((old, new)))
    getattr(cb, enter)()
    target = {
        "force_open": FORCED_OPEN,
        "disable": DISABLED,
        "metrics_only": METRICS_ONLY,
        "reset": CLOSED,
    }[enter]
    assert cb.state is target
    assert target in TRANSITIONS[start] or target is start
    assert seen == ([] if target is start else [(start, target)])


def test_the_transition_table_lists_exactly_the_legal_moves() -> None:
    operator = {FORCED_OPEN, DISABLED, METRICS_ONLY}
    assert set(TRANSITIONS) == set(CircuitState)
    assert TRANSITIONS[CLOSED] == {OPEN} | operator
    assert TRANSITIONS[OPEN] == {HALF_OPEN, CLOSED} | operator
    assert TRANSITIONS[HALF_OPEN] == {OPEN, CLOSED} | operator
    for state in operator:
        assert TRANSITIONS[state] == {CLOSED} | operator  # never straight to OPEN/HALF_OPEN


def test_every_automatic_transition_is_in_the_table(clock: Any) -> None:
    seen: list[tuple[CircuitState, CircuitState]] = []
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, success_threshold=1, timeout_seconds=1.0),
        clock=clock,
        on_state_change=lambda b, old, new: seen.append((old, new)),
    )
    outcome(Sync, cb, boom)
    clock.advance(1.0)
    outcome(Sync, cb, boom)
    clock.advance(1.0)
    outcome(Sync, cb, ok)
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (OPEN, HALF_OPEN),
                    (HALF_OPEN, CLOSED)]  # fmt: skip
    assert all(new in TRANSITIONS[old] for old, new in seen)


# -- listeners and events -------------------------------------------------------------------


def test_a_raising_listener_is_logged_and_never_breaks_the_call(
    flavour: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, CircuitState, CircuitState]] = []

    def broken(breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("listener bug")

    def broken_subscriber(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, success_threshold=1, timeout_seconds=1.0),
        clock=clock,
        on_state_change=broken,
    )
    cb.add_listener(lambda b, old, new: seen.append((b.name, old, new)))
    cb.subscribe(broken_subscriber)
    with caplog.at_level(logging.ERROR, logger="codomyrmex.service_mesh"):
        assert isinstance(outcome(flavour, cb, boom), Boom)  # the call's own error, nothing else
        clock.advance(1.0)
        assert outcome(flavour, cb, ok) == "ok"
        cb.force_open()
    assert seen == [
        ("svc", CLOSED, OPEN),
        ("svc", OPEN, HALF_OPEN),
        ("svc", HALF_OPEN, CLOSED),
        ("svc", CLOSED, FORCED_OPEN),
    ]
    logged = [r for r in caplog.records if r.exc_info is not None]
    listener_errors = [r for r in logged if "state listener of circuit svc" in r.getMessage()]
    subscriber_errors = [r for r in logged if "event listener" in r.getMessage()]
    assert len(listener_errors) == len(subscriber_errors) == 4


def test_listeners_can_be_removed_also_as_bound_methods(clock: Any) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.states: list[CircuitState] = []
            self.events: list[Event] = []

        def on_state_change(self, b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
            self.states.append(new)

        def on_event(self, event: Event) -> None:
            self.events.append(event)

    recorder = Recorder()
    cb = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    cb.add_listener(recorder.on_state_change)
    cb.subscribe(recorder.on_event)
    cb.force_open()
    cb.remove_listener(recorder.on_state_change)  # a new bound-method object, equal to the first
    cb.unsubscribe(recorder.on_event)
    cb.reset()
    assert recorder.states == [FORCED_OPEN]
    assert recorder.events == [StateTransition("svc", CLOSED, FORCED_OPEN)]
    cb.remove_listener(recorder.on_state_change)  # unknown now: ignored
    cb.unsubscribe(print)


def test_rejections_are_published_with_their_reason(clock: Any) -> None:
    events: list[Event] = []
    cb = CircuitBreaker(
        "svc",
        CircuitBreakerConfig(failure_threshold=1, half_open_max_calls=1, timeout_seconds=1.0),
        clock=clock,
    )
    cb.subscribe(events.append)
    outcome(Sync, cb, boom)
    outcome(Sync, cb, ok)  # circuit_open
    clock.advance(1.0)
    with cb.permit():
        outcome(Sync, cb, ok)  # half_open_full
    cb.force_open()
    outcome(Sync, cb, ok)  # forced_open
    assert [e.reason for e in events if isinstance(e, CallRejected)] == [
        "circuit_open",
        "half_open_full",
        "forced_open",
    ]
    assert [(e.old, e.new) for e in events if isinstance(e, StateTransition)] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, FORCED_OPEN),
    ]


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("failure_rate_threshold", 0.0, ValueError),
        ("failure_rate_threshold", 100.5, ValueError),
        ("slow_call_rate_threshold", 0.0, ValueError),
        ("slow_call_duration_threshold", -1.0, ValueError),
        ("sliding_window_type", "sessions", ValueError),
        ("sliding_window_size", 0, ValueError),
        ("minimum_number_of_calls", 0, ValueError),
        ("record_exceptions", [Boom], TypeError),
        ("ignore_exceptions", (Boom, "x"), TypeError),
        ("failure_predicate", "yes", TypeError),
        ("result_predicate", 3, TypeError),
        ("open_backoff_multiplier", 0.5, ValueError),
        ("max_open_seconds", math.inf, ValueError),
    ],
)
def test_bad_policy_options_fail_naming_the_field(field: str, value: Any, error: type) -> None:
    with pytest.raises(error, match=field):
        CircuitBreakerConfig(**{field: value})


class _SyncFlavour:
    """The sync flavour, for tests about the state machine rather than the call path."""

    is_async = False

    @staticmethod
    def breaker(cb: CircuitBreaker, fn: Callable[..., Any]) -> Any:
        return cb.execute(fn)


Sync = _SyncFlavour()


@pytest.mark.parametrize(
    "config",
    [
        CircuitBreakerConfig(result_predicate=lambda result: result == 503),
        CircuitBreakerConfig(failure_rate_threshold=50.0, slow_call_duration_threshold=1.0),
    ],
    ids=["result-predicate", "slow-calls"],
)
def test_a_timed_breaker_decorates_methods_too(config: CircuitBreakerConfig) -> None:
    """Breakers that time calls or judge results wrap methods like any other breaker."""
    from codomyrmex.service_mesh import Mesh, with_circuit_breaker

    mesh = Mesh()

    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @with_circuit_breaker("timed-method", config, mesh=mesh)
        def get(self, status: int) -> int:
            self.calls += 1
            return status

    client = Client()
    assert client.get(200) == 200
    assert client.get(503) == 503
    assert client.calls == 2
    assert Client.get.__name__ == "get"
