"""A worker's two consumers on a real broker: pairs moved between bulk and prompt under a stream of
records are handed on once each, in order, and read by the side the prompt set names."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from test_broker import create_topic

from headrace.config.settings import Settings
from headrace.engine.backbone.consumer import PartitionConsumer
from headrace.engine.backbone.split_consumer import SplitConsumer
from headrace.engine.kafka.config import consumer_config, dataplane_consumer_config, producer_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PARTITIONS = 4
RECORDS_PER_PARTITION = 300
# the partitions read promptly, one set after another, while records keep coming
PLANS = [{0, 1}, {2}, set(), {0, 1, 2, 3}, {3}, {1, 3}]


def _produce_slowly(bootstrap: str, topic: str, stop: threading.Event) -> None:
    """RECORDS_PER_PARTITION records per partition over about two seconds, values numbered per partition."""
    producer = Producer(producer_config(Settings(kafka_bootstrap=bootstrap)))
    for i in range(RECORDS_PER_PARTITION):
        if stop.is_set():
            break
        for p in range(PARTITIONS):
            producer.produce(topic, value=str(i).encode(), key=f"{p}.k.{i}".encode(), partition=p)
        producer.poll(0)
        time.sleep(0.006)
    producer.flush(15)


def _all_in(seen: dict[int, list[int]]) -> bool:
    """Every record handed on (partition 3: again from the start, after its rewind)."""
    if any(len(seen[p]) < RECORDS_PER_PARTITION for p in range(3)):
        return False
    zeros = [i for i, v in enumerate(seen[3]) if v == 0]
    return len(zeros) >= 2 and len(seen[3]) - zeros[1] >= RECORDS_PER_PARTITION


def test_pairs_moved_between_bulk_and_prompt_are_handed_on_once_in_order(kafka_bootstrap: str) -> None:
    topic = f"split-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    settings = Settings(kafka_bootstrap=kafka_bootstrap)
    seen: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    sides: list[tuple[frozenset[Any], frozenset[Any]]] = []

    def handed(msgs: list[Message]) -> None:
        for msg in msgs:
            if msg.error() is None:
                seen[msg.partition() or 0].append(int(msg.value() or b"-1"))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        group = f"g-{topic}"
        bulk = PartitionConsumer(dataplane_consumer_config(settings, group), loop, handed)
        prompt = PartitionConsumer(consumer_config(settings, group), loop, handed)
        split = SplitConsumer(bulk, prompt)
        split.start()
        try:
            assert prompt.started, "both consumers open at start, before the prompt side has pairs"
            await split.change(add={(topic, p): 0 for p in range(PARTITIONS)})
            assert split.reading(prompt=True) == frozenset(), "no pair is prompt until the set names it"
            stop = threading.Event()
            writer = threading.Thread(target=_produce_slowly, args=(kafka_bootstrap, topic, stop))
            writer.start()
            try:
                for plan in PLANS:
                    await asyncio.sleep(0.3)
                    await split.prompt(frozenset((topic, p) for p in plan))
                    sides.append((split.reading(prompt=True), split.reading(prompt=False)))
                # a pair asked for again from an earlier offset is rewound on its side
                await split.change(add={(topic, 3): 0})
            finally:
                await loop.run_in_executor(None, writer.join, 30)
                stop.set()
            deadline = loop.time() + 20
            while loop.time() < deadline and not _all_in(seen):
                await asyncio.sleep(0.1)
            await split.change(drop=[(topic, p) for p in range(PARTITIONS)])
            assert split.reading(prompt=True) == split.reading(prompt=False) == frozenset()
        finally:
            await loop.run_in_executor(None, split.stop)

    asyncio.run(run())

    expected = list(range(RECORDS_PER_PARTITION))
    for p in range(3):
        assert seen[p] == expected, f"partition {p}: handed on {len(seen[p])} records, not each once in order"
    # partition 3 was rewound to 0 once: everything up to the rewind, then everything again
    rewound_at = seen[3].index(0, 1)
    assert seen[3][:rewound_at] == expected[:rewound_at]
    assert seen[3][rewound_at:] == expected
    for plan, (on_prompt, on_bulk) in zip(PLANS, sides, strict=True):
        assert on_prompt == {(topic, p) for p in plan}
        assert on_bulk == {(topic, p) for p in range(PARTITIONS) if p not in plan}


def test_the_applied_hook_runs_between_the_old_copies_and_the_rewound_ones(kafka_bootstrap: str) -> None:
    """A unit taken over on a pair already read past its start waits for the hook: every record handed
    on before it is of the old reading, every one after it of the rewound one, even with the loop
    behind the consumer thread (batches waiting in its queue when the rewind is asked for)."""
    topic = f"rewind-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 1)
    settings = Settings(kafka_bootstrap=kafka_bootstrap)
    producer = Producer(producer_config(settings))
    for i in range(RECORDS_PER_PARTITION):
        producer.produce(topic, value=str(i).encode(), key=f"0.k.{i}".encode(), partition=0)
    producer.flush(15)
    seen: list[int] = []
    asked: list[int] = []  # how many were handed on when the rewind was asked for, and at the hook
    consumers: list[PartitionConsumer] = []

    def handed(msgs: list[Message]) -> None:
        time.sleep(0.001 * len(msgs))  # a busy loop: the consumer thread runs ahead of it
        seen.extend(msg.offset() or 0 for msg in msgs if msg.error() is None)
        if len(seen) >= 50 and not asked:  # asked for while later batches wait in the loop's queue
            asked.append(len(seen))
            consumers[0].change(add={(topic, 0): 0}, applied=lambda: asked.append(len(seen)))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        consumer = PartitionConsumer(
            dataplane_consumer_config(settings, f"g-{topic}"), loop, handed, batch=10
        )
        consumers.append(consumer)
        consumer.start()
        try:
            await consumer.change(add={(topic, 0): 0})
            deadline = loop.time() + 30
            while loop.time() < deadline and not (
                len(asked) == 2 and len(seen) - asked[1] >= RECORDS_PER_PARTITION
            ):
                await asyncio.sleep(0.05)
        finally:
            await loop.run_in_executor(None, consumer.stop)

    asyncio.run(run())

    expected = list(range(RECORDS_PER_PARTITION))
    assert len(asked) == 2, "the hook did not run"
    hook = asked[1]
    assert seen[:hook] == expected[:hook], "the old reading is not in order"
    assert seen[hook:] == expected, "an old copy came after the hook, or a rewound one before it"


def test_a_held_topic_is_not_fetched_until_let_go_and_loses_nothing(kafka_bootstrap: str) -> None:
    """Backpressure: while a topic is held its pairs fetch nothing new (the other topic's go on); let
    go, they resume where they were; a held pair released answers where it had got to."""
    held, other = f"held-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    for topic in (held, other):
        create_topic(kafka_bootstrap, topic, 1)
    settings = Settings(kafka_bootstrap=kafka_bootstrap)
    producer = Producer(producer_config(settings))
    seen: dict[str, list[int]] = {held: [], other: []}

    def handed(msgs: list[Message]) -> None:
        for msg in msgs:
            if msg.error() is None:
                seen[msg.topic() or ""].append(int(msg.value() or b"-1"))

    def write(start: int, count: int) -> None:
        for i in range(start, start + count):
            for topic in (held, other):
                producer.produce(topic, value=str(i).encode(), key=f"0.k.{i}".encode(), partition=0)
        producer.flush(15)

    async def until(check: Any, timeout: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not check() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def run() -> dict[Any, int]:
        loop = asyncio.get_running_loop()
        split = SplitConsumer(PartitionConsumer(consumer_config(settings, f"g-{held}"), loop, handed))
        split.start()
        try:
            await split.change(add={(held, 0): 0, (other, 0): 0})
            write(0, 50)
            await until(lambda: len(seen[held]) == len(seen[other]) == 50)
            split.hold(frozenset({held}))
            await asyncio.sleep(0.3)  # applied before the consumer's next poll
            write(50, 50)
            await until(lambda: len(seen[other]) == 100)
            await asyncio.sleep(1.0)
            assert len(seen[other]) == 100 and len(seen[held]) == 50, "a held topic was fetched"
            split.hold(frozenset())
            await until(lambda: len(seen[held]) == 100)
            split.hold(frozenset({held}))
            await asyncio.sleep(0.3)
            write(100, 10)
            await until(lambda: len(seen[other]) == 110)
            reached = await split.bulk.release([(held, 0)])
            return reached
        finally:
            await loop.run_in_executor(None, split.stop)

    try:
        reached = asyncio.run(run())
    finally:
        producer.close()
    assert seen[held] == list(range(100)), "each record of the held topic once, in order"
    assert seen[other] == list(range(110))
    assert reached == {(held, 0): 100}  # its next reader starts at the first record not handed on
