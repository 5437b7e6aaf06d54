"""Model gateway slots: a slow model stalls only its own slot; per-model concurrency overrides."""

from __future__ import annotations

import asyncio
from typing import Any

from records import FakeRecord

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.engine import topics as t
from headrace.engine.gateways.model import HOLD_BYTES, HOLD_RECORDS, ModelGateway, slot_of
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest, InferResponse
from headrace.gateway.runtime.client import InferResult

TOPICS = t.Topics()


def model_input(model: str, offset: int) -> FakeRecord:
    """A record of the model's inputs topic: one INT64 tensor holding its offset."""
    req = pb2.ModelInferRequest(model_name=model)
    x = req.inputs.add(name="x", datatype="INT64", shape=[1])
    x.contents.int64_contents.append(offset)
    return FakeRecord(
        TOPICS.model_inputs(model),
        req.SerializeToString(),
        offset=offset,
        key=f"0.m.{offset}".encode(),
        headers=[("pipeline", b"p")],
    )


class FakeDataPlane:
    def __init__(self, slow: str, gate: asyncio.Event) -> None:
        self.slow, self.gate, self.running = slow, gate, 0
        self.peak = 0

    async def _infer(self, request: InferRequest) -> InferResult:
        self.running += 1
        self.peak = max(self.peak, self.running)
        if request.model_name == self.slow:
            await self.gate.wait()
        self.running -= 1
        return InferResult(InferResponse(model_name=request.model_name, outputs=request.inputs))

    def infer(self, request: InferRequest) -> Any:
        return self._infer(request)


