"""AttemptTimer: one loop timer bounding many async attempts, as asyncio.timeout would."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from codomyrmex.service_mesh.integrations.protocol.timeouts import AttemptTimer

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="uses Task.cancelling")


async def hang(forever: asyncio.Event) -> str:
    await forever.wait()
    return "late"


async def answer(value: str) -> str:
    return value


def test_an_attempt_past_its_limit_raises_timeout_error_and_leaves_no_cancellation() -> None:
    async def main() -> None:
        timer = AttemptTimer()
        assert await timer.run(5.0, answer, "ok") == "ok"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await timer.run(0.2, hang, asyncio.Event())
        assert time.monotonic() - started >= 0.15  # not before its limit
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        assert await timer.run(5.0, answer, "again") == "again"  # the timer still works

    asyncio.run(main())


def test_a_short_attempt_is_cut_off_at_its_own_limit_while_a_long_one_runs() -> None:
    async def main() -> None:
        timer = AttemptTimer()
        forever = asyncio.Event()
        armed = asyncio.Event()

        async def long_attempt() -> str:
            armed.set()
            return await hang(forever)

        long = asyncio.create_task(timer.run(30.0, long_attempt))
        await armed.wait()  # the long attempt runs: the timer is armed for 30 s
        with pytest.raises(TimeoutError):
            await timer.run(0.2, hang, forever)
        assert not long.done()  # cut alone: the timer did not wait for the 30 s one
        forever.set()
        assert await long == "late"

    asyncio.run(main())


def test_many_concurrent_attempts_each_expire() -> None:
    async def main() -> None:
        timer = AttemptTimer()
        forever = asyncio.Event()
        limits = [0.1, 0.3, 0.2, 0.4]
        results = await asyncio.gather(
            *(timer.run(limit, hang, forever) for limit in limits), return_exceptions=True
        )
        assert all(isinstance(r, TimeoutError) for r in results)

    asyncio.run(main())


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def main() -> None:
        timer = AttemptTimer()
        started = asyncio.Event()

        async def attempt() -> str:
            started.set()
            return await hang(asyncio.Event())

        task = asyncio.create_task(timer.run(30.0, attempt))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await timer.run(5.0, answer, "ok") == "ok"

    asyncio.run(main())


def test_an_outer_timeout_expiring_first_stays_the_outer_timeout() -> None:
    async def main() -> None:
        timer = AttemptTimer()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1) as outer:
                await timer.run(30.0, hang, asyncio.Event())
        assert outer.expired()

    asyncio.run(main())


def test_one_timer_serves_one_loop_after_another_and_nests() -> None:
    timer = AttemptTimer()

    async def expire() -> None:
        with pytest.raises(TimeoutError):
            await timer.run(0.1, hang, asyncio.Event())

    async def nested() -> str:
        return await timer.run(5.0, timer.run, 0.1, answer, "inner")

    async def nested_expiry() -> None:
        with pytest.raises(TimeoutError):
            await timer.run(5.0, timer.run, 0.1, hang, asyncio.Event())

    asyncio.run(expire())
    asyncio.run(expire())  # a new loop: the timer moves to it
    assert asyncio.run(nested()) == "inner"
    asyncio.run(nested_expiry())
