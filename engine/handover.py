"""Takes and hands over a worker's units (engine/ownership.py): where a unit starts reading (its
last owner's fence, else its group's offsets), topics added to an active unit, and the drain-first
handover — stop taking calls, flush, take the fence, finish what is below it, list what waits in
joins for the next owner, commit the fence for the unit's group."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from headrace.config.settings import Settings
from headrace.engine import topics as t
from headrace.engine.backbone.groups import GroupError, GroupOffsets
from headrace.engine.backbone.loopback import LoopbackProducer
from headrace.engine.backbone.producer import AsyncProducer
from headrace.engine.backbone.split_consumer import SplitConsumer
from headrace.engine.dataflow.runner import DataflowRunner
from headrace.engine.ownership import ACTIVE, DRAINING, TAKING, TP, Held, Holdings
from headrace.engine.sharding import PIPELINE, Unit, slot_of
from headrace.gateway.control import Handover, UnitRoute

log = logging.getLogger("headrace.node")

RETRY_S = 0.25  # a unit whose topics do not exist yet is tried again after this
DRAIN_POLL_S = 0.005


class UnitKeeper:
    """A worker's units' comings and goings; the node decides which to take and which to let go."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        topics: t.Topics,
        holdings: Holdings,
        groups: GroupOffsets,
        consumer: SplitConsumer,
        admin: ThreadPoolExecutor,
        dataflow: DataflowRunner,
        writers: Sequence[LoopbackProducer],
        producers: Callable[[], list[AsyncProducer]],
        models: Callable[[], Iterable[str]],
        awaited: Callable[[], set[TP]],
        mark_running: Callable[[], None],
        notify: Callable[[], None],
        reconcile: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.topics = topics
        self.holdings = holdings
        self.groups = groups
        self.consumer = consumer
        self._admin = admin
        self.dataflow = dataflow
        self.writers = writers
        self.producers = producers
        self.models = models  # the models of the routing table
        self.awaited = awaited  # partitions callers wait on for answers
        self.mark_running = mark_running
        self.notify = notify
        self.reconcile = reconcile
        self.assigned: set[TP] = set()  # what the consumer was asked to read
        # what this worker handed over, for the unit's next owner: records to handle again (they
        # waited in joins), by unit
        self.released: dict[str, Handover] = {}

    def reads_of(self, unit: Unit) -> tuple[set[TP], set[TP]]:
        """(partitions the unit reads for its group, partitions read for callers' answers)."""
        p = unit.partition
        if unit.kind == PIPELINE:
            entry = self.dataflow.graphs.get(unit.name)
            grouped = {(topic, p) for topic in entry[0].reads} if entry is not None else set()
            replies = {(self.topics.pipeline_outputs(unit.name), p), (self.topics.errors, p)}
            return grouped, replies
        slot = int(unit.name)
        consumers = self.settings.modelgateway_max_num_consumers
        models = [m for m in self.models() if slot_of(m, consumers) == slot]
        grouped = {(self.topics.model_inputs(m), p) for m in models}
        replies = {(self.topics.model_outputs(m), p) for m in models} | {(self.topics.errors, p)}
        return grouped, replies

    async def _admin_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.loop.run_in_executor(self._admin, fn, *args)

    async def take(self, held: Held, route: UnitRoute) -> None:
        """Start a unit: its group's offsets (or the partitions' ends), records its last owner asks to
        be handled again, then the consumer reads from there."""
        handed = {(t, p): o for t, p, o in route.starts}
        began = self.loop.time()
        while self.holdings.get(held.unit) is held:
            grouped, replies = self.reads_of(held.unit)
            # its answers' partitions are needed from now: one read here only for a unit that goes
            # while this one's offsets are looked up must not be dropped (it is not in ``fresh``)
            held.replies = set(replies)
            try:
                # where its last owner's fence is, when it handed the unit over; else its group's offsets
                starts = {tp: handed[tp] for tp in grouped if tp in handed}
                if len(starts) < len(grouped):
                    looked = await self._admin_call(self.groups.starts, held.group, grouped - set(starts))
                    starts.update(looked)
                fresh = replies - grouped - self.assigned
                ends = await self._admin_call(self.groups.latest, fresh) if fresh else {}
            except GroupError as exc:
                log.debug("unit %s not ready: %s", held.unit, exc)
                await asyncio.sleep(RETRY_S)
                continue
            looked_up = self.loop.time()
            held.reads = dict(starts)
            held.replay = {(tp, p, o) for tp, p, o in route.replay if (tp, p) in grouped}
            held.generation = route.generation
            self.holdings.reindex()
            begin = dict(ends)
            for tp, offset in starts.items():
                begin[tp] = min([offset, *(o for (x, y, o) in held.replay if (x, y) == tp)])
            try:
                await self._read(begin, held)
            except Exception as exc:
                log.warning("unit %s: the consumer could not take it: %s", held.unit, exc)
                await asyncio.sleep(RETRY_S)
                continue
            if self.holdings.get(held.unit) is held and held.state == TAKING:
                self.holdings.set_state(held, ACTIVE)
                now = self.loop.time()
                log.info(
                    "unit %s taken in %.0f ms (offsets %.0f, consumer %.0f ms)%s",
                    held.unit,
                    (now - began) * 1000,
                    (looked_up - began) * 1000,
                    (now - looked_up) * 1000,
                    " (handed over)" * bool(handed),
                )
                self.mark_running()
                self.notify()
            return

    async def extend(self, held: Held) -> None:
        """An active unit whose topics changed (a new version of its pipeline, a model loaded into its
        slot): read the new ones from its group's offsets, stop reading the dropped ones."""
        grouped, replies = self.reads_of(held.unit)
        new = grouped - set(held.reads)
        gone = set(held.reads) - grouped
        if gone:
            for tp in gone:
                held.reads.pop(tp, None)
        held.replies = set(replies)
        begin: dict[TP, int] = {}
        try:
            if new:
                starts = await self._admin_call(self.groups.starts, held.group, new)
                held.reads.update(starts)
                begin.update(starts)
            fresh = replies - grouped - self.assigned
            if fresh:
                begin.update(await self._admin_call(self.groups.latest, fresh))
        except GroupError as exc:
            log.debug("unit %s: new topics not ready: %s", held.unit, exc)
            self.loop.call_later(RETRY_S, self.reconcile)
            return
        self.holdings.reindex()
        if begin:
            await self._read(begin, held)
        self.unread_unused()
        self.mark_running()

    async def _read(self, begin: dict[TP, int], held: Held) -> None:
        """Read these partitions from these offsets for ``held``, which takes none of their records
        until the consumer has applied the change: one read already (for another unit here) may
        still have copies from past the unit's start on their way, and taking one of those would
        skip the records before it that the rewind delivers again."""
        tps = set(begin)
        self.assigned |= tps
        held.positioning |= tps
        change = self.consumer.change(add=begin, applied=held.positioned)
        change.add_done_callback(functools.partial(_unless_applied, held, tps))
        # shielded: a take cancelled meanwhile (its unit moved again) must not stop the change half
        # way, with a pair released by one of the consumers and not yet taken up by the other
        await asyncio.shield(change)

    def unread_unused(self) -> None:
        """Stop reading partitions no held unit reads and no caller waits on."""
        needed = self.holdings.reading() | self.awaited()
        drop = self.assigned - needed
        if drop:
            self.assigned -= drop
            self.consumer.change(drop=drop)

    def start_drain(self, held: Held) -> None:
        if held.task is not None and not held.task.done():
            held.task.cancel()
        if held.state == TAKING and not held.touched:  # it handled nothing: nothing to hand over
            self.holdings.remove(held.unit)
            self.unread_unused()
            return
        self.holdings.set_state(held, DRAINING)
        held.task = asyncio.ensure_future(self._drain(held))
        self.notify()

    async def _drain(self, held: Held) -> None:
        """Hand a unit over without losing or repeating a record: new calls no longer use its
        partition; once everything this worker wrote to its partition is acknowledged, the fence is
        taken (the partitions' ends); what is below it is finished here (a pipeline's partial batches
        are written, records waiting in joins are listed for the next owner, who handles them
        again); the fence is committed for the unit's group, where the next owner starts."""
        unit = held.unit
        began = self.loop.time()
        deadline = began + self.settings.grace_period_s
        partition = unit.partition
        phases: list[tuple[str, float]] = []
        pending = [f for w in self.writers for f in w.pending(partition)]
        if pending:
            # send what lingers now rather than at the end of its linger
            await self._admin_call(self._flush_producers)
            await asyncio.wait(pending, timeout=max(0.0, deadline - self.loop.time()))
        phases.append(("flush", self.loop.time()))
        try:
            held.fence_at(await self._admin_call(self.groups.latest, list(held.reads)))
        except GroupError as exc:
            log.warning("unit %s: no fence (%s); handing over from its last commit", unit, exc)
            held.fence = dict(held.reads)
        phases.append(("fence", self.loop.time()))
        if unit.kind == PIPELINE:
            self.dataflow.batcher.flush_pipeline(unit.name)
        tracker = self.holdings.trackers[held.group]
        while self.loop.time() < deadline and not held.caught_up(self.holdings.trackers):
            if held.parked and self._only_joins_left(held):
                break  # only records waiting in joins are left: their next owner handles them
            await asyncio.sleep(DRAIN_POLL_S)
        # records waiting in joins here, and those its last owner listed that it has not reached
        phases.append(("finish", self.loop.time()))
        replay = sorted(held.parked | held.replay)
        joins_left = bool(held.parked) and self._only_joins_left(held)
        finished = held.caught_up(self.holdings.trackers) or joins_left
        if unit.kind == PIPELINE:
            self.dataflow.release(unit.name, partition)
        commit = dict(held.fence or {})
        if not finished:
            # out of time: hand over from what is finished (the next owner may repeat some records)
            commit = {tp: o for tp, o in tracker.positions().items() if tp in held.reads}
            log.warning("unit %s: handed over before it finished (%s)", unit, commit)
        try:
            await self._admin_call(self.groups.commit, held.group, commit)
        except GroupError as exc:
            log.warning("unit %s: fence not committed (%s): its next owner may repeat records", unit, exc)
        phases.append(("commit", self.loop.time()))
        for tp in held.reads:
            tracker.forget(tp)
        self.holdings.remove(unit)
        self.released[str(unit)] = Handover(
            starts=sorted((t, p, o) for (t, p), o in commit.items()),
            replay=replay,
            generation=held.generation + 1,
        )
        steps, last = [], began
        for name, at in phases:
            steps.append(f"{name} {(at - last) * 1000:.0f}")
            last = at
        log.info(
            "unit %s handed over in %.0f ms (%s ms; %d records to handle again)",
            unit,
            (self.loop.time() - began) * 1000,
            ", ".join(steps),
            len(replay),
        )
        self.unread_unused()
        self.mark_running()
        self.notify()

    def _flush_producers(self) -> None:
        for producer in self.producers():
            producer.flush(1.0)

    def _only_joins_left(self, held: Held) -> bool:
        """Draining: everything below the fence was read, and what is not finished waits in joins."""
        fence = held.fence or {}
        if any(held.reads.get(tp, end) < end for tp, end in fence.items()):
            return False
        tracker = self.holdings.trackers[held.group]
        parked: dict[TP, int] = {}
        for topic, partition, _ in held.parked:
            parked[(topic, partition)] = parked.get((topic, partition), 0) + 1
        return all(tracker.in_flight(tp) <= parked.get(tp, 0) for tp in fence)


def _unless_applied(held: Held, tps: set[TP], change: asyncio.Future[None]) -> None:
    """A change that failed (or was cancelled) applies nothing: the unit stops waiting for it."""
    if change.cancelled() or change.exception() is not None:
        held.positioned(tps)
