"""The attempt pipeline: pick an instance, run, record, then decide -- written once.

:class:`AttemptPipeline` holds every decision of a proxy call's attempts and
the books they keep (the balancer's connection counts and outlier feed, the
events, the retry budget, failover to untried instances). It does no I/O: the
sync and async drivers in :mod:`.proxy` call the handler (or await it) and sleep
(or ``await`` the sleep), and hand each outcome here. The CLOSED success path
stays in the drivers, flat; from an attempt's first failure on, a
:class:`ProxyCall` carries the call's state and its next step (``wait``):

- ``None``: the call ends (:meth:`ProxyCall.end` raises its last failure or
  returns its last result);
- ``0.0``: run the next attempt at once (failover to an untried instance);
- ``> 0``: sleep that long, then (deadline permitting) run the next attempt.

Internal API: the hedging stage (:mod:`.stages.hedging`) uses the names without
a leading underscore.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..circuit_breaker import CircuitState
from ..errors import CircuitOpenError, NoHealthyInstanceError
from ..events import CallFailed, CallRejected, CallSucceeded, EventListener, RetryGaveUp, publish
from ..load_balancer import ABORTED, LoadBalancer, ServiceInstance
from ..retry.engine import Attempts, RetryEngine
from .stages.hedging import RejectedResult

if TYPE_CHECKING:
    from ..circuit_breaker import CircuitBreaker
    from ..retry.options import RetryPolicy

__all__ = ["AttemptPipeline", "ProxyCall"]

_REFUSALS = {
    CircuitState.OPEN: "circuit_open",
    CircuitState.HALF_OPEN: "half_open_full",
    CircuitState.FORCED_OPEN: "forced_open",
}
"""The :class:`CallRejected` reason of a call the service's breaker refused, by its state."""


class ProxyCall(Attempts):
    """One proxy call's state once an attempt has failed (never shared between calls)."""

    __slots__ = ("failure", "last_real", "result", "tried", "wait")

    def __init__(self, started: float | None) -> None:
        super().__init__(started)
        self.tried: set[str] = set()
        self.last_real: Exception | None = None
        self.failure: Exception | None = None
        self.result: Any = None
        self.wait: float | None = None

    def end(self) -> Any:
        """How the call ends now: its last failure raised, or its last (rejected) result."""
        return RetryEngine.final(self.failure, self.result)