class FakeProducer:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    def produce(
        self, topic: str, partition: int, key: bytes, value: bytes, headers: Any, on_error: Any = None
    ) -> asyncio.Future[None]:
        self.records.append((topic, key))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class Done:
    """Counts the records the gateway reports finished."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _two_models_in_one_slot(max_consumers: int) -> tuple[str, str]:
    names = [f"m{i}" for i in range(200)]
    for a in names:
        for b in names:
            if a != b and slot_of(a, max_consumers) == slot_of(b, max_consumers):
                return a, b
    raise AssertionError("no collision")


def test_a_model_with_its_own_workers_does_not_block_its_slot_neighbour() -> None:
    async def run() -> None:
        slow, fast = _two_models_in_one_slot(4)
        gate = asyncio.Event()
        dataplane, producer, done = FakeDataPlane(slow, gate), FakeProducer(), Done()
        gw = ModelGateway(
            TOPICS, producer, dataplane,  # type: ignore[arg-type]
            num_workers=1, max_consumers=4, workers_for=lambda m: 3 if m == slow else None,
        )  # fmt: skip
        for i in range(3):
            gw.submit(slow, model_input(slow, i), done)
        gw.submit(fast, model_input(fast, 10), done)
        for _ in range(50):
            await asyncio.sleep(0)
        assert (TOPICS.model_outputs(fast), b"0.m.10") in producer.records  # not stuck behind slow
        assert dataplane.peak >= 3  # the slow model runs 3 at once, its own concurrency
        assert slow in gw.slots and len(gw.slots[slow].workers) == 3
        gate.set()
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(producer.records) == 4
        assert done.count == 4  # each record reported finished once, after its output was written
        gw.close()

    asyncio.run(run())


def test_models_sharing_a_slot_share_its_workers() -> None:
    async def run() -> None:
        slow, fast = _two_models_in_one_slot(4)
        gate = asyncio.Event()
        dataplane, producer, done = FakeDataPlane(slow, gate), FakeProducer(), Done()
        gw = ModelGateway(TOPICS, producer, dataplane, num_workers=1, max_consumers=4)  # type: ignore[arg-type]
        gw.submit(slow, model_input(slow, 0), done)
        gw.submit(fast, model_input(fast, 1), done)
        for _ in range(50):
            await asyncio.sleep(0)
        assert producer.records == []  # one worker, busy with the slow model: Seldon's behaviour
        gate.set()
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(producer.records) == 2
        assert done.count == 2
        gw.close()

    asyncio.run(run())


def test_a_slot_with_too_many_records_queued_holds_its_models_topics_until_half_drained() -> None:
    async def run() -> list[frozenset[str]]:
        slow, fast = "slowpoke", "quick"
        gate = asyncio.Event()
        dataplane, producer, done = FakeDataPlane(slow, gate), FakeProducer(), Done()
        held: list[frozenset[str]] = []
        gw = ModelGateway(
            TOPICS, producer, dataplane,  # type: ignore[arg-type]
            num_workers=2, max_consumers=100, hold=held.append,
        )  # fmt: skip
        assert slot_of(slow, 100) != slot_of(fast, 100)
        for i in range(HOLD_RECORDS + 10):
            gw.submit(slow, model_input(slow, i), done)
        gw.submit(fast, model_input(fast, 99_999), done)
        for _ in range(20):
            await asyncio.sleep(0)
        assert held == [frozenset({TOPICS.model_inputs(slow)})]  # only the backed-up slot's model
        assert (TOPICS.model_outputs(fast), b"0.m.99999") in producer.records  # the other slot goes on
        gate.set()
        for _ in range(HOLD_RECORDS * 4):
            await asyncio.sleep(0)
            if done.count == HOLD_RECORDS + 11:
                break
        assert done.count == HOLD_RECORDS + 11
        gw.close()
        return held

    held = asyncio.run(run())
    assert held[-1] == frozenset()  # fetched again once the queue was down to half


def test_a_slot_holds_on_bytes_queued_too() -> None:
    async def run() -> list[frozenset[str]]:
        gate = asyncio.Event()
        dataplane, producer, done = FakeDataPlane("big", gate), FakeProducer(), Done()
        held: list[frozenset[str]] = []
        gw = ModelGateway(TOPICS, producer, dataplane, hold=held.append)  # type: ignore[arg-type]
        small = model_input("big", 0)
        padded = small.value() + b"\0" * (HOLD_BYTES // 8)  # trailing bytes: never decoded
        msg = FakeRecord(small.topic(), padded, key=small.key(), headers=small.headers())
        for _ in range(10):
            gw.submit("big", msg, done)
        held_then = list(held)
        gate.set()
        gw.close()
        return held_then

    assert asyncio.run(run()) == [frozenset({TOPICS.model_inputs("big")})]


class FailingDataPlane(FakeDataPlane):
    """``slow`` never answers; ``broken`` fails at once; any other model echoes."""

    async def _infer(self, request: InferRequest) -> InferResult:
        if request.model_name == "broken":
            raise HeadraceError("broken is broken", ErrorKind.INVALID_ARGUMENT)
        return await super()._infer(request)


class KeepingProducer(FakeProducer):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, bytes], bytes] = {}

    def produce(
        self, topic: str, partition: int, key: bytes, value: bytes, headers: Any, on_error: Any = None
    ) -> asyncio.Future[None]:
        self.values[(topic, key)] = value
        return super().produce(topic, partition, key, value, headers, on_error)


def test_a_call_past_the_worker_timeout_becomes_an_error_record_and_the_worker_goes_on() -> None:
    async def run() -> None:
        dataplane, producer, done = FailingDataPlane("stuck", asyncio.Event()), KeepingProducer(), Done()
        gw = ModelGateway(TOPICS, producer, dataplane, num_workers=1, worker_timeout_s=0.05)  # type: ignore[arg-type]
        gw.submit("stuck", model_input("stuck", 1), done)
        gw.submit("broken", model_input("broken", 2), done)  # fails early: its deadline must not fire
        gw.submit("echo", model_input("echo", 3), done)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if done.count == 3:
                break
        assert producer.values[(TOPICS.errors, b"0.m.1")] == b"model gateway worker timed out"
        assert producer.values[(TOPICS.errors, b"0.m.2")] == b"broken is broken"
        assert (TOPICS.model_outputs("echo"), b"0.m.3") in producer.records
        await asyncio.sleep(0.1)  # past every deadline begun: the one worker is still there, working
        gw.submit("echo", model_input("echo", 4), done)
        for _ in range(20):
            await asyncio.sleep(0)
        assert (TOPICS.model_outputs("echo"), b"0.m.4") in producer.records
        assert done.count == 4
        assert [w.done() for w in gw.slots[slot_of("echo", 100)].workers] == [False]
        gw.close()

    asyncio.run(run())
