"""The hedging stage of :class:`~..proxy.ServiceProxy`: the decisions, shared by threads and tasks.

A hedged call starts its first attempt, and another on an instance not yet tried
whenever the hedging delay passes with no answer (or at once when an attempt
fails), up to ``max_hedged_attempts``. The first success wins. :class:`_Hedge`
makes every decision (may a hedge start, what a failure means, how the call
ends); the sync loop (attempts on threads) and the async loop (attempts as tasks)
only start attempts and wait.

The retry controls apply as to a retried call: ``disable_retries()`` and
``set_testing(attempts=n)`` cap the attempts, a hedged call inside a call being
retried makes one attempt (unless the policy is ``nested``), a failure that
``retry_on`` does not retry ends the call at once (gRPC's "fatal status"),
``max_elapsed`` stops new hedges and bounds each attempt, and the retry budget is
charged as for retries (a breaker rejection costs nothing).

Sync attempts cannot be cancelled: a loser that is still running when the call
ends keeps its bulkhead slot until it finishes, and its late outcome counts as
nothing (for the breaker and the balancer), as a cancelled async loser's does.
A sync attempt that outlives ``attempt_timeout`` is a ``TimeoutError`` for the
call at once, and for the breaker when it ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import CircuitOpenError
from ...load_balancer import ABORTED, ServiceInstance
from ...retry.engine import IN_RETRY
from ...timers import Timer
from .bulkhead import Bulkhead
from .timeouts import timed_attempt

if TYPE_CHECKING:
    from ..proxy import ServiceProxy

__all__ = ["RejectedResult", "hedged", "hedged_async"]


class RejectedResult(Exception):
    """A hedged attempt's result that ``retry_on_result`` rejected: it loses the race.

    Internal to hedging; when every hedge ends so, the last such result is returned.
    """

    def __init__(self, result: Any) -> None:
        super().__init__(result)
        self.result = result


class _Abandoned(BaseException):
    """A sync attempt that ended after its call had: its outcome counts as nothing."""


class _Hedge:
    """One hedged call's state and decisions (never shared between calls)."""

    __slots__ = (
        "budget",
        "last_error",
        "last_real",
        "launched",
        "limit",
        "policy",
        "proxy",
        "started",
        "stopped",
        "tried",
    )

    def __init__(self, proxy: ServiceProxy) -> None:
        policy = proxy.retry_policy
        self.proxy = proxy
        self.policy = policy
        self.budget = policy.budget
        self.limit = policy.engine.max_attempts(proxy.max_hedged_attempts)
        self.started = None if policy.max_elapsed is None else policy.clock()
        self.tried: set[str] = set()
        self.launched = 0
        self.stopped = False
        self.last_error: Exception | None = None
        self.last_real: Exception | None = None
        if self.budget is not None:
            self.budget.record_request()

    def may_launch(self) -> bool:
        """Whether another attempt could start later (hedges left, deadline not passed)."""
        if self.stopped or self.launched >= self.limit:
            return False
        started, max_elapsed = self.started, self.policy.max_elapsed
        return started is None or max_elapsed is None or self.policy.clock() - started < max_elapsed

    def launch(self) -> ServiceInstance | None:
        """Acquire the instance for the next attempt, or None when none may start now.

        Raises :class:`NoHealthyInstanceError` when the first attempt finds no instance.
        A hedge goes only to an instance not yet tried in this call, and needs the budget.
        """
        if not self.may_launch():
            return None
        balancer = self.proxy.load_balancer
        instance = balancer.acquire(self.tried)
        if instance is None:
            if not self.launched:
                raise self.proxy.no_instance(None)
            return None
        if instance.id in self.tried or (  # only instances already tried are left
            self.launched and self.budget is not None and not self.budget.try_retry()
        ):
            self._unpick(instance)
            return None
        self.tried.add(instance.id)
        self.launched += 1
        return instance

    def _unpick(self, instance: ServiceInstance) -> None:
        """Give back an instance acquired for a hedge that does not start (a zero-length,
        aborted call: it teaches the balancer nothing)."""
        timer = self.proxy.attempt_clock()
        self.proxy.load_balancer.release(instance, 0.0 if timer is None else timer(), ABORTED)

    def delay(self, launched_now: bool) -> float | None:
        """How long to wait for an answer before the next hedge (None: until one ends).

        The delay runs from a launch; after a refusal (budget, no instance) the loop
        waits for an attempt to end rather than ask again on a timer.
        """
        return self.proxy.hedging_delay if launched_now and self.may_launch() else None

    def attempt_timeout(self) -> float | None:
        """The time limit of an attempt starting now: ``attempt_timeout``, within the deadline."""
        policy = self.policy
        timeout = policy.attempt_timeout
        if self.started is not None and policy.max_elapsed is not None:
            remaining = max(0.0, policy.max_elapsed - (policy.clock() - self.started))
            timeout = remaining if timeout is None else min(timeout, remaining)
        return timeout

    def succeeded(self) -> None:
        if self.budget is not None:
            self.budget.record_outcome(True)

    def failed(self, error: Exception, pending: bool) -> Exception | None:
        """An attempt failed: the exception to end the call with now, or None to go on."""
        if isinstance(error, CircuitOpenError):  # no token: a rejection is not a failure
            self.last_error = error
            self.stopped = True  # the breaker will refuse the next hedge too
            return None if pending else self.proxy.give_up(error, self.last_real)
        if self.budget is not None:
            self.budget.record_outcome(False)
        self.last_error = error
        if isinstance(error, RejectedResult):
            return None
        self.last_real = error
        if not self.policy.should_retry(error):
            self.stopped = True
            return error  # a failure retry_on does not retry ends the hedged call
        return None

    def exhausted(self) -> Any:
        """How the call ends when no attempt is running and none may start."""
        error = self.last_error
        if error is None:
            raise self.proxy.no_instance(self.last_real)
        if isinstance(error, RejectedResult):
            return error.result
        raise self.proxy.give_up(error, self.last_real)


