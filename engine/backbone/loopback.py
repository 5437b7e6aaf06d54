"""Local hops: a record this worker writes to a partition it consumes is also handed to it in memory.

Every hop of a pipeline is still written to Kafka (the topics stay the log users read, inspect and
replay), but the next step does not wait for the broker round trip: the record is delivered to the
worker's own dispatch at once, stamped with a header naming this process incarnation. When the
same record comes back from the broker it is recognised by that stamp and skipped; its offset is
committed only once the in-memory handling has finished. A restarted worker has a new incarnation,
so records stamped by the one that died are not skipped: it processes them from the committed
offset, as it would without local hops.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

from headrace.engine.backbone.offload import OFFLOAD_HEADER, HopOffload
from headrace.engine.backbone.producer import AsyncProducer, HeaderSeq
from headrace.shm import Ref

#: The stamp header: b"<incarnation>:<sequence>", always the first header of a stamped record.
HOP_HEADER = "headrace-hop"

#: A stamped record whose copy never came back (e.g. its topic was unassigned) is forgotten after this.
FORGET_AFTER_S = 120.0


class LocalRecord:
    """A record handed over in memory (its write to Kafka is under way)."""

    __slots__ = ("_headers", "_key", "_partition", "_topic", "_value", "seq")

    def __init__(
        self,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, Any]],
        seq: int,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._key = key
        self._value = value
        self._headers = headers
        self.seq = seq

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return -1  # not known until the broker has it; never committed from here

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, Any]]:
        return self._headers

    def error(self) -> None:
        return None


class _Hop:
    __slots__ = ("born", "delivered", "early", "gone", "handled", "holders", "joined", "on_return", "parked")

    def __init__(self, born: float) -> None:
        self.handled = False  # the in-memory handling has finished
        self.gone = False  # its copy will never come back (the write failed)
        self.on_return: Callable[[], None] | None = None  # the copy came back while still handling
        self.born = born
        self.parked: Ref | None = None  # its payload's block in the offload arena, freed when settled
        self.delivered = False  # handed over in memory (its takers known)
        self.early: Callable[[], None] | None = None  # its copy, back before it was handed over
        self.holders: tuple[Any, ...] = ()  # who took it in memory (the worker's units)
        self.joined = False  # it waits in a join


class HopLedger:
    """Which stamped records are still being handled, so their copies from the broker are committed
    only after the handling is done."""

    def __init__(self, release: Callable[[Ref], None] | None = None) -> None:
        self.incarnation = os.urandom(8).hex().encode()
        self._prefix = self.incarnation + b":"
        self._seq = itertools.count()
        self._open: dict[int, _Hop] = {}
        self._release = release

    def stamp(self, parked: Ref | None = None) -> tuple[int, bytes]:
        seq = next(self._seq)
        hop = self._open[seq] = _Hop(time.monotonic())
        hop.parked = parked
        return seq, self._prefix + str(seq).encode()

    def _close(self, seq: int) -> _Hop | None:
        hop = self._open.pop(seq, None)
        if hop is not None and hop.parked is not None and self._release is not None:
            self._release(hop.parked)
        return hop

    def own(self, headers: Any) -> int | None:
        """The sequence number if these headers carry this incarnation's stamp."""
        if not headers:
            return None
        name, value = headers[0]
        if name != HOP_HEADER or not isinstance(value, bytes) or not value.startswith(self._prefix):
            return None
        try:
            return int(value[len(self._prefix) :])
        except ValueError:
            return None

    def handled_by(self, seq: int, holders: tuple[Any, ...], joined: bool = False) -> None:
        """Who took the record in memory, and whether it waits in a join there; a copy that came back
        before is dispatched now."""
        hop = self._open.get(seq)
        if hop is not None:
            hop.holders, hop.joined, hop.delivered = holders, joined, True
            if hop.early is not None:
                early, hop.early = hop.early, None
                early()

    def holders(self, seq: int) -> tuple[tuple[Any, ...], bool]:
        """(who took it in memory, whether it still waits in a join there)."""
        hop = self._open.get(seq)
        if hop is None:
            return (), False
        return hop.holders, hop.joined and not hop.handled

    def undelivered(self, seq: int) -> bool:
        """Is this (stamped, not lost) record still waiting to be handed over in memory?"""
        hop = self._open.get(seq)
        return hop is not None and not hop.delivered and not hop.gone

    def after_delivery(self, seq: int, dispatch: Callable[[], None]) -> None:
        """A copy back before its record was handed over in memory: ``dispatch`` it once it is, so the
        units taking it then do not take it twice."""
        self._open[seq].early = dispatch

    def handled(self, seq: int) -> None:
        hop = self._open.get(seq)
        if hop is None:
            return
        hop.handled = True
        if hop.on_return is not None:
            self._close(seq)
            hop.on_return()
        elif hop.gone:
            self._close(seq)

    def returned(self, seq: int, done: Callable[[], None]) -> None:
        """The broker's copy of a stamped record arrived: ``done`` (commit it) once it is handled."""
        hop = self._open.get(seq)
        if hop is None or hop.handled:
            self._close(seq)
            done()
        else:
            hop.on_return = done

    def lost(self, seq: int) -> None:
        """The write failed: no copy will come back."""
        hop = self._open.get(seq)
        if hop is None:
            return
        if hop.handled:
            self._close(seq)
        else:
            hop.gone = True

    def sweep(self, now: float | None = None) -> int:
        """Forget handled records whose copies have not come back in FORGET_AFTER_S; returns how many."""
        cutoff = (time.monotonic() if now is None else now) - FORGET_AFTER_S
        stale = []
        for seq, hop in self._open.items():  # insertion order = age order
            if hop.born > cutoff:
                break
            if hop.handled:
                stale.append(seq)
        for seq in stale:
            self._close(seq)
        return len(stale)

    def __len__(self) -> int:
        return len(self._open)


