"""What one worker holds: its units (taking, active, draining), the partitions each reads, and which
records each handles.

A unit reads its partitions from the offset its commit group holds (``reads``: the next offset it
handles; records before it are skipped, so a partition rewound for another unit is not handled twice)
and, while draining, only below its fence — the partitions' ends once everything this worker wrote
to them was acknowledged. Records at or past the fence are its next owner's, which starts there.
Records handed over in memory carry no offset: only an active unit takes them. A draining unit
handles its records from Kafka, where their offsets say whose they are: one written while the fence
was being taken may land past it, and its next owner handles it (taking it in memory too handled it
twice: an answer written twice, seen once in a cluster test).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from headrace.engine.backbone.offsets import OffsetTracker
from headrace.engine.sharding import Unit

TP = tuple[str, int]

TAKING = "taking"
ACTIVE = "active"
DRAINING = "draining"


@dataclass(eq=False)
class Held:
    unit: Unit
    group: str
    state: str = TAKING
    reads: dict[TP, int] = field(default_factory=dict)  # partition -> next offset to handle
    replies: set[TP] = field(default_factory=set)  # partitions read for callers' answers (no group)
    fence: dict[TP, int] | None = None  # while draining, once known
    replay: set[tuple[str, int, int]] = field(default_factory=set)  # records below reads to handle again
    parked: set[tuple[str, int, int]] = field(default_factory=set)  # records waiting in joins here
    task: asyncio.Task[None] | None = None  # taking or draining it
    # it handled a record (while taking too: a partition another unit reads here delivers before the
    # unit is active); from then on it is handed over, never just dropped
    touched: bool = False
    generation: int = 0  # of the handover it started from (its own handover's is one more)
    # partitions the consumer is being (re)positioned on for this unit: a record of one that arrives
    # before the consumer applied the change is an old copy (read past ``reads`` for another unit
    # here); taking it would move ``reads`` past records the rewind is about to deliver
    positioning: set[TP] = field(default_factory=set)

    def takes(self, tp: TP, offset: int) -> bool:
        """Should this unit handle the record at ``offset`` of ``tp`` (Kafka's copy)? Advances reads."""
        start = self.reads.get(tp)
        if start is None or (self.positioning and tp in self.positioning):
            return False
        if offset < start:
            key = (tp[0], tp[1], offset)
            if key in self.replay:
                self.replay.discard(key)
                self.touched = True
                return True
            return False
        if self.fence is not None and offset >= self.fence.get(tp, 0):
            return False
        self.reads[tp] = offset + 1
        self.touched = True
        return True

    def positioned(self, tps: Iterable[TP]) -> None:
        """The consumer now reads these partitions from where this unit asked (called in order with
        the records it hands on): what comes next is the unit's to take."""
        self.positioning.difference_update(tps)

    @property
    def committed(self) -> bool:
        """Is its progress committed: past taking, or it handled records while being taken."""
        return self.state != TAKING or self.touched

    def fence_at(self, ends: dict[TP, int]) -> None:
        """Draining: the partitions' ends, as the broker gave them, become the fence, raised past every
        record handled here (one that landed just after the broker answered may have been handled
        before the answer came back; its next owner must not handle it again)."""
        self.fence = {tp: max(end, self.reads.get(tp, end)) for tp, end in ends.items()}

    def takes_local(self) -> bool:
        """Should this unit handle a record handed over in memory (offset not known yet)?"""
        return self.state == ACTIVE

    def caught_up(self, trackers: dict[str, OffsetTracker]) -> bool:
        """Draining: everything below the fence has been read and finished."""
        if self.fence is None:
            return False
        tracker = trackers.get(self.group)
        for tp, end in self.fence.items():
            if self.reads.get(tp, end) < end:
                return False
            if tracker is not None and tracker.in_flight(tp):
                return False
        return True


class Holdings:
    """The units this worker holds, indexed by the partitions they read."""

    def __init__(self) -> None:
        self.units: dict[Unit, Held] = {}
        self._readers: dict[TP, list[Held]] = {}
        self._local: set[TP] = set()
        self._active: dict[tuple[str, str], tuple[int, ...]] = {}
        self.trackers: dict[str, OffsetTracker] = {}

    def __iter__(self) -> Iterator[Held]:
        return iter(list(self.units.values()))

    def get(self, unit: Unit) -> Held | None:
        return self.units.get(unit)

    def add(self, held: Held) -> None:
        self.units[held.unit] = held
        self.trackers.setdefault(held.group, OffsetTracker())

    def remove(self, unit: Unit) -> Held | None:
        held = self.units.pop(unit, None)
        if held is not None:
            self.reindex()
        return held

    def reindex(self) -> None:
        readers: dict[TP, list[Held]] = {}
        answers: dict[TP, list[Held]] = {}
        for held in self.units.values():
            for tp in held.reads:
                readers.setdefault(tp, []).append(held)
            for tp in held.replies:
                answers.setdefault(tp, []).append(held)
        self._readers = readers
        # partitions an active unit reads (for its work or its callers' answers): records written
        # to them are handed over in memory
        self._local = {tp for tp, hs in readers.items() if any(h.state == ACTIVE for h in hs)}
        self._local |= {tp for tp, hs in answers.items() if any(h.state == ACTIVE for h in hs)}
        active: dict[tuple[str, str], list[int]] = {}
        for held in self.units.values():
            if held.state == ACTIVE:
                active.setdefault((held.unit.kind, held.unit.name), []).append(held.unit.partition)
        self._active = {key: tuple(sorted(ps)) for key, ps in active.items()}

    def readers(self, tp: TP) -> list[Held]:
        return self._readers.get(tp, [])

    def reading(self) -> set[TP]:
        """Every partition some held unit reads, for its group or for answers."""
        out: set[TP] = set()
        for held in self.units.values():
            out |= set(held.reads) | held.replies
        return out

    def active(self, kind: str, name: str) -> tuple[int, ...]:
        """Partitions of a resource this worker serves now (new calls may use them; indexed by
        ``reindex``, so a call costs one lookup)."""
        return self._active.get((kind, name), ())

    def local(self, tp: TP) -> bool:
        """A record written to ``tp`` is handed over in memory when an active unit reads it, for its
        work or for its callers' answers (kept up to date by ``reindex``, which every change of a
        unit's state or partitions calls)."""
        return tp in self._local

    def set_state(self, held: Held, state: str) -> None:
        held.state = state
        self.reindex()

    def report(self) -> dict[str, str]:
        """Every held unit and its state: taking ones too, so that a unit moved again while it was
        being taken waits for this worker to let it go (it may already be handling records)."""
        return {str(h.unit): h.state for h in self.units.values()}
