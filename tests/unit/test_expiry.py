"""The model gateway's call deadlines on one timer: an ended call is never cancelled, a late one is."""

from __future__ import annotations

import asyncio

from headrace.engine.gateways.expiry import Expiry


def test_a_call_that_outlives_its_deadline_is_cancelled_and_told_so() -> None:
    async def run() -> None:
        expiry = Expiry(0.02, asyncio.get_running_loop())
        gate = asyncio.Event()

        async def call() -> str:
            me = asyncio.current_task()
            assert me is not None
            ticket = expiry.begin(me)
            try:
                await gate.wait()
            except asyncio.CancelledError:
                assert expiry.end(ticket)  # cancelled by its deadline, not by someone else
                me.uncancel()
                return "timed out"
            return "answered"

        assert await asyncio.wait_for(call(), 1.0) == "timed out"
        assert len(expiry) == 0

    asyncio.run(run())


def test_calls_that_end_in_time_are_never_cancelled_later() -> None:
    async def run() -> None:
        expiry = Expiry(0.03, asyncio.get_running_loop())
        me = asyncio.current_task()
        assert me is not None
        for _ in range(100):
            ticket = expiry.begin(me)
            assert not expiry.end(ticket)
        slow = expiry.begin(me)
        await asyncio.sleep(0.01)
        assert not expiry.end(slow)  # ended before its deadline
        await asyncio.sleep(0.06)  # past all of them: this task was not cancelled
        assert me.cancelling() == 0
        assert len(expiry) == 0
        expiry.close()

    asyncio.run(run())


def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    async def run() -> None:
        expiry = Expiry(10.0, asyncio.get_running_loop())
        seen: list[bool] = []

        async def call() -> None:
            me = asyncio.current_task()
            assert me is not None
            ticket = expiry.begin(me)
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                seen.append(expiry.end(ticket))
                raise

        task = asyncio.ensure_future(call())
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert seen == [False]
        expiry.close()

    asyncio.run(run())
