"""A worker's one consumer: manual assignment of the partitions it owns, polled on its own thread.

There is no consumer-group rebalance on the hot path: the worker assigns exactly its partitions of
the topics it needs. Offsets are committed under a group id so a restarted worker resumes; a
partition never committed starts at its current end (records written before the pipeline or model
existed are not replayed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaException, Message, TopicPartition

log = logging.getLogger("headrace.consumer")

Handler = Callable[[list[Message]], None]


class PartitionConsumer:
    def __init__(
        self,
        conf: dict[str, Any],
        partitions: Iterable[int],
        loop: asyncio.AbstractEventLoop,
        handler: Handler,
        batch: int = 500,
    ) -> None:
        self._conf = {**conf, "enable.auto.commit": False, "enable.auto.offset.store": False}
        self.partitions = sorted(set(partitions))
        self._loop = loop
        self._handler = handler
        self._batch = batch
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        self._waiters: list[tuple[set[str], asyncio.Future[None]]] = []
        self._commits: list[TopicPartition] = []
        self._assigned: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-consumer", daemon=True)
        self._consumer: Consumer | None = None
        self._next_metadata = 0.0

    @property
    def started(self) -> bool:
        return self._consumer is not None

    def start(self) -> None:
        self._consumer = Consumer(self._conf)
        self._thread.start()

    def set_topics(self, topics: set[str]) -> asyncio.Future[None]:
        """Consume these topics (our partitions of each); the future completes once every one of them
        is assigned at a known position, so a request produced afterwards is never missed."""
        fut: asyncio.Future[None] = self._loop.create_future()
        with self._lock:
            self._wanted = set(topics)
            self._waiters.append((set(topics), fut))
        return fut

    def commit(self, offsets: list[tuple[str, int, int]]) -> None:
        if not offsets:
            return
        with self._lock:
            self._commits.extend(TopicPartition(t, p, o) for t, p, o in offsets)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # -- consumer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                self._sync_assignment(consumer)
                self._flush_commits(consumer)
                # consume(n, t) waits for a full batch or the timeout: block for the first record
                # only, then take whatever else is already here
                first = consumer.poll(0.05 if self._waiters else 0.2)
                if first is None:
                    continue
                msgs = [first, *consumer.consume(self._batch - 1, 0)] if self._batch > 1 else [first]
                if msgs:
                    self._loop.call_soon_threadsafe(self._handler, msgs)
            self._flush_commits(consumer, wait=True)
        except Exception:
            log.exception("consumer thread failed")
        finally:
            consumer.close()

    def _sync_assignment(self, consumer: Consumer) -> None:
        with self._lock:
            wanted = set(self._wanted)
            waiters = self._waiters
            self._waiters = []
        added = wanted - self._assigned
        removed = self._assigned - wanted
        try:
            if removed:
                gone = [TopicPartition(t, p) for t in removed for p in self.partitions]
                consumer.incremental_unassign(gone)
                self._assigned -= removed
            if added and time.monotonic() >= self._next_metadata:
                # a topic the scheduler has not created yet is assigned once it exists
                existing = set(consumer.list_topics(timeout=5).topics)
                ready = {t for t in added if t in existing}
                if ready:
                    consumer.incremental_assign(self._start_positions(consumer, ready))
                    self._assigned |= ready
                if ready != added:
                    self._next_metadata = time.monotonic() + 0.25
        except KafkaException as exc:
            log.warning("assignment of %s failed, retrying: %s", sorted(added), exc)
            self._next_metadata = time.monotonic() + 0.5
        pending = []
        for topics, fut in waiters:
            if topics <= self._assigned:
                self._loop.call_soon_threadsafe(_resolve, fut)
            elif topics <= wanted:
                pending.append((topics, fut))
            else:  # superseded by a newer set of topics
                self._loop.call_soon_threadsafe(fut.cancel)
        if pending:
            with self._lock:
                self._waiters = pending + self._waiters

    def _start_positions(self, consumer: Consumer, topics: set[str]) -> list[TopicPartition]:
        tps = [TopicPartition(t, p) for t in sorted(topics) for p in self.partitions]
        committed = consumer.committed(tps, timeout=10)
        out = []
        fresh = []
        for tp in committed:
            if tp.offset >= 0:
                out.append(TopicPartition(tp.topic, tp.partition, tp.offset))
            else:
                # never committed: start at the current end, resolved now so nothing slips past
                _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
                out.append(TopicPartition(tp.topic, tp.partition, high if high >= 0 else OFFSET_END))
                if high >= 0:
                    fresh.append(TopicPartition(tp.topic, tp.partition, high))
        if fresh:
            # and commit that start, so that a worker dying before its first commit resumes there
            # instead of at the end again (which would skip the records it was handling)
            consumer.commit(offsets=fresh, asynchronous=False)
        return out

    def _flush_commits(self, consumer: Consumer, wait: bool = False) -> None:
        with self._lock:
            commits, self._commits = self._commits, []
        if not commits:
            return
        latest: dict[tuple[str, int], TopicPartition] = {}
        for tp in commits:
            if tp.topic in self._assigned:
                latest[(tp.topic, tp.partition)] = tp
        if latest:
            try:
                if wait:
                    consumer.commit(offsets=list(latest.values()), asynchronous=False)
                else:
                    consumer.commit(offsets=list(latest.values()), asynchronous=True)
            except KafkaException as exc:
                log.warning("offset commit failed: %s", exc)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