class LoopbackProducer:
    """The producer the roles write through: records for a (topic, partition) this worker consumes are
    written to Kafka and, unless the write fails at once, delivered to ``deliver`` on the next loop
    turn. Everything else is only written."""

    def __init__(
        self,
        producer: AsyncProducer,
        ledger: HopLedger,
        is_local: Callable[[str, int], bool],
        deliver: Callable[[LocalRecord], None],
        loop: asyncio.AbstractEventLoop,
        on_lost: Callable[[LocalRecord, BaseException], None] | None = None,
        enabled: bool = True,
        offload: HopOffload | None = None,
        offloadable: Callable[[str], bool] | None = None,
        remote: AsyncProducer | None = None,
        shared: Callable[[str, int], bool] | None = None,
    ) -> None:
        self.producer = producer
        # records for partitions this worker does not read (another worker waits for them) go through
        # this one (e.g. a producer that does not linger), when given; so do records this worker
        # reads that another worker reads too (``shared``), with their payload in the record
        self.remote = remote or producer
        self.shared = shared
        self.ledger = ledger
        self.is_local = is_local
        self.deliver = deliver
        self.loop = loop
        self.on_lost = on_lost
        self.enabled = enabled
        self.offload = offload
        self.offloadable = offloadable
        # the last write to each (topic, partition) through each of the two producers: a unit handed
        # over waits for these before its fence is taken, so that everything this worker wrote is
        # below it. Per producer, because a partition's records change producer when it becomes
        # shared (or stops being read here), and only one producer's writes are acknowledged in order:
        # a record lingering in the hop producer lands after a later one sent through the other
        self.last: dict[tuple[str, int, bool], asyncio.Future[None]] = {}

    def pending(self, partition: int) -> list[asyncio.Future[None]]:
        """This writer's unacknowledged last writes to any topic's ``partition``."""
        return [f for (_, p, _), f in self.last.items() if p == partition and not f.done()]

    def produce(
        self, topic: str, partition: int, key: bytes, value: bytes, headers: HeaderSeq
    ) -> asyncio.Future[None]:
        if headers and headers[0][0] == HOP_HEADER:
            headers = headers[1:]  # an upstream stamp is not this record's
        # (no record handed on carries an upstream shm reference: records handed over in memory have
        # their payload, and a consumed one with a reference is resolved without it, ResolvedRecord)
        if not self.enabled or not self.is_local(topic, partition):
            through = self.remote if self.enabled else self.producer
            written = through.produce(topic, partition, key, value, headers)
            self.last[(topic, partition, through is self.producer)] = written
            return written
        parked = None
        shared = self.shared is not None and self.shared(topic, partition)
        if (
            self.offload is not None
            and self.offloadable is not None
            and self.offloadable(topic)
            and not shared
        ):
            parked = self.offload.park(value)
        seq, stamp = self.ledger.stamp(parked[1] if parked else None)
        stamped: list[tuple[str, Any]] = [(HOP_HEADER, stamp), *headers]
        record = LocalRecord(topic, partition, key, value, stamped, seq)
        failed = functools.partial(self._failed, record)  # told only if the write fails
        if parked is None:
            through = self.remote if shared else self.producer
            written = through.produce(topic, partition, key, value, stamped, failed)
        else:  # the broker's copy carries a reference to the payload parked in shared memory
            through = self.producer
            written = through.produce(
                topic, partition, key, b"", [*stamped, (OFFLOAD_HEADER, parked[0])], failed
            )
        self.last[(topic, partition, through is self.producer)] = written
        if written.done() and (written.cancelled() or written.exception() is not None):
            self.ledger.lost(seq)
            self.ledger.handled(seq)
            exc = None if written.cancelled() else written.exception()
            if self.on_lost is not None and exc is not None:
                self.on_lost(record, exc)  # refused at once (e.g. too large): nothing goes on from here
            return written
        self.loop.call_soon(self.deliver, record)
        return written

    def _failed(self, record: LocalRecord, exc: BaseException) -> None:
        self.ledger.lost(record.seq)
        if self.on_lost is not None:
            self.on_lost(record, exc)
