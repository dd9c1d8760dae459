"""Bulkhead: a cap on concurrent calls with a bounded, timed wait queue, sync and async.

Waiting is real here (threads block, tasks await), but never for time to pass:
a waiter is released by another party, and ``queue_timeout`` runs on a
:class:`ManualTimer` the test advances. Every wait for another thread is bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from codomyrmex.service_mesh import Bulkhead, BulkheadFullError, ServiceMeshError
from codomyrmex.service_mesh.timers import ManualTimer, Timer

WAIT = 5.0  # upper bound on any wait for another thread or task


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for another thread to reach a state."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for another thread"
        time.sleep(0.001)


async def settle(condition: Callable[[], bool]) -> None:
    """Let other tasks run (bounded) until ``condition`` holds."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("tasks never reached the expected state")


def take(flavour: Any, bulkhead: Bulkhead) -> None:
    """Acquire a slot through the flavour's API (never waits in these tests)."""
    if flavour.is_async:
        flavour.run(bulkhead.acquire_async())
    else:
        bulkhead.acquire()


# -- both flavours ---------------------------------------------------------------------------


def test_admits_up_to_max_concurrent_then_refuses(flavour: Any) -> None:
    bulkhead = Bulkhead(3, name="orders")
    for _ in range(3):
        take(flavour, bulkhead)
    assert bulkhead.in_flight == 3
    with pytest.raises(BulkheadFullError) as caught:
        take(flavour, bulkhead)
    error = caught.value
    assert isinstance(error, ServiceMeshError)
    assert (error.name, error.max_concurrent, error.reason) == ("orders", 3, "full")
    assert "orders" in str(error)
    assert bulkhead.in_flight == 3
    bulkhead.release()
    take(flavour, bulkhead)
    assert bulkhead.in_flight == 3


def test_context_manager_frees_the_slot_whatever_happens(flavour: Any) -> None:
    bulkhead = Bulkhead(1)

    def body() -> None:
        assert bulkhead.in_flight == 1
        raise KeyError("boom")

    if flavour.is_async:

        async def main() -> None:
            async with bulkhead:
                body()

        with pytest.raises(KeyError):
            flavour.run(main())
    else:
        with pytest.raises(KeyError), bulkhead:
            body()
    assert bulkhead.in_flight == 0


def test_a_zero_queue_timeout_gives_up_at_once(flavour: Any) -> None:
    bulkhead = Bulkhead(1, max_queue=1, queue_timeout=0.0)
    take(flavour, bulkhead)
    with pytest.raises(BulkheadFullError) as caught:
        take(flavour, bulkhead)
    assert caught.value.reason == "queue_timeout"
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)


def test_extra_releases_never_go_below_zero(flavour: Any) -> None:
    bulkhead = Bulkhead(2)
    take(flavour, bulkhead)
    for _ in range(3):
        bulkhead.release()
    assert bulkhead.in_flight == 0
    take(flavour, bulkhead)
    take(flavour, bulkhead)
    assert bulkhead.in_flight == 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_concurrent": 0}, ValueError),
        ({"max_concurrent": 1.5}, TypeError),
        ({"max_concurrent": 1, "max_queue": -1}, ValueError),
        ({"max_concurrent": 1, "queue_timeout": -0.1}, ValueError),
        ({"max_concurrent": 1, "queue_timeout": float("nan")}, ValueError),
        ({"max_concurrent": 1, "name": 7}, TypeError),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error, match=next(iter(k for k in kwargs if k != "max_concurrent"), "max")):
        Bulkhead(**kwargs)


# -- threads -----------------------------------------------------------------------------------


class ThreadWaiter:
    """A thread that waits for a slot, records when it got one, and holds it until told."""

    def __init__(self, bulkhead: Bulkhead, name: str, order: list[str]) -> None:
        self.bulkhead = bulkhead
        self.name = name
        self.order = order
        self.error: BaseException | None = None
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.bulkhead.acquire()
        except BaseException as exc:
            self.error = exc
            return
        self.order.append(self.name)
        self.go.wait(WAIT)
        self.bulkhead.release()

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


def test_threads_queue_in_order_and_the_queue_is_bounded() -> None:
    bulkhead = Bulkhead(1, max_queue=2)
    bulkhead.acquire()
    order: list[str] = []
    first = ThreadWaiter(bulkhead, "first", order)
    wait_until(lambda: bulkhead.queued == 1)
    second = ThreadWaiter(bulkhead, "second", order)
    wait_until(lambda: bulkhead.queued == 2)
    with pytest.raises(BulkheadFullError) as caught:
        bulkhead.acquire()  # one running, two waiting: full
    assert caught.value.reason == "full"

    bulkhead.release()  # handed straight to the longest waiter
    wait_until(lambda: order == ["first"])
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 1)
    first.go.set()
    wait_until(lambda: order == ["first", "second"])
    second.go.set()
    first.join()
    second.join()
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


