"""Large hop payloads parked in shared memory: the Kafka copy carries a reference, freed once settled."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import pytest
from records import FakeRecord

from headrace.engine.backbone.loopback import HopLedger, LocalRecord, LoopbackProducer
from headrace.engine.backbone.offload import (
    ARENA_PREFIX,
    OFFLOAD_HEADER,
    AlreadyHandled,
    HopOffload,
    PayloadGone,
    ResolvedRecord,
    sweep,
)
from headrace.shm.arena import SHM_DIR

pytestmark = pytest.mark.timeout(10)
MiB = 1024 * 1024


@pytest.fixture
def offload() -> Any:
    store = HopOffload(uuid.uuid4().hex[:8], min_bytes=1024, arena_bytes=8 * MiB)
    yield store
    store.close()


def test_a_large_payload_is_parked_and_fetched_back_by_any_reader(offload: HopOffload) -> None:
    assert offload.park(b"x" * 100) is None  # small: inline
    payload = os.urandom(2 * MiB)
    parked = offload.park(payload)
    assert parked is not None
    header, ref = parked
    assert header.startswith(offload.name.encode() + b":")
    assert offload.fetch(header) == payload
    other = HopOffload("reader", 0, 0)  # e.g. the successor of a worker that died
    assert other.fetch(header) == payload
    offload.release(ref)
    with pytest.raises(AlreadyHandled):  # a freed block: its hop had been settled
        other.fetch(header)
    other.close()
    with pytest.raises(PayloadGone):
        other.fetch(b"headrace-hops-1-nosuch:0:64:10:5")
    with pytest.raises(PayloadGone):
        other.fetch(b"garbage")


def test_a_full_arena_sends_the_payload_inline(offload: HopOffload) -> None:
    held = [offload.park(b"y" * (3 * MiB)) for _ in range(3)]
    assert held[0] is not None and held[1] is not None and held[2] is None  # 8 MiB: two fit
    offload.release(held[0][1])
    again = offload.park(b"z" * (3 * MiB))
    assert again is not None
    for parked in (held[1], again):
        offload.release(parked[1])


def test_closing_keeps_an_arena_with_live_blocks_for_a_successor(offload: HopOffload) -> None:
    path = os.path.join(SHM_DIR, offload.name)
    parked = offload.park(b"w" * 4096)
    assert parked is not None and os.path.exists(path)
    offload.close()
    assert os.path.exists(path)  # a hop not settled: its payload stays readable
    assert HopOffload("reader", 0, 0).fetch(parked[0]) == b"w" * 4096
    os.unlink(path)
    empty = HopOffload(uuid.uuid4().hex[:8], 1024, MiB)
    parked = empty.park(b"v" * 4096)
    assert parked is not None
    empty.release(parked[1])
    empty.close()
    assert not os.path.exists(os.path.join(SHM_DIR, empty.name))  # nothing live: removed


def test_sweep_removes_old_arenas_of_dead_processes_only() -> None:
    dead = os.path.join(SHM_DIR, f"{ARENA_PREFIX}999999999-{uuid.uuid4().hex[:6]}")
    mine = os.path.join(SHM_DIR, f"{ARENA_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}")
    for path in (dead, mine):
        with open(path, "wb") as f:
            f.write(b"\0" * 128)
    try:
        assert os.path.basename(dead) not in sweep()  # young: kept
        removed = sweep(now=time.time() + 600)
        assert os.path.basename(dead) in removed and os.path.basename(mine) not in removed
        assert os.path.exists(mine)
    finally:
        for path in (dead, mine):
            if os.path.exists(path):
                os.unlink(path)


class Producer:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sent: list[tuple[str, bytes, list[tuple[str, Any]]]] = []

    def produce(
        self, topic: str, partition: int, key: bytes, value: bytes, headers: Any, on_error: Any = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value, list(headers)))
        return self.loop.create_future()


def test_the_kafka_copy_carries_a_reference_the_next_step_the_bytes_and_settling_frees_it(
    offload: HopOffload,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ledger = HopLedger(release=offload.release)
        delivered: list[LocalRecord] = []
        producer = Producer(loop)
        writer = LoopbackProducer(
            producer, ledger, lambda topic, p: True, delivered.append, loop,  # type: ignore[arg-type]
            offload=offload, offloadable=lambda topic: ".model." in topic,
        )  # fmt: skip
        payload = os.urandom(64 * 1024)
        writer.produce("seldon.default.model.m.inputs", 0, b"0.p.r", payload, [("pipeline", b"p")])
        writer.produce("seldon.default.pipeline.p.outputs", 0, b"0.p.r", payload, [("pipeline", b"p")])
        await asyncio.sleep(0)
        (_, value, headers), (_, full, out_headers) = producer.sent
        assert value == b"" and full == payload  # a pipeline's topics always carry the payload
        reference = dict(headers)[OFFLOAD_HEADER]
        assert OFFLOAD_HEADER not in dict(out_headers)
        assert [r.value() for r in delivered] == [payload, payload]  # in memory: the bytes themselves
        assert OFFLOAD_HEADER not in dict(delivered[0].headers())
        assert offload.fetch(reference) == payload
        # the hop settles (handled, and its copy back from the broker): the block is freed
        ledger.handled(delivered[0].seq)
        ledger.returned(delivered[0].seq, lambda: None)
        with pytest.raises(AlreadyHandled):
            offload.fetch(reference)

    asyncio.run(main())


def test_a_resolved_record_has_its_payload_and_no_reference() -> None:
    msg = FakeRecord(
        "t", partition=3, offset=9, key=b"k", headers=[("pipeline", b"p"), (OFFLOAD_HEADER, b"ref")]
    )
    record = ResolvedRecord(msg, b"payload")
    assert (record.topic(), record.partition(), record.offset(), record.key()) == ("t", 3, 9, b"k")
    assert record.value() == b"payload" and record.headers() == [("pipeline", b"p")]
