"""Offset bookkeeping: commit a partition only up to the lowest record still being processed."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class _Partition:
    order: collections.deque[int] = field(default_factory=collections.deque)  # in arrival order
    done: set[int] = field(default_factory=set)
    next_offset: int = -1  # the offset to commit: everything before it is finished
    committed: int = -1


class OffsetTracker:
    """Records are begun in offset order per partition and may finish in any order."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}

    def begin(self, tp: TopicPartition, offset: int) -> None:
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        part.order.append(offset)

    def done(self, tp: TopicPartition, offset: int) -> None:
        part = self._parts.get(tp)
        if part is None:
            return
        order = part.order
        if order and order[0] == offset:
            order.popleft()
            part.next_offset = offset + 1
            done = part.done
            while order and order[0] in done:
                finished = order.popleft()
                done.discard(finished)
                part.next_offset = finished + 1
        else:
            part.done.add(offset)

    def in_flight(self, tp: TopicPartition) -> int:
        part = self._parts.get(tp)
        return len(part.order) - len(part.done) if part is not None else 0

    def positions(self) -> dict[TopicPartition, int]:
        """Per partition, the offset before which everything is finished (-1: nothing yet)."""
        return {tp: part.next_offset for tp, part in self._parts.items() if part.next_offset >= 0}

    def to_commit(self) -> list[tuple[str, int, int]]:
        """(topic, partition, offset) whose commit point moved since the last call."""
        out = []
        for (topic, partition), part in self._parts.items():
            if part.next_offset > part.committed:
                out.append((topic, partition, part.next_offset))
                part.committed = part.next_offset
        return out

    def forget(self, tp: TopicPartition) -> None:
        self._parts.pop(tp, None)
