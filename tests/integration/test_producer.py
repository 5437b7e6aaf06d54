"""The worker's producer on a real broker: with delivery reports polled on the event loop (the lingering
producers) or served by a thread, every record's future completes once the broker has it, in order,
and a refused record fails its future; a flush from another thread settles what it waited for."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from test_broker import create_topic

from headrace.config.settings import Settings
from headrace.engine.backbone.producer import AsyncProducer, ProduceError
from headrace.engine.kafka.config import admin_config, consumer_config, producer_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RECORDS = 400


def _read_back(bootstrap: str, topic: str, partition: int, count: int) -> list[bytes]:
    consumer = Consumer(consumer_config(Settings(kafka_bootstrap=bootstrap), group_id=f"g-{topic}"))
    consumer.assign([TopicPartition(topic, partition, 0)])
    values: list[bytes] = []
    try:
        for _ in range(200):
            for msg in consumer.consume(count, 0.1):
                if msg.error() is None:
                    values.append(msg.value() or b"")
            if len(values) >= count:
                break
    finally:
        consumer.close()
    return values


@pytest.mark.parametrize("poll_every", [None, 0.001, 0.005], ids=["thread", "loop-1ms", "loop-5ms"])
def test_every_record_acknowledged_once_in_order(kafka_bootstrap: str, poll_every: float | None) -> None:
    topic = f"produce-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 2)
    conf = producer_config(Settings(kafka_bootstrap=kafka_bootstrap), {"linger.ms": 5})

    async def main() -> list[int]:
        producer = AsyncProducer(conf, asyncio.get_running_loop(), poll_every)
        producer.start()
        acked: list[int] = []
        try:
            futures = []
            for i in range(RECORDS):
                fut = producer.produce(topic, 1, f"1.k.{i}".encode(), str(i).encode(), [("n", str(i))])
                fut.add_done_callback(lambda f, i=i: acked.append(i) if f.exception() is None else None)
                futures.append(fut)
                if i % 50 == 0:
                    await asyncio.sleep(0.01)  # some records go out while others are still queued
            await asyncio.wait_for(asyncio.gather(*futures), 20)
            # idle, then one more: a producer polled on the loop starts polling again
            await asyncio.sleep(0.2)
            await asyncio.wait_for(producer.produce(topic, 1, b"1.k.last", b"last", []), 10)
        finally:
            producer.close()
        return acked

    acked = asyncio.run(main())
    assert acked == list(range(RECORDS))
    values = _read_back(kafka_bootstrap, topic, 1, RECORDS + 1)
    assert values == [str(i).encode() for i in range(RECORDS)] + [b"last"]


def test_a_refused_record_fails_its_future_and_tells_its_on_error_hook(kafka_bootstrap: str) -> None:
    topic = f"produce-big-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(admin_config(Settings(kafka_bootstrap=kafka_bootstrap)))
    created = admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "1000000"})])
    created[topic].result(timeout=15)
    # the client's limit is above the topic's, so the broker is the one that refuses
    conf = producer_config(Settings(kafka_bootstrap=kafka_bootstrap), {"message.max.bytes": 8_000_000})

    told: list[str] = []  # on_error and the future's callback, in the order they ran

    async def main() -> BaseException | None:
        producer = AsyncProducer(conf, asyncio.get_running_loop(), 0.001)
        producer.start()
        try:
            small = producer.produce(topic, 0, b"0.k.small", b"x", [], lambda e: told.append("small"))
            fut = producer.produce(
                topic, 0, b"0.k.big", b"x" * 3_000_000, [], lambda e: told.append(f"on_error {e}")
            )
            fut.add_done_callback(lambda _: told.append("callback"))
            await asyncio.wait_for(small, 20)
            try:
                await asyncio.wait_for(fut, 20)
            except ProduceError as exc:
                return exc
            return None
        finally:
            producer.close()

    refused = asyncio.run(main())
    assert isinstance(refused, ProduceError)
    assert refused.too_large
    # the failed write is told once, before the future's callbacks; the written one not at all
    assert told == [f"on_error {refused}", "callback"]


def test_a_flush_from_another_thread_settles_on_the_loop(kafka_bootstrap: str) -> None:
    """A unit handed over flushes off the loop (engine/handover.py): reports served by that flush reach
    the loop's futures too, without waiting for the loop's next poll."""
    topic = f"produce-flush-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 1)
    conf = producer_config(Settings(kafka_bootstrap=kafka_bootstrap), {"linger.ms": 50})

    async def main() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        producer = AsyncProducer(conf, loop, 10.0)  # the loop's own poll would come far too late
        producer.start()
        try:
            futures = [producer.produce(topic, 0, f"0.k.{i}".encode(), b"v", []) for i in range(20)]
            flushed: list[int] = []
            thread = threading.Thread(target=lambda: flushed.append(producer.flush(10.0)))
            thread.start()
            await asyncio.wait_for(asyncio.gather(*futures), 5)
            thread.join(5)
            return flushed[0], all(f.done() and f.exception() is None for f in futures)
        finally:
            producer.close()

    remaining, all_acked = asyncio.run(main())
    assert remaining == 0
    assert all_acked