class AttemptPipeline:
    """The decisions of a :class:`~.proxy.ServiceProxy`'s attempts (a mixin of the proxy)."""

    __slots__ = ()

    # Provided by the proxy.
    service_name: str
    load_balancer: LoadBalancer
    circuit_breaker: CircuitBreaker
    retry_policy: RetryPolicy
    clock: Callable[[], float]
    _subscribers: tuple[EventListener, ...]
    _event_clock: Callable[[], float] | None

    def attempt_clock(self) -> Callable[[], float] | None:
        """The clock that times attempts: the balancer's when it observes calls, else the
        events' (None: nothing wants attempt times)."""
        return self.load_balancer.observe_clock or self._event_clock

    def attempt_rejected(
        self,
        call: ProxyCall | None,
        started: float | None,
        instance: ServiceInstance,
        start: float,
        result: Any,
        retry: bool,
    ) -> ProxyCall:
        """An attempt's ``result`` was rejected (already released): decide the next step."""
        return self._decide(call, started, instance, start, None, result, retry)

    def attempt_raised(
        self,
        call: ProxyCall | None,
        started: float | None,
        instance: ServiceInstance,
        start: float,
        error: BaseException,
        retry: bool,
    ) -> ProxyCall:
        """An attempt on ``instance`` raised ``error`` (being handled by the driver): release
        it and decide the next step. Anything not an ``Exception`` aborts and propagates."""
        if not isinstance(error, Exception):
            self.load_balancer.release(instance, start, ABORTED)
            raise error
        self.load_balancer.release(instance, start, error)
        return self._decide(call, started, instance, start, error, None, retry)

    def _decide(
        self,
        call: ProxyCall | None,
        started: float | None,
        instance: ServiceInstance,
        start: float,
        failure: Exception | None,
        result: Any,
        retry: bool,
    ) -> ProxyCall:
        """Record a failed attempt (``failure`` None: a rejected ``result``) in the call's
        state, made now if this was its first failure, with the wait before the next."""
        if call is None:
            call = ProxyCall(started)
        call.failure = failure
        call.result = result
        wait = call.wait = self._next_wait(call, instance, start, failure, retry)
        if wait is not None:
            call.count += 1
        return call

    def _next_wait(
        self,
        call: ProxyCall,
        instance: ServiceInstance,
        start: float,
        failure: Exception | None,
        retry: bool,
    ) -> float | None:
        """After a failed attempt (``failure`` None: a rejected result) on ``instance``: the
        wait before the next attempt, or None to end the call with its last outcome.

        A breaker rejection from inside the handler (a breaker of the caller's own) ends
        the call at once, chained to the last real failure, unless it is ``retryable``
        (one instance's breaker). Failing over to an instance not yet tried in this call
        does not wait: backoff is for when every instance has been tried.
        """
        if failure is not None:
            if self._subscribers:
                self.failed(instance, start, failure)
            if isinstance(failure, CircuitOpenError) and not failure.retryable:
                if self._subscribers:
                    publish(self._subscribers, RetryGaveUp(self.service_name, call.count, failure))
                raise self.give_up(failure, call.last_real)
            call.last_real = failure
        engine = self.retry_policy.engine
        if not retry:
            if self._subscribers:
                publish(self._subscribers, RetryGaveUp(self.service_name, 1, failure))
            if engine.budget is not None:  # as a retried call's failure would: success refunds
                engine.budget.record_outcome(False)
            return None
        call.guard()  # the nested-retry guard (see retry/engine.py)
        tried = call.tried
        tried.add(instance.id)
        failover = self.load_balancer.has_untried(tried)
        return engine.after_failure(
            call, failure, self.service_name, self._subscribers, instance.id, failover
        )

    # -- hedged attempts (see stages/hedging.py) ---------------------------------------

    def hedge_failed(self, instance: ServiceInstance, start: float, exc: BaseException) -> None:
        """A hedged attempt on ``instance`` raised: release its connection (and report a
        failure; anything not an ``Exception`` aborts)."""
        if isinstance(exc, Exception):
            self.load_balancer.release(instance, start, exc)
            if self._subscribers:
                self.failed(instance, start, exc)
        else:
            self.load_balancer.release(instance, start, ABORTED)

    def hedge_done(self, instance: ServiceInstance, start: float, result: Any) -> Any:
        """A hedged attempt on ``instance`` returned ``result``: release its connection; a
        rejected result loses the race, like a failure (RejectedResult)."""
        self.load_balancer.release(instance, start, None)
        engine = self.retry_policy.engine
        if engine.retry_on_result is not None and engine.rejects(result):
            raise RejectedResult(result)
        self.succeeded(instance, start, None, refund=False)  # the hedging loop refunds once
        return result

    # -- the books ----------------------------------------------------------------------

    def refused(self, exc: CircuitOpenError) -> None:
        """Publish the proxy's :class:`CallRejected` when its own breaker refused a call."""
        if exc.name == self.circuit_breaker.name and not exc.retryable:
            reason = _REFUSALS.get(exc.state, "circuit_open")
            publish(self._subscribers, CallRejected(self.service_name, reason))

    def rejected(self, reason: str) -> None:
        """Publish a :class:`CallRejected` for a stage's refusal (when anyone listens)."""
        if self._subscribers:
            publish(self._subscribers, CallRejected(self.service_name, reason))

    def succeeded(
        self,
        instance: ServiceInstance,
        start: float,
        calls: Attempts | None,
        refund: bool = True,
    ) -> None:
        """Close the books on a successful call: budget refund and event."""
        budget = self.retry_policy.budget
        if refund and budget is not None:
            budget.record_outcome(True)
        if self._subscribers:
            clock = self.load_balancer.observe_clock or self._event_clock or self.clock
            publish(
                self._subscribers,
                CallSucceeded(
                    self.service_name,
                    instance.id,
                    clock() - start,
                    1 if calls is None else calls.count,
                ),
            )

    def failed(self, instance: ServiceInstance, start: float, failure: Exception) -> None:
        """Publish an attempt's :class:`CallFailed`."""
        # The same clock that read ``start`` (the balancer's when it observes calls).
        clock = self.load_balancer.observe_clock or self._event_clock or self.clock
        publish(
            self._subscribers,
            CallFailed(self.service_name, instance.id, clock() - start, failure),
        )

    def no_instance(self, last_real: Exception | None) -> NoHealthyInstanceError:
        """The error of a call that found no instance to try (chained to its last failure)."""
        if self._subscribers:
            publish(self._subscribers, CallRejected(self.service_name, "no_healthy_instance"))
        error = NoHealthyInstanceError(self.service_name)
        error.__cause__ = last_real
        return error

    @staticmethod
    def give_up(failure: Exception, last_real: Exception | None) -> Exception:
        """The exception a call ends with: a rejection is chained to the last real failure."""
        if last_real is not None and last_real is not failure and failure.__cause__ is None:
            failure.__cause__ = last_real
        return failure
