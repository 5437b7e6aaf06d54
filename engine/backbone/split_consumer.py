"""A worker's partitions over two consumers: records it wrote itself fetched in bulk, others' promptly.

With local hops, most records a worker reads are copies of what it wrote and handed over in memory:
they come back only to be committed, so the bulk consumer lets the broker hold its fetches until
enough bytes gather (config.LOCAL_FETCH_*), which keeps the broker's CPU low. A record another worker
wrote for this one (a step whose next step runs elsewhere: a multiplier below the worker count, or a
unit in the middle of a handover) is waited for, so the partitions such records land on are read by
a second, prompt consumer (the broker answers its fetch as soon as a record arrives). Which pairs are
prompt follows the routing table (``prompt()``); a pair that changes sides is released by one
consumer and taken up by the other from the offset after the last record handed on, so nothing is
skipped or handed on twice. Both consumers open when the worker starts.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping

from headrace.engine.backbone.consumer import TP, PartitionConsumer


class SplitConsumer:
    """The PartitionConsumer interface the units use, over a bulk and an optional prompt consumer."""

    def __init__(self, bulk: PartitionConsumer, prompt: PartitionConsumer | None = None) -> None:
        self.bulk = bulk
        self.prompt_consumer = prompt
        self._prompt: frozenset[TP] = frozenset()
        self._where: dict[TP, PartitionConsumer] = {}  # who reads each pair asked for
        self._lock = asyncio.Lock()  # changes are applied one at a time, in the order asked
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        """Open both consumers now: each learns where every topic's partitions live before it is
        given any, so pairs moved to the prompt side at a rebalance are fetched at once (opened on its
        first pairs, it spent 100-150 ms learning them while a unit handed over waited for them)."""
        self.bulk.start()
        if self.prompt_consumer is not None:
            self.prompt_consumer.start()
        self._started = True

    def stop(self) -> None:
        self.bulk.stop()
        if self.prompt_consumer is not None and self.prompt_consumer.started:
            self.prompt_consumer.stop()

    def hold(self, topics: frozenset[str]) -> None:
        """Fetch nothing more of these topics until told otherwise, on either side (backpressure)."""
        for side in self._sides():
            side.hold(topics)

    def reading(self, prompt: bool) -> frozenset[TP]:
        """The pairs read now by the prompt (True) or the bulk (False) consumer."""
        side = self.prompt_consumer if prompt else self.bulk
        return frozenset(tp for tp, c in self._where.items() if c is side)

    def change(
        self,
        add: Mapping[TP, int] | None = None,
        drop: Iterable[TP] = (),
        applied: Callable[[set[TP]], None] | None = None,
    ) -> asyncio.Future[None]:
        """As PartitionConsumer.change, each pair on its side; ``applied`` is called, in order with
        each side's records, with the pairs of ``add`` that side now reads from the offsets given."""
        return asyncio.ensure_future(self._change(dict(add or {}), set(drop), applied))

    def prompt(self, tps: frozenset[TP]) -> asyncio.Future[None]:
        """From now on these pairs (when read) are read by the prompt consumer, the rest in bulk."""
        self._prompt = tps if self.prompt_consumer is not None else frozenset()
        return asyncio.ensure_future(self._change({}, set()))

    def _side(self, tp: TP) -> PartitionConsumer:
        if tp in self._prompt and self.prompt_consumer is not None:
            return self.prompt_consumer
        return self.bulk

    def _sides(self) -> list[PartitionConsumer]:
        return [self.bulk] if self.prompt_consumer is None else [self.bulk, self.prompt_consumer]

    async def _change(
        self, add: dict[TP, int], drop: set[TP], applied: Callable[[set[TP]], None] | None = None
    ) -> None:
        waits: list[asyncio.Future[None]] = []
        async with self._lock:
            for side in self._sides():
                gone = {tp for tp in drop if tp not in add and self._where.get(tp) is side}
                if gone:
                    side.change(drop=gone)  # applied in order on that consumer's thread
                    for tp in gone:
                        del self._where[tp]
            # pairs read on the wrong side (asked for again, or the prompt set changed): released
            # there, then read on the right side from where they had got to
            moving = {tp: c for tp, c in self._where.items() if c is not self._side(tp)}
            starts: dict[TP, int] = {}
            for side in self._sides():
                leaving = [tp for tp, c in moving.items() if c is side]
                if leaving:
                    starts.update(await side.release(leaving))
            for tp in moving:
                del self._where[tp]
            for tp, offset in add.items():
                starts[tp] = min(offset, starts.get(tp, offset))
            for side in self._sides():
                pairs = {tp: offset for tp, offset in starts.items() if self._side(tp) is side}
                if not pairs:
                    continue
                self._where.update(dict.fromkeys(pairs, side))
                mine = set(pairs) & add.keys()
                hook = functools.partial(applied, mine) if applied is not None and mine else None
                waits.append(side.change(add=pairs, applied=hook))
        if waits:
            await asyncio.gather(*waits)
