"""Deadlines of one length (the model gateway's call timeout) kept on one timer, not one per call.

``asyncio.timeout`` makes a Timeout object and a loop timer for every call and cancels the timer
when the call ends: ~4% of a worker's time at a 3-step chain's peak (py-spy, three calls a request).
All of a gateway's deadlines have the same length, so they expire in the order they began: an
OrderedDict of the open ones, the oldest first, and one timer set for the oldest. A call that
expires has its task cancelled; the task then learns from ``end()`` to tell that from other
cancellations and raises TimeoutError instead (``asyncio.timeout`` does the same).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict


class Expiry:
    def __init__(self, seconds: float, loop: asyncio.AbstractEventLoop) -> None:
        self.seconds = seconds
        self._loop = loop
        self._open: OrderedDict[int, tuple[float, asyncio.Task[object]]] = OrderedDict()
        self._gone: set[int] = set()  # expired, not yet told to their task
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, task: asyncio.Task[object]) -> int:
        """``task`` starts a call that must end within ``seconds``; returns its ticket."""
        ticket = next(self._seq)
        deadline = self._loop.time() + self.seconds
        self._open[ticket] = (deadline, task)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check)
        return ticket

    def end(self, ticket: int) -> bool:
        """The call is over; True if its task was cancelled because its deadline passed (the task
        then uncancels itself and times out)."""
        if self._open.pop(ticket, None) is not None:
            return False
        if ticket in self._gone:
            self._gone.discard(ticket)
            return True
        return False

    def __len__(self) -> int:
        return len(self._open)

    def _check(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._open:
            ticket, (deadline, task) = next(iter(self._open.items()))
            if deadline > now:
                self._timer = self._loop.call_at(deadline, self._check)
                return
            del self._open[ticket]
            if not task.done():
                self._gone.add(ticket)
                task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._open.clear()
        self._gone.clear()