def _one_attempt(
    proxy: ServiceProxy,
    handler_fn: Callable[..., Any],
    instance: ServiceInstance,
    args: Any,
    kwargs: Any,
) -> Any:
    """One sync hedged attempt on an already acquired instance; releases its connection."""
    timer = proxy.attempt_clock()
    start = 0.0 if timer is None else timer()
    try:
        result = handler_fn(instance, *args, **kwargs)
    except BaseException as exc:
        proxy.hedge_failed(instance, start, exc)
        raise
    return proxy.hedge_done(instance, start, result)


async def _one_attempt_async(
    proxy: ServiceProxy,
    handler_fn: Callable[..., Any],
    instance: ServiceInstance,
    args: Any,
    kwargs: Any,
    started: float | None,
) -> Any:
    """One async hedged attempt (under the attempt timeout); releases its connection."""
    timer = proxy.attempt_clock()
    start = 0.0 if timer is None else timer()
    try:
        result = await timed_attempt(
            proxy.retry_policy, started, handler_fn, instance, args, kwargs
        )
    except BaseException as exc:
        proxy.hedge_failed(instance, start, exc)
        raise
    return proxy.hedge_done(instance, start, result)


def _mark_retrying(index: int) -> None:
    """A hedge after the first counts as a retry for retry policies inside it."""
    if index:
        IN_RETRY.set(True)


# -- sync: attempts on threads ---------------------------------------------------------------

_RUNNING, _TIMED_OUT, _ABANDONED, _ENDED = range(4)


