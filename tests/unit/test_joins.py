"""Join semantics on wall-clock windows: inner, outer, any; declared order; no hang on an incomplete join."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace.engine.dataflow.joins import Joiner, JoinSpec, merge
from headrace.gateway.oip.pb import pb2

pytestmark = pytest.mark.timeout(10)


def request(name: str, value: int, raw: bool = True) -> bytes:
    msg = pb2.ModelInferRequest(id="r1")
    t = msg.inputs.add(name=name, datatype="INT64", shape=[1])
    if raw:
        msg.raw_input_contents.append(value.to_bytes(8, "little", signed=True))
    else:
        t.contents.int64_contents.append(value)
    return msg.SerializeToString()


def names(value: bytes) -> list[str]:
    return [t.name for t in pb2.ModelInferRequest.FromString(value).inputs]


def spec(kind: str, window_s: float = 0.05, sources: int = 2) -> JoinSpec:
    return JoinSpec(
        pipeline="p",
        node="d",
        sources=tuple(f"s{i}.outputs" for i in range(sources)),
        kind=kind,  # type: ignore[arg-type]
        window_s=window_s,
        request=True,
        sink="sink",
    )


class Sink:
    def __init__(self) -> None:
        self.emitted: list[tuple[bytes, bytes]] = []
        self.failed: list[tuple[bytes, str]] = []

    def _done(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def emit(
        self, spec: JoinSpec, key: bytes, headers: Any, value: bytes, rnd: int = 0
    ) -> asyncio.Future[None]:
        self.emitted.append((key, value))
        return self._done()

    def fail(self, spec: JoinSpec, key: bytes, headers: Any, message: str) -> asyncio.Future[None]:
        self.failed.append((key, message))
        return self._done()


def run(body: Any) -> None:
    async def main() -> None:
        sink = Sink()
        joiner = Joiner(asyncio.get_running_loop(), sink.emit, sink.fail)
        await body(joiner, sink)
        joiner.close()

    asyncio.run(main())


def test_inner_emits_once_all_arrive_in_declared_order_whatever_the_arrival_order() -> None:
    async def body(joiner: Joiner, sink: Sink) -> None:
        s = spec("inner", sources=3)
        first = joiner.offer(s, 2, b"k", [], request("c", 3))
        joiner.offer(s, 0, b"k", [("pipeline", b"p")], request("a", 1))
        assert sink.emitted == [] and not first.done()  # the source record is not committed yet
        joiner.offer(s, 1, b"k", [], request("b", 2))
        await asyncio.sleep(0)
        assert len(sink.emitted) == 1 and names(sink.emitted[0][1]) == ["a", "b", "c"]
        assert first.done()
        await asyncio.sleep(0.08)
        assert sink.failed == [] and joiner.open == {}

    run(body)


def test_inner_that_cannot_complete_fails_naming_what_is_missing() -> None:
    async def body(joiner: Joiner, sink: Sink) -> None:
        s = spec("inner", sources=3)
        settled = joiner.offer(s, 1, b"k", [], request("b", 2))
        await asyncio.sleep(0.1)
        assert sink.emitted == []
        [(key, message)] = sink.failed
        assert key == b"k" and "step d" in message and "s0.outputs, s2.outputs" in message
        assert "50 ms" in message
        assert settled.done() and joiner.open == {}

    run(body)


def test_outer_flushes_what_arrived_when_the_window_closes_without_a_later_record() -> None:
    async def body(joiner: Joiner, sink: Sink) -> None:
        s = spec("outer", sources=3)
        joiner.offer(s, 2, b"k", [], request("c", 3))
        joiner.offer(s, 0, b"k", [], request("a", 1))
        await asyncio.sleep(0.02)
        assert sink.emitted == []
        await asyncio.sleep(0.08)  # no other record comes by: the timer alone flushes
        assert [names(v) for _, v in sink.emitted] == [["a", "c"]]
        assert sink.failed == []

    run(body)


def test_outer_with_everything_emits_at_once() -> None:
    async def body(joiner: Joiner, sink: Sink) -> None:
        s = spec("outer", window_s=5)
        joiner.offer(s, 1, b"k", [], request("b", 2))
        joiner.offer(s, 0, b"k", [], request("a", 1))
        await asyncio.sleep(0)
        assert [names(v) for _, v in sink.emitted] == [["a", "b"]]

    run(body)


def test_any_forwards_the_first_arrival_once() -> None:
    async def body(joiner: Joiner, sink: Sink) -> None:
        s = spec("any")
        joiner.offer(s, 1, b"k", [], request("b", 2))
        late = joiner.offer(s, 0, b"k", [], request("a", 1))
        joiner.offer(s, 0, b"other", [], request("a", 1))
        await asyncio.sleep(0)
        assert [(k, names(v)) for k, v in sink.emitted] == [(b"k", ["b"]), (b"other", ["a"])]
        assert late.done()  # dropped, and committed
        await asyncio.sleep(0.08)
        assert joiner.open == {} and sink.failed == []  # the tombstones went with their windows

    run(body)


def test_keys_are_joined_separately() -> None:
    async def body(joiner: Joiner, sink: Sink) -> None:
        s = spec("inner", window_s=5)
        joiner.offer(s, 0, b"k1", [], request("a", 1))
        joiner.offer(s, 1, b"k2", [], request("b", 2))
        await asyncio.sleep(0)
        assert sink.emitted == []
        joiner.offer(s, 1, b"k1", [], request("b", 3))
        await asyncio.sleep(0)
        assert [k for k, _ in sink.emitted] == [b"k1"]
        assert list(joiner.open) == [("p", "d", "", b"k2", 0)]

    run(body)


def test_merge_turns_typed_contents_into_raw_when_parts_differ() -> None:
    joined = pb2.ModelInferRequest.FromString(merge([request("a", 7, raw=False), request("b", 9)], True))
    assert [t.name for t in joined.inputs] == ["a", "b"]
    assert [int.from_bytes(r, "little") for r in joined.raw_input_contents] == [7, 9]
    assert joined.id == "r1"


def test_a_trigger_gate_passes_on_the_inputs_only_and_only_when_the_trigger_came() -> None:
    async def body(joiner: Joiner, sink: Sink) -> None:
        gate = JoinSpec(
            pipeline="p", node="d", sources=("inputs", "triggers (t.outputs)"), kind="inner",
            window_s=0.05, request=True, sink="sink", part="gate", keep_first=True,
        )  # fmt: skip
        joiner.offer(gate, 1, b"fired", [], request("trigger", 1))
        joiner.offer(gate, 0, b"fired", [], request("x", 2))
        joiner.offer(gate, 0, b"not-fired", [], request("x", 3))
        await asyncio.sleep(0.1)
        assert [(k, names(v)) for k, v in sink.emitted] == [
            (b"fired", ["x"])
        ]  # the trigger's payload dropped
        [(key, message)] = sink.failed
        assert key == b"not-fired" and "join of inputs and triggers got no triggers (t.outputs)" in message

    run(body)


def test_rounds_of_a_cyclic_pipeline_join_apart() -> None:
    async def body(joiner: Joiner, sink: Sink) -> None:
        s = spec("any", window_s=5)
        joiner.offer(s, 0, b"k", [], request("a", 1), 0)
        joiner.offer(s, 1, b"k", [], request("b", 2), 0)  # the same round: a duplicate, dropped
        joiner.offer(s, 1, b"k", [], request("b", 3), 1)  # the loop came back: a new round, forwarded
        await asyncio.sleep(0)
        assert [names(v) for _, v in sink.emitted] == [["a"], ["b"]]

    run(body)


def test_an_incomplete_join_in_a_cyclic_pipeline_is_dropped_not_failed() -> None:
    async def body(joiner: Joiner, sink: Sink) -> None:
        cyclic = JoinSpec(
            pipeline="p", node="d", sources=("s0", "s1"), kind="inner", window_s=0.02, request=True,
            sink="sink", max_visits=10,
        )  # fmt: skip
        settled = joiner.offer(cyclic, 0, b"k", [], request("a", 1), 2)
        await asyncio.sleep(0.06)
        # a loop's exit gate that did not fire this round: a later round may still answer
        assert settled.done() and sink.failed == [] and sink.emitted == [] and joiner.open == {}

    run(body)
