"""Commit groups: each unit's progress is kept under a consumer group of its own, by the admin API.

A unit's records are read by one worker's consumer (manual assignment) among other units' records,
and two units on different workers may read the same partition (two pipelines sharing a model), so
offsets are committed per unit resource, not per consumer: ``<prefix>-<ns>-dataflow-<pipeline>``
and ``<prefix>-<ns>-modelgateway-<slot>``, as Seldon's dataflow engine keeps one application (and
group) per pipeline. These groups have no members, so the admin API may write their offsets. Every
call blocks: run it off the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from headrace.engine.sharding import PIPELINE, Unit

log = logging.getLogger("headrace.groups")

TP = tuple[str, int]

TIMEOUT_S = 10.0
# the group's coordinator is not there yet (a fresh broker creating or loading its offsets topic)
_RETRIABLE = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
}


class GroupError(Exception):
    """The broker could not answer (e.g. a topic that does not exist yet)."""


def group_of(unit: Unit, prefix: str, namespace: str) -> str:
    role = "dataflow" if unit.kind == PIPELINE else "modelgateway"
    return f"{prefix}-{namespace}-{role}-{unit.name}"


class GroupOffsets:
    def __init__(self, conf: dict[str, Any], client: Any = None) -> None:
        self._conf = dict(conf)
        self._client = client if client is not None else AdminClient(conf)
        # asks partitions' ends (its group id is never used: it commits nothing); it looks at the
        # topics' metadata every second, so a topic created after it first asked is found soon
        self._watermarks = Consumer(
            {**self._conf, "group.id": "headrace-watermarks", "topic.metadata.refresh.interval.ms": 1000}
        )

    def committed(self, group: str, tps: Iterable[TP]) -> dict[TP, int]:
        """The group's committed offset of each partition (-1 where it has none).

        Read by a consumer of that group (never subscribing), not by the admin API: librdkafka's
        ListConsumerGroupOffsets crashes the process when the broker answers "not coordinator" (as a
        fresh broker does while it loads its offsets topic; librdkafka issue 5040)."""
        wanted = [TopicPartition(t, p) for t, p in sorted(set(tps))]
        if not wanted:
            return {}
        consumer = Consumer({**self._conf, "group.id": group, "enable.auto.commit": False})
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while True:
                try:
                    result = consumer.committed(wanted, timeout=max(0.1, deadline - time.monotonic()))
                    break
                except KafkaException as exc:
                    code = exc.args[0].code() if exc.args else None
                    if code not in _RETRIABLE or time.monotonic() >= deadline:
                        raise GroupError(f"offsets of {group}: {exc}") from None
                    time.sleep(0.1)
        finally:
            consumer.close()
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else -1 for tp in result}

    def latest(self, tps: Iterable[TP]) -> dict[TP, int]:
        """Each partition's end (the offset the next record gets).

        Asked of the broker by a consumer (never subscribing), not by the admin API: an AdminClient
        that once asked about a topic before it existed keeps answering "no leaders found" for
        minutes after it is created (its metadata cache), which stalled a pipeline's start. A long
        lived consumer has the same blind spot for a while (it refreshes topics' metadata every
        second), so a partition it does not know yet is asked of a fresh one."""
        out: dict[TP, int] = {}
        unknown: list[TopicPartition] = []
        wanted = sorted(set(tps))
        if not wanted:
            return out
        try:
            # one ListOffsets request per leader for all of them (timestamp -1: the end)
            ends = self._watermarks.offsets_for_times(
                [TopicPartition(t, p, OFFSET_END) for t, p in wanted], timeout=TIMEOUT_S
            )
        except KafkaException:
            ends = [TopicPartition(t, p, OFFSET_END) for t, p in wanted]
        for end in ends:
            if end.error is None and end.offset >= 0:
                out[(end.topic, end.partition)] = int(end.offset)
                continue
            tp = TopicPartition(end.topic, end.partition)
            try:
                _, high = self._watermarks.get_watermark_offsets(tp, timeout=TIMEOUT_S, cached=False)
            except KafkaException:
                unknown.append(tp)
                continue
            out[(end.topic, end.partition)] = int(high)
        if unknown:
            fresh = Consumer({**self._conf, "group.id": "headrace-watermarks"})
            try:
                for tp in unknown:
                    try:
                        _, high = fresh.get_watermark_offsets(tp, timeout=TIMEOUT_S, cached=False)
                    except KafkaException as exc:
                        raise GroupError(f"end of {tp.topic}[{tp.partition}]: {exc}") from None
                    out[(tp.topic, tp.partition)] = int(high)
            finally:
                fresh.close()
        for (topic, partition), high in out.items():
            if high < 0:
                raise GroupError(f"end of {topic}[{partition}] not known yet")
        return out

    def commit(self, group: str, offsets: Mapping[TP, int]) -> None:
        if not offsets:
            return
        parts = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        futures = self._client.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, parts)])
        try:
            futures[group].result(timeout=TIMEOUT_S)
        except (KafkaException, TimeoutError) as exc:
            raise GroupError(f"commit of {group}: {exc}") from None

    def close(self) -> None:
        self._watermarks.close()

    def starts(self, group: str, tps: Iterable[TP]) -> dict[TP, int]:
        """Where a unit taking these partitions begins: the group's committed offset, or the end for a
        partition the group never committed — which is committed at once, so a worker that dies
        before its first commit resumes there rather than at the end again."""
        tps = sorted(set(tps))
        committed = self.committed(group, tps)
        fresh = [tp for tp in tps if committed.get(tp, -1) < 0]
        out = {tp: committed[tp] for tp in tps if committed.get(tp, -1) >= 0}
        if fresh:
            ends = self.latest(fresh)
            self.commit(group, ends)
            out.update(ends)
        return out