class _Attempt:
    __slots__ = ("deadline", "future", "status")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.status = _RUNNING
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class _SyncCall:
    """The threads of one sync hedged call; holds its bulkhead slot until the last ends."""

    __slots__ = ("_bulkhead", "_holders", "lock", "pending", "wake")

    def __init__(self, bulkhead: Bulkhead | None) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.pending: list[_Attempt] = []
        self._bulkhead = bulkhead
        self._holders = 1  # the caller, plus one per running thread

    def _let_go(self) -> None:
        with self.lock:
            self._holders -= 1
            last = self._holders == 0
        if last and self._bulkhead is not None:
            self._bulkhead.release()

    def spawn(
        self,
        proxy: ServiceProxy,
        handler_fn: Callable[..., Any],
        instance: ServiceInstance,
        args: Any,
        kwargs: Any,
        deadline: float | None,
        index: int,
    ) -> None:
        attempt = _Attempt(deadline)
        call = self

        def guarded(inst: ServiceInstance, *a: Any, **kw: Any) -> Any:
            """The handler, whose outcome the call may no longer want (run in the breaker)."""
            try:
                result = handler_fn(inst, *a, **kw)
            except Exception as exc:
                call._end(attempt, exc)
                raise
            call._end(attempt, None)
            return result

        def run() -> None:
            _mark_retrying(index)
            try:
                attempt.future.set_result(_one_attempt(proxy, guarded, instance, args, kwargs))
            except BaseException as exc:
                attempt.future.set_exception(exc)
            finally:
                self.wake.set()
                self._let_go()

        with self.lock:
            self._holders += 1
        self.pending.append(attempt)
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(run,), name="service-mesh-hedge")
        thread.daemon = True
        try:
            thread.start()
        except BaseException:  # no thread (interpreter shutting down, no resources)
            self.pending.remove(attempt)
            self._let_go()
            proxy.load_balancer.release(instance, 0.0, ABORTED)
            raise

    def _end(self, attempt: _Attempt, error: Exception | None) -> None:
        """The handler returned (``error`` None) or raised: does the call still want it?"""
        with self.lock:
            status = attempt.status
            attempt.status = _ENDED
        if status == _TIMED_OUT:
            raise TimeoutError("hedged attempt exceeded its timeout") from error
        if status == _ABANDONED:
            raise _Abandoned from error

    def expire(self, now: float) -> list[_Attempt]:
        """Running attempts past their deadline, now timed out (and no longer pending)."""
        expired = []
        with self.lock:
            for attempt in self.pending:
                if (
                    attempt.status == _RUNNING
                    and attempt.deadline is not None
                    and now >= attempt.deadline
                ):
                    attempt.status = _TIMED_OUT
                    expired.append(attempt)
        for attempt in expired:
            self.pending.remove(attempt)
        return expired

    def finished(self) -> list[_Attempt]:
        done = [a for a in self.pending if a.future.done()]
        for attempt in done:
            self.pending.remove(attempt)
        return done

    def nearest_deadline(self) -> float | None:
        deadlines = [a.deadline for a in self.pending if a.deadline is not None]
        return min(deadlines) if deadlines else None

    def close(self) -> None:
        """The call has ended: attempts still running are abandoned."""
        with self.lock:
            for attempt in self.pending:
                if attempt.status == _RUNNING:
                    attempt.status = _ABANDONED
        self._let_go()


def hedged(
    proxy: ServiceProxy,
    timer: Timer,
    handler_fn: Callable[..., Any],
    args: Any,
    kwargs: Any,
    bulkhead: Bulkhead | None,
) -> Any:
    """A sync hedged call; releases ``bulkhead`` (held by the caller) when its last attempt ends."""
    call = _SyncCall(bulkhead)
    try:
        hedge = _Hedge(proxy)
        while True:
            instance = hedge.launch()
            if instance is not None:
                timeout = hedge.attempt_timeout()
                deadline = None if timeout is None else timer.monotonic() + timeout
                call.spawn(proxy, handler_fn, instance, args, kwargs, deadline, hedge.launched - 1)
            if not call.pending:
                return hedge.exhausted()
            wait = hedge.delay(instance is not None)
            nearest = call.nearest_deadline()
            if nearest is not None:
                left = max(0.0, nearest - timer.monotonic())
                wait = left if wait is None else min(wait, left)
            call.wake.clear()
            if not any(a.future.done() for a in call.pending):
                timer.wait(call.wake, wait)
            for attempt in call.finished():
                error = attempt.future.exception()
                if error is None:
                    hedge.succeeded()
                    return attempt.future.result()
                if not isinstance(error, Exception):
                    raise error
                fatal = hedge.failed(error, bool(call.pending))
                if fatal is not None:
                    raise fatal
            for _ in call.expire(timer.monotonic()):
                fatal = hedge.failed(TimeoutError("hedged attempt timed out"), bool(call.pending))
                if fatal is not None:
                    raise fatal
    finally:
        call.close()


# -- async: attempts as tasks ----------------------------------------------------------------


async def hedged_async(
    proxy: ServiceProxy, timer: Timer, handler_fn: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    """An async hedged call: the first success wins, the losers are cancelled."""
    hedge = _Hedge(proxy)
    pending: set[asyncio.Future[Any]] = set()

    async def attempt(instance: ServiceInstance, index: int) -> Any:
        _mark_retrying(index)
        return await _one_attempt_async(proxy, handler_fn, instance, args, kwargs, hedge.started)

    try:
        while True:
            instance = hedge.launch()
            if instance is not None:
                pending.add(asyncio.ensure_future(attempt(instance, hedge.launched - 1)))
            if not pending:
                return hedge.exhausted()
            done = await timer.first(pending, hedge.delay(instance is not None))
            pending -= done
            for task in done:
                if task.cancelled():
                    continue
                error = task.exception()
                if error is None:
                    hedge.succeeded()
                    return task.result()
                if not isinstance(error, Exception):
                    raise error
                fatal = hedge.failed(error, bool(pending))
                if fatal is not None:
                    raise fatal
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