def test_a_thread_gives_up_after_the_queue_timeout_and_frees_its_place() -> None:
    timer = ManualTimer()
    bulkhead = Bulkhead(1, max_queue=1, queue_timeout=5.0, timer=timer)
    bulkhead.acquire()
    errors: list[BaseException] = []

    def queue() -> None:
        try:
            bulkhead.acquire()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=queue, daemon=True)
    thread.start()
    timer.until_waiting(1)
    assert timer.deadlines() == [5.0]  # the wait is timed by the injected timer
    timer.advance(4.999)
    assert (bulkhead.queued, errors) == (1, [])  # not yet
    timer.advance(0.001)
    thread.join(WAIT)
    [error] = errors
    assert isinstance(error, BulkheadFullError)
    assert error.reason == "queue_timeout"
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    order: list[str] = []
    waiter = ThreadWaiter(bulkhead, "next", order)  # the place is free again
    wait_until(lambda: bulkhead.queued == 1)
    bulkhead.release()
    waiter.go.set()
    waiter.join()
    assert waiter.error is None
    assert order == ["next"]


class Interrupted(BaseException):
    """An interruption (like KeyboardInterrupt) raised in a waiting thread."""


class InterruptWhenGranted(Timer):
    """A timer whose wait ends in an interruption right after the slot was handed over."""

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        self.waiting = True
        assert event.wait(WAIT)
        raise Interrupted


def test_a_thread_interrupted_just_as_its_slot_arrives_passes_the_slot_on() -> None:
    """Issue 15 item 27: the slot granted to an interrupted waiter must not leak."""
    timer = InterruptWhenGranted()
    bulkhead = Bulkhead(1, max_queue=1, timer=timer)
    bulkhead.acquire()
    errors: list[BaseException] = []

    def queue() -> None:
        try:
            bulkhead.acquire()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=queue, daemon=True)
    thread.start()
    wait_until(lambda: bulkhead.queued == 1)
    bulkhead.release()  # handed to the waiter, which is interrupted as it wakes
    thread.join(WAIT)
    assert [type(e) for e in errors] == [Interrupted]
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)  # the slot was passed on
    bulkhead.acquire()  # and can be taken again
    assert bulkhead.in_flight == 1


# -- event loop ---------------------------------------------------------------------------------


def test_tasks_queue_in_order_and_the_queue_is_bounded(run_async: Any) -> None:
    async def main() -> None:
        bulkhead = Bulkhead(1, max_queue=2)
        await bulkhead.acquire_async()
        order: list[str] = []

        async def waiter(name: str) -> None:
            async with bulkhead:
                order.append(name)
                await asyncio.sleep(0)

        first = asyncio.create_task(waiter("first"))
        await settle(lambda: bulkhead.queued == 1)
        second = asyncio.create_task(waiter("second"))
        await settle(lambda: bulkhead.queued == 2)
        with pytest.raises(BulkheadFullError):
            await bulkhead.acquire_async()
        bulkhead.release()
        await asyncio.wait_for(asyncio.gather(first, second), WAIT)
        assert order == ["first", "second"]
        assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)

    run_async(main())


def test_a_task_gives_up_after_the_queue_timeout(run_async: Any) -> None:
    async def main() -> None:
        timer = ManualTimer()
        bulkhead = Bulkhead(1, max_queue=1, queue_timeout=5.0, timer=timer)
        await bulkhead.acquire_async()
        queued = asyncio.create_task(bulkhead.acquire_async())
        await timer.until_waiting_async(1)
        timer.advance(4.999)
        await settle(lambda: False if queued.done() else timer.waiting == 1)
        assert not queued.done()
        timer.advance(0.001)
        with pytest.raises(BulkheadFullError) as caught:
            await queued
        assert caught.value.reason == "queue_timeout"
        assert caught.value.__cause__ is None
        assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)

    run_async(main())


def test_a_task_granted_its_slot_as_the_queue_timeout_passes_keeps_it(run_async: Any) -> None:
    async def main() -> None:
        timer = ManualTimer()
        bulkhead = Bulkhead(1, max_queue=1, queue_timeout=1.0, timer=timer)
        await bulkhead.acquire_async()
        queued = asyncio.create_task(bulkhead.acquire_async())
        await timer.until_waiting_async(1)
        bulkhead.release()  # granted...
        timer.advance(1.0)  # ...and timed out before the task ran again
        await queued  # it keeps the slot it was given
        assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)

    run_async(main())


