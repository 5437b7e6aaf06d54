"""An asyncio face on confluent-kafka's Producer: produce() returns a future resolved on delivery."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

log = logging.getLogger("headrace.producer")

Headers = list[tuple[str, str | bytes | None]]
HeaderSeq = Sequence[tuple[str, str | bytes | None]]
#: Told of a record's failed write (see AsyncProducer.produce).
OnError = Callable[[BaseException], None]
_Report = tuple["asyncio.Future[None]", "KafkaError | None", "OnError | None"]


class ProduceError(Exception):
    """A record that could not be written (e.g. larger than the broker accepts)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


class AsyncProducer:
    """One librdkafka producer per worker, whose delivery reports never block the event loop: a thread
    serves them and hands them to the loop, or, with ``poll_every`` (seconds), the loop itself polls
    for them (``poll(0)``, which does not block) that often while records are unacknowledged.

    Polling on the loop suits a producer whose records linger anyway: each report then costs no
    thread switch, no lock handover between threads and no wake-up of the loop from outside; a report
    is seen up to ``poll_every`` later."""

    def __init__(
        self, conf: dict[str, Any], loop: asyncio.AbstractEventLoop, poll_every: float | None = None
    ) -> None:
        self._producer = Producer(conf)
        self._loop = loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_reports, name="kafka-producer", daemon=True)
        self._poll_every = poll_every
        self._ticking: asyncio.TimerHandle | None = None
        self._started = False
        # delivery reports come from whichever thread serves librdkafka's events: the reports thread
        # polling, or one flushing (a unit handed over); the lock keeps every report for the loop
        self._lock = threading.Lock()
        self._reports: list[_Report] = []
        # metrics hook: produce→acknowledgement seconds, observed under the lock (one writer at a time)
        self.delivery: Any = None

    def start(self) -> None:
        self._started = True
        if self._poll_every is None:
            self._thread.start()
        elif len(self._producer):
            self._tick_soon()

    def produce(
        self,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes,
        headers: HeaderSeq,
        on_error: OnError | None = None,
    ) -> asyncio.Future[None]:
        """Queue a record; the future completes when the broker has it (or with ProduceError).

        ``on_error`` is called on the loop, before the future's callbacks, if the write fails later
        (not when produce() refuses it at once: the future is failed already then). A caller that
        only needs to hear of failures passes it instead of adding a done-callback: no callback is
        scheduled for a record that is written."""
        fut: asyncio.Future[None] = self._loop.create_future()
        delivery, sent = self.delivery, time.monotonic()

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            with self._lock:  # called inside poll() or flush()
                self._reports.append((fut, err, on_error))
                if delivery is not None:
                    delivery.observe(time.monotonic() - sent)

        try:
            self._producer.produce(
                topic,
                value=value,
                key=key,
                partition=partition,
                headers=headers if isinstance(headers, list) else list(headers),
                on_delivery=on_delivery,
            )
        except BufferError:
            # the local queue is full: wait for room without blocking the loop
            return asyncio.ensure_future(self._produce_later(topic, partition, key, value, headers, on_error))
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            fut.set_exception(_error(err if isinstance(err, KafkaError) else None, str(exc)))
            return fut
        if self._ticking is None and self._poll_every is not None and self._started:
            self._tick_soon()
        return fut

    def _tick_soon(self) -> None:
        assert self._poll_every is not None
        self._ticking = self._loop.call_later(self._poll_every, self._tick)

    def _tick(self) -> None:
        """On the loop: serve the reports librdkafka has; again later while records are unacknowledged."""
        self._ticking = None
        if self._stop.is_set():
            return
        self._producer.poll(0)
        if batch := self._take_reports():
            _settle_all(batch)
        if len(self._producer):
            self._tick_soon()

    async def _produce_later(
        self,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes,
        headers: HeaderSeq,
        on_error: OnError | None,
    ) -> None:
        await asyncio.sleep(0.005)
        written = self.produce(topic, partition, key, value, headers, on_error)
        failed = written.done() and not written.cancelled() and written.exception()
        if on_error is not None and failed:
            on_error(failed)  # refused at once this time: tell it as a later failure
        await written

    def _serve_reports(self) -> None:
        """Delivery reports reach the loop a poll's worth at a time: one wake-up, not one per record."""
        while not self._stop.is_set():
            self._producer.poll(0.05)
            self._hand_over()

    def _take_reports(self) -> list[_Report]:
        if not self._reports:
            return []
        with self._lock:
            batch, self._reports = self._reports, []
        return batch

    def _hand_over(self) -> None:
        """From a thread off the loop: the reports gathered so far go to the loop in one wake-up."""
        if batch := self._take_reports():
            self._loop.call_soon_threadsafe(_settle_all, batch)

    def flush(self, timeout: float) -> int:
        """Send what lingers and wait for it (call off the loop); returns how many records remain."""
        remaining: int = self._producer.flush(timeout)
        self._hand_over()
        return remaining

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._ticking is not None:
            self._ticking.cancel()
            self._ticking = None
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        if self._started:
            self._producer.flush(timeout)


def _settle_all(batch: list[_Report]) -> None:
    for fut, err, on_error in batch:
        if fut.done():
            continue
        if err is None:
            fut.set_result(None)
            continue
        exc = _error(err, err.str())
        if on_error is not None:
            on_error(exc)
        fut.set_exception(exc)


def _error(err: KafkaError | None, text: str) -> ProduceError:
    too_large = err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE
    return ProduceError(f"Kafka refused the record: {text}", too_large=too_large)
