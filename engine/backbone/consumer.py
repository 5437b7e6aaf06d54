"""A worker's one consumer: manual assignment of the partitions its units read, polled on its own thread.

There is no consumer-group rebalance on the hot path: the worker assigns exactly the (topic,
partition) pairs its units read, each from the offset the worker gives (its units' commit groups
keep those; see backbone/groups.py). Assigning a pair again from an earlier offset rewinds it (a unit
taken over starts before where another unit on the same pair had got to); the roles skip what they
have seen.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

log = logging.getLogger("headrace.consumer")

Handler = Callable[[list[Message]], None]

#: How long an assignment waits for a new topic's metadata (it goes ahead without it past that).
LEADERS_TIMEOUT_S = 2.0
#: How long one poll may block. A change asked meanwhile (a unit taken or handed over) waits for the
#: poll to end, after the changes asked before it: at a multiplier change a dozen units move at
#: once, and 50 ms polls made the last take wait ~200 ms.
POLL_S = 0.01
#: Batches handed to the loop and not yet handled: the thread waits (applying changes meanwhile)
#: rather than run ahead of a busy loop, so what librdkafka fetched stays bounded there, not in
#: the loop's queue (where a hold could not stop it).
AHEAD = 4
TP = tuple[str, int]


@dataclass(slots=True)
class _Change:
    add: dict[TP, int] = field(default_factory=dict)
    drop: set[TP] = field(default_factory=set)
    done: asyncio.Future[Any] | None = None
    release: bool = False  # drop, answering where each dropped pair had got to
    applied: Callable[[], None] | None = None  # run on the loop in order with the records handed on


class PartitionConsumer:
    def __init__(
        self,
        conf: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        handler: Handler,
        batch: int = 500,
    ) -> None:
        self._conf = {**conf, "enable.auto.commit": False, "enable.auto.offset.store": False}
        self._loop = loop
        self._handler = handler
        self._batch = batch
        self._lock = threading.Lock()
        self._changes: list[_Change] = []
        self._assigned: set[TP] = set()  # consumer thread only
        self._next: dict[TP, int] = {}  # consumer thread only: the offset after the last record handed on
        self._known: set[str] = set()  # consumer thread only: topics whose leaders it was told
        self._hold: frozenset[str] = frozenset()  # topics not to fetch for now (under the lock)
        self._paused: set[TP] = set()  # consumer thread only: the pairs it paused
        self._stop = threading.Event()
        self._ahead = threading.Semaphore(AHEAD)
        self._thread = threading.Thread(target=self._run, name="kafka-consumer", daemon=True)
        self._consumer: Consumer | None = None

    @property
    def started(self) -> bool:
        return self._consumer is not None

    def start(self) -> None:
        self._consumer = Consumer(self._conf)
        self._thread.start()

    def change(
        self,
        add: Mapping[TP, int] | None = None,
        drop: Iterable[TP] = (),
        applied: Callable[[], None] | None = None,
    ) -> asyncio.Future[None]:
        """Read ``add``'s pairs from these offsets (a pair read already is rewound if the offset is
        before where it got to) and stop reading ``drop``'s; the future completes once applied.

        ``applied`` runs on the loop after every record handed on before the change and before any
        handed on after it (the future's waiters wake later, when records read from the new offsets
        may already have been handled), so it can tell old copies from the ones read again. A change
        that fails applies nothing and does not run it: its future fails instead."""
        fut: asyncio.Future[None] = self._loop.create_future()
        with self._lock:
            self._changes.append(_Change(dict(add or {}), set(drop), fut, applied=applied))
        return fut

    def release(self, tps: Iterable[TP]) -> asyncio.Future[dict[TP, int]]:
        """Stop reading these pairs; the future gives, for those that were read, the offset after the
        last record handed on (where another consumer takes them up)."""
        fut: asyncio.Future[dict[TP, int]] = self._loop.create_future()
        with self._lock:
            self._changes.append(_Change(drop=set(tps), done=fut, release=True))
        return fut

    def hold(self, topics: frozenset[str]) -> None:
        """Fetch nothing more of these topics' pairs until they are no longer held (backpressure: a
        model-gateway slot with more records queued than it may hold); the others go on. Applied on
        the consumer thread before its next poll; a held pair keeps its place (``release`` answers
        where it had got to, and a record already fetched may still be handed on)."""
        with self._lock:
            self._hold = topics

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # -- consumer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            self._learn_leaders(consumer)  # before any assignment: the topics there are now
            while not self._stop.is_set():
                self._apply(consumer)
                if not self._ahead.acquire(timeout=POLL_S):
                    continue  # the loop is behind: wait for it, applying changes meanwhile
                # consume(n, t) waits for a full batch or the timeout: block for the first record
                # only, then take whatever else is already here (briefly: a change asked for
                # meanwhile waits for the poll to end)
                first = consumer.poll(POLL_S)
                if first is None:
                    self._ahead.release()
                    continue
                msgs = [first, *consumer.consume(self._batch - 1, 0)] if self._batch > 1 else [first]
                nxt = self._next
                for msg in msgs:
                    if msg.error() is None:
                        nxt[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
                self._loop.call_soon_threadsafe(self._hand_on, msgs)
        except Exception:
            log.exception("consumer thread failed")
        finally:
            consumer.close()

    def _hand_on(self, msgs: list[Message]) -> None:
        try:
            self._handler(msgs)
        finally:
            self._ahead.release()

    def _apply(self, consumer: Consumer) -> None:
        with self._lock:
            changes, self._changes = self._changes, []
            hold = self._hold
        for change in changes:
            try:
                result = self._apply_one(consumer, change)
            except KafkaException as exc:
                log.warning("assignment change failed: %s", exc)
                if change.done is not None:
                    self._loop.call_soon_threadsafe(_fail, change.done, exc)
                continue
            if change.applied is not None:
                self._loop.call_soon_threadsafe(change.applied)
            if change.done is not None:
                self._loop.call_soon_threadsafe(_resolve, change.done, result if change.release else None)
        self._pause(consumer, hold)

    def _pause(self, consumer: Consumer, hold: frozenset[str]) -> None:
        """Pause the assigned pairs of held topics, resume those no longer held."""
        if not hold and not self._paused:
            return
        wanted = {tp for tp in self._assigned if tp[0] in hold}
        if wanted == self._paused:
            return
        try:
            if wanted - self._paused:
                consumer.pause([TopicPartition(t, p) for t, p in sorted(wanted - self._paused)])
            if self._paused - wanted:
                consumer.resume([TopicPartition(t, p) for t, p in sorted(self._paused - wanted)])
        except KafkaException as exc:
            log.warning("pausing or resuming failed: %s", exc)
            return
        self._paused = wanted

    def _apply_one(self, consumer: Consumer, change: _Change) -> dict[TP, int]:
        drop = {tp for tp in change.drop if tp in self._assigned and tp not in change.add}
        reached = {tp: self._next[tp] for tp in drop if tp in self._next}
        rewind = {tp for tp, o in change.add.items() if tp in self._assigned and o < self._next.get(tp, 0)}
        if self._paused & (drop | rewind):  # resumed first: a pair assigned again is fetched
            consumer.resume([TopicPartition(t, p) for t, p in sorted(self._paused & (drop | rewind))])
            self._paused -= drop | rewind
        if drop | rewind:
            consumer.incremental_unassign([TopicPartition(t, p) for t, p in sorted(drop | rewind)])
            self._assigned -= drop | rewind
            for tp in drop | rewind:
                self._next.pop(tp, None)
        new = {tp: o for tp, o in change.add.items() if tp not in self._assigned}
        if new:
            self._learn_leaders(consumer, {t for t, _ in new})
            consumer.incremental_assign([TopicPartition(t, p, o) for (t, p), o in sorted(new.items())])
            self._assigned |= set(new)
            for tp, offset in new.items():
                self._next[tp] = offset
        return reached

    def _learn_leaders(self, consumer: Consumer, topics: set[str] | None = None) -> None:
        """Ask for the metadata of topics this consumer has not read before (None: of every topic): a
        partition assigned while its leader is unknown waits for librdkafka's next metadata refresh
        (up to a second seen at a rebalance), a partition whose leader is known is fetched at once.

        One request for the whole cluster, not one per topic: a unit reads up to seven topics, and on
        two busy cores each request took 5-75 ms, so a worker's first take of a pipeline's unit
        waited ~100-170 ms on them while its callers waited for the take. A topic the answer does not
        show yet (created a moment ago) is asked for on its own."""
        missing = None if topics is None else topics - self._known
        if missing is not None and not missing:
            return
        try:
            listed = consumer.list_topics(timeout=LEADERS_TIMEOUT_S).topics
        except KafkaException as exc:
            log.debug("metadata: %s", exc)
            listed = {}
        self._known.update(t for t, meta in listed.items() if meta.error is None and meta.partitions)
        for topic in sorted((missing or set()) - self._known):
            try:
                meta = consumer.list_topics(topic, timeout=LEADERS_TIMEOUT_S).topics.get(topic)
            except KafkaException as exc:
                log.debug("metadata of %s: %s", topic, exc)
                continue
            if meta is not None and meta.error is None and meta.partitions:
                self._known.add(topic)


def _resolve(fut: asyncio.Future[Any], result: Any = None) -> None:
    if not fut.done():
        fut.set_result(result)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
