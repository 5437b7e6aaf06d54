"""Local hops: records for the worker's own partitions are handed over in memory and their copies from
the broker are committed, not handled again, and only after the in-memory handling is done."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace.engine.backbone.loopback import (
    FORGET_AFTER_S,
    HOP_HEADER,
    HopLedger,
    LocalRecord,
    LoopbackProducer,
)
from headrace.engine.backbone.producer import ProduceError

pytestmark = pytest.mark.timeout(10)


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_a_copy_arriving_after_the_handling_is_committed_at_once() -> None:
    ledger = HopLedger()
    seq, _ = ledger.stamp()
    ledger.handled(seq)
    commit = Recorder()
    ledger.returned(seq, commit)
    assert commit.calls == 1
    assert len(ledger) == 0


def test_a_copy_arriving_during_the_handling_waits_for_it() -> None:
    ledger = HopLedger()
    seq, _ = ledger.stamp()
    commit = Recorder()
    ledger.returned(seq, commit)
    assert commit.calls == 0  # a crash now must leave the record uncommitted, to be handled again
    ledger.handled(seq)
    assert commit.calls == 1
    assert len(ledger) == 0


def test_own_recognises_only_this_incarnations_stamp() -> None:
    ledger, other = HopLedger(), HopLedger()
    seq, stamp = ledger.stamp()
    _, foreign = other.stamp()
    assert ledger.own([(HOP_HEADER, stamp), ("pipeline", b"p")]) == seq
    assert ledger.own([(HOP_HEADER, foreign)]) is None  # a restarted worker handles the dead one's records
    assert ledger.own([("pipeline", b"p"), (HOP_HEADER, stamp)]) is None  # the stamp is always first
    assert ledger.own([]) is None and ledger.own(None) is None
    assert ledger.own([(HOP_HEADER, ledger.incarnation + b":garbage")]) is None


def test_a_lost_write_is_forgotten_once_handled() -> None:
    ledger = HopLedger()
    seq, _ = ledger.stamp()
    ledger.lost(seq)
    assert len(ledger) == 1
    ledger.handled(seq)
    assert len(ledger) == 0


def test_sweep_forgets_only_old_handled_records() -> None:
    ledger = HopLedger()
    old, _ = ledger.stamp()
    busy, _ = ledger.stamp()
    ledger.handled(old)
    assert ledger.sweep() == 0  # young
    assert ledger.sweep(now=10**9 + FORGET_AFTER_S) == 1  # old and handled: its copy is not coming
    assert len(ledger) == 1  # the one still being handled stays
    ledger.handled(busy)


class FakeProducer:
    def __init__(self, loop: asyncio.AbstractEventLoop, fail_now: bool = False) -> None:
        self.loop = loop
        self.fail_now = fail_now
        self.sent: list[tuple[str, int, list[tuple[str, Any]]]] = []
        self.futures: list[asyncio.Future[None]] = []
        self.on_error: list[Any] = []

    def produce(
        self, topic: str, partition: int, key: bytes, value: bytes, headers: Any, on_error: Any = None
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        if self.fail_now:
            fut.set_exception(ProduceError("too large", too_large=True))
        self.sent.append((topic, partition, list(headers)))
        self.futures.append(fut)
        self.on_error.append(on_error)
        return fut

    def fail(self, index: int, exc: BaseException) -> None:
        """A write failing later, as AsyncProducer tells it: the hook, then the future."""
        if self.on_error[index] is not None:
            self.on_error[index](exc)
        self.futures[index].set_exception(exc)


def _writer(
    producer: FakeProducer,
    ledger: HopLedger,
    delivered: list[LocalRecord],
    lost: list[str],
    enabled: bool = True,
) -> LoopbackProducer:
    return LoopbackProducer(
        producer,  # type: ignore[arg-type]
        ledger,
        lambda topic, partition: topic == "mine" and partition == 0,
        delivered.append,
        producer.loop,
        on_lost=lambda record, exc: lost.append(str(exc)),
        enabled=enabled,
    )


def test_records_for_own_partitions_are_written_and_handed_over() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        producer, ledger = FakeProducer(loop), HopLedger()
        delivered: list[LocalRecord] = []
        lost: list[str] = []
        writer = _writer(producer, ledger, delivered, lost)
        upstream = [(HOP_HEADER, b"someone:1"), ("pipeline", b"p")]
        writer.produce("mine", 0, b"0.p.r", b"v", upstream)
        writer.produce("mine", 1, b"1.p.r", b"v", upstream)  # another worker's partition
        writer.produce("theirs", 0, b"0.p.r", b"v", upstream)  # a topic this worker does not read
        await asyncio.sleep(0)
        assert [r.topic() for r in delivered] == ["mine"]
        record = delivered[0]
        assert (record.key(), record.value(), record.partition()) == (b"0.p.r", b"v", 0)
        # written to Kafka with this record's own stamp first; an upstream stamp is never passed on
        stamped = producer.sent[0][2]
        assert ledger.own(stamped) == record.seq
        assert stamped[1:] == [("pipeline", b"p")]
        assert producer.sent[1][2] == [("pipeline", b"p")] == producer.sent[2][2]
        assert record.headers() == stamped
        # a write failing after the hand-over is reported, so a waiting caller hears of it
        producer.fail(0, ProduceError("broker down"))
        await asyncio.sleep(0)
        assert lost == ["broker down"]

    asyncio.run(run())


def test_a_write_refused_at_once_is_not_handed_over() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        producer, ledger = FakeProducer(loop, fail_now=True), HopLedger()
        delivered: list[LocalRecord] = []
        lost: list[str] = []
        writer = _writer(producer, ledger, delivered, lost)
        fut = writer.produce("mine", 0, b"k", b"v", [])
        await asyncio.sleep(0)
        assert delivered == []  # the caller gets the write's error instead
        with pytest.raises(ProduceError):
            fut.result()
        assert len(ledger) == 0
        assert lost == ["too large"]  # and whoever waits downstream of it is told at once

    asyncio.run(run())


def test_disabled_means_every_hop_goes_through_the_broker() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        producer, ledger = FakeProducer(loop), HopLedger()
        delivered: list[LocalRecord] = []
        writer = _writer(producer, ledger, delivered, [], enabled=False)
        writer.produce("mine", 0, b"k", b"v", [("pipeline", b"p")])
        await asyncio.sleep(0)
        assert delivered == []
        assert producer.sent == [("mine", 0, [("pipeline", b"p")])]

    asyncio.run(run())


def test_a_record_another_worker_reads_too_is_handed_over_and_sent_without_lingering() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        lingering, prompt, ledger = FakeProducer(loop), FakeProducer(loop), HopLedger()
        delivered: list[LocalRecord] = []
        writer = LoopbackProducer(
            lingering,  # type: ignore[arg-type]
            ledger,
            lambda topic, partition: topic in ("mine", "both"),
            delivered.append,
            loop,
            remote=prompt,  # type: ignore[arg-type]
            shared=lambda topic, partition: topic == "both",
        )
        writer.produce("mine", 0, b"k1", b"v", [])  # only this worker reads it: it may linger
        writer.produce("both", 0, b"k2", b"v", [])  # another worker waits for it too
        writer.produce("theirs", 0, b"k3", b"v", [])  # only another worker reads it
        await asyncio.sleep(0)
        assert [r.topic() for r in delivered] == ["mine", "both"]
        assert [s[0] for s in lingering.sent] == ["mine"]
        assert [s[0] for s in prompt.sent] == ["both", "theirs"]
        # the shared record carries this worker's stamp, so its own copy is not handled twice here
        assert ledger.own(prompt.sent[0][2]) == delivered[1].seq

    asyncio.run(run())


def test_a_handover_waits_for_a_lingering_write_when_a_later_one_went_through_the_other_producer() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        lingering, prompt, ledger = FakeProducer(loop), FakeProducer(loop), HopLedger()
        shared = {"yes": False}
        writer = LoopbackProducer(
            lingering,  # type: ignore[arg-type]
            ledger,
            lambda topic, partition: True,
            lambda record: None,
            loop,
            remote=prompt,  # type: ignore[arg-type]
            shared=lambda topic, partition: shared["yes"],
        )
        first = writer.produce("mine", 3, b"k1", b"v", [])  # lingers in the hop producer
        shared["yes"] = True  # the routing table changed: another worker reads partition 3 too now
        second = writer.produce("mine", 3, b"k2", b"v", [])
        assert [s[0] for s in lingering.sent] == ["mine"] and [s[0] for s in prompt.sent] == ["mine"]
        second.set_result(None)  # the prompt producer's write is acknowledged first
        # the first record may still land past a fence taken now: the unit's drain must wait for it
        assert writer.pending(3) == [first]
        assert writer.pending(2) == []
        first.set_result(None)
        assert writer.pending(3) == []

    asyncio.run(run())