def test_cancelling_a_queued_task_frees_its_place(run_async: Any) -> None:
    async def main() -> None:
        bulkhead = Bulkhead(1, max_queue=1)
        await bulkhead.acquire_async()
        doomed = asyncio.create_task(bulkhead.acquire_async())
        await settle(lambda: bulkhead.queued == 1)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
        successor = asyncio.create_task(bulkhead.acquire_async())  # the place is free
        await settle(lambda: bulkhead.queued == 1)
        bulkhead.release()
        await asyncio.wait_for(successor, WAIT)
        assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
        bulkhead.release()
        assert bulkhead.in_flight == 0

    run_async(main())


def test_a_task_cancelled_just_as_its_slot_arrives_passes_the_slot_on(run_async: Any) -> None:
    async def main() -> None:
        bulkhead = Bulkhead(1, max_queue=2)
        await bulkhead.acquire_async()
        doomed = asyncio.create_task(bulkhead.acquire_async())
        await settle(lambda: bulkhead.queued == 1)
        heir = asyncio.create_task(bulkhead.acquire_async())
        await settle(lambda: bulkhead.queued == 2)
        bulkhead.release()  # granted to `doomed`, whose wake-up is only scheduled...
        doomed.cancel()  # ...when it is cancelled
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await asyncio.wait_for(heir, WAIT)  # the slot went on to the next waiter
        assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
        bulkhead.release()
        assert bulkhead.in_flight == 0

    run_async(main())


# -- threads and an event loop sharing one bulkhead ------------------------------------------------


def test_a_thread_release_wakes_a_task_and_a_task_release_wakes_a_thread(run_async: Any) -> None:
    bulkhead = Bulkhead(1, max_queue=2)

    async def main() -> None:
        holder_go = threading.Event()

        def hold_in_a_thread() -> None:
            with bulkhead:
                holder_go.wait(WAIT)

        holder = threading.Thread(target=hold_in_a_thread, daemon=True)
        holder.start()
        await asyncio.to_thread(wait_until, lambda: bulkhead.in_flight == 1)
        task = asyncio.create_task(bulkhead.acquire_async())
        await settle(lambda: bulkhead.queued == 1)
        holder_go.set()  # the thread releases: the task is woken on its own loop
        await asyncio.wait_for(task, WAIT)
        holder.join(WAIT)
        assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)

        order: list[str] = []
        waiter = ThreadWaiter(bulkhead, "thread", order)
        await asyncio.to_thread(wait_until, lambda: bulkhead.queued == 1)
        bulkhead.release()  # the task releases: the thread is woken
        await asyncio.to_thread(wait_until, lambda: order == ["thread"])
        waiter.go.set()
        await asyncio.to_thread(waiter.join)

    run_async(main())
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


def test_a_storm_of_threads_and_tasks_never_exceeds_the_cap_and_ends_at_zero(
    run_async: Any,
) -> None:
    bulkhead = Bulkhead(3, max_queue=1000)
    lock = threading.Lock()
    running = [0]
    peak = [0]
    refused = [0]

    def enter() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])

    def leave() -> None:
        with lock:
            running[0] -= 1

    def thread_worker() -> None:
        for _ in range(200):
            with bulkhead:
                enter()
                leave()

    async def task_worker() -> None:
        for _ in range(50):
            async with bulkhead:
                enter()
                await asyncio.sleep(0)
                leave()

    async def impatient() -> None:
        try:
            await asyncio.wait_for(bulkhead.acquire_async(), 0.0001)
        except (BulkheadFullError, asyncio.TimeoutError):
            refused[0] += 1
            return
        bulkhead.release()

    async def main() -> None:
        threads = [threading.Thread(target=thread_worker, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        tasks = [asyncio.create_task(task_worker()) for _ in range(20)]
        tasks += [asyncio.create_task(impatient()) for _ in range(50)]
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for t in threads:
            await asyncio.to_thread(t.join, 30)
            assert not t.is_alive()

    run_async(main())
    assert peak[0] <= 3
    assert running[0] == 0
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


def test_a_sync_waiter_interrupted_in_the_queue_leaves_no_slot_behind() -> None:
    """An interruption (here a signal raising a BaseException) while queued frees its place."""
    import signal

    class Interrupted(BaseException):
        pass

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    bulkhead = Bulkhead(1, max_queue=1)
    bulkhead.acquire()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            bulkhead.acquire()  # queued until the signal interrupts it
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert bulkhead.queued == 0
    bulkhead.release()
    assert bulkhead.in_flight == 0
    bulkhead.acquire()  # the slot is free again, not handed to the dead waiter
    assert bulkhead.in_flight == 1
    bulkhead.release()
