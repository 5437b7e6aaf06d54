"""A virtual clock for the dataflow's timers: call_later fires when the test advances time, not the wall."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any


class VirtualLoop:
    """call_later on a virtual clock; futures from the real loop."""

    def __init__(self, real: asyncio.AbstractEventLoop) -> None:
        self.real = real
        self.now = 0.0
        self.timers: list[tuple[float, int, Any]] = []
        self.order = itertools.count()

    def create_future(self) -> asyncio.Future[None]:
        return self.real.create_future()

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any:
        handle = Handle(callback, args)
        heapq.heappush(self.timers, (self.now + delay, next(self.order), handle))
        return handle

    def advance(self, to: float) -> None:
        """Fire every timer due before ``to`` (a record arriving exactly at expiry comes after it)."""
        while self.timers and self.timers[0][0] <= to:
            when, _, handle = heapq.heappop(self.timers)
            self.now = when
            handle.fire()
        self.now = to


class Handle:
    def __init__(self, callback: Any, args: tuple[Any, ...]) -> None:
        self.callback, self.args, self.cancelled = callback, args, False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.callback(*self.args)


def done(loop: VirtualLoop) -> asyncio.Future[None]:
    fut = loop.create_future()
    fut.set_result(None)
    return fut
