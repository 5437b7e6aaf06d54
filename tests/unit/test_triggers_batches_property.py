"""Trigger and batch semantics against small reference models: random arrival orders and times, windows
expiring on a virtual clock (nothing depends on real time)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual_clock import VirtualLoop, done

from headrace.engine.dataflow.batches import Batcher, BatchSpec, batch_members, split_response
from headrace.engine.dataflow.joins import Joiner, JoinSpec
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest, InferResponse, Tensor

pytestmark = pytest.mark.timeout(120)

WINDOW = 10.0
Event = tuple[str, float, str, tuple[int, ...]]  # (emit|fail, when, which join, sources)


def part(name: str) -> bytes:
    msg = pb2.ModelInferRequest()
    msg.inputs.add(name=name, datatype="INT64", shape=[1])
    msg.raw_input_contents.append((1).to_bytes(8, "little"))
    return msg.SerializeToString()


def timed_reference(
    kind: str, sources: int, arrivals: list[tuple[float, int]]
) -> list[tuple[str, float, tuple[int, ...]]]:
    """A join of ``sources`` inputs over (time, source) arrivals for one key: ("emit", when, sources)
    or ("fail", when, missing). Inner: emit when the last source arrives within the window opened by
    the first, else fail at its end. Any: emit the first arrival, drop the rest of the window."""
    out: list[tuple[str, float, tuple[int, ...]]] = []
    i = 0
    while i < len(arrivals):
        start = arrivals[i][0]
        got: list[int] = []
        j = i
        complete = False
        while j < len(arrivals) and arrivals[j][0] < start + WINDOW:
            when, index = arrivals[j]
            j += 1
            if kind == "any":
                if not got:
                    out.append(("emit", when, (index,)))
                got.append(index)
                continue
            if index not in got:
                got.append(index)
            if len(got) == sources:
                out.append(("emit", when, tuple(range(sources))))
                complete = True
                break
        if kind == "inner" and not complete:
            out.append(("fail", start + WINDOW, tuple(k for k in range(sources) if k not in got)))
        i = j
    return out


def trigger_reference(
    kind: str, triggers: int, data: list[float], fired: list[tuple[float, int]]
) -> list[Event]:
    """A step with ``triggers`` trigger sources (joined with ``kind``) gating its data: the triggers'
    join meets the data in an inner gate; only the data goes on."""
    events: list[Event] = []
    if triggers == 1:
        trigger_times = [when for when, _ in fired]
    else:
        trigger_times = []
        for what, when, sources in timed_reference(kind, triggers, fired):
            if what == "emit":
                trigger_times.append(when)
            else:
                events.append(("fail", when, "triggers", sources))
    gate_arrivals = sorted([(when, 0) for when in data] + [(when, 1) for when in trigger_times])
    for what, when, sources in timed_reference("inner", 2, gate_arrivals):
        events.append((what, when, "gate", (0,) if what == "emit" else sources))
    return sorted(events)


trigger_cases = st.integers(min_value=1, max_value=3).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.integers(0, 30).map(lambda k: k + 0.5), max_size=4),  # data: half-past times
        # triggers at whole times, each with or without its tensor (without: the route drops it)
        st.lists(st.tuples(st.integers(0, 30).map(float), st.integers(0, n - 1), st.booleans()), max_size=8),
    )
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["inner", "any"]), case=trigger_cases)
def test_a_trigger_gate_does_what_the_reference_says(
    kind: str, case: tuple[int, list[float], list[tuple[float, int, bool]]]
) -> None:
    triggers, data, trigger_arrivals = case
    events: list[Event] = []
    arrivals = sorted(
        [(when, "data", 0, True) for when in data] + [(w, "trigger", i, f) for w, i, f in trigger_arrivals]
    )

    async def main() -> None:
        loop = VirtualLoop(asyncio.get_running_loop())
        gate = JoinSpec(
            pipeline="p", node="s", sources=("inputs", "triggers (t*)"), kind="inner", window_s=WINDOW,
            request=True, sink="sink", part="gate", keep_first=True,
        )  # fmt: skip
        trig = JoinSpec(
            pipeline="p", node="s", sources=tuple(f"t{i}.outputs" for i in range(triggers)),
            kind=kind, window_s=WINDOW, request=True, sink="sink", part="triggers",  # type: ignore[arg-type]
            then=gate, then_index=1,
        )  # fmt: skip

        def emit(spec: JoinSpec, key: bytes, headers: Any, value: bytes, rnd: int) -> asyncio.Future[None]:
            if spec.then is not None:  # as the runner: the triggers' join goes on to the gate
                return joiner.offer(spec.then, spec.then_index, key, headers, value, rnd)
            names = [t.name for t in pb2.ModelInferRequest.FromString(value).inputs]
            assert names == ["d"]  # the trigger's payload is not passed on
            events.append(("emit", loop.now, spec.part, (0,)))
            return done(loop)

        def fail(spec: JoinSpec, key: bytes, headers: Any, message: str) -> asyncio.Future[None]:
            missing = message.split("got no ", 1)[1]
            labels = ("inputs", "triggers") if spec.part == "gate" else spec.sources
            events.append(
                ("fail", loop.now, spec.part, tuple(k for k, s in enumerate(labels) if s in missing))
            )
            return done(loop)

        joiner = Joiner(loop, emit, fail)  # type: ignore[arg-type]
        settled = []
        for when, what, index, fires in arrivals:
            loop.advance(when)
            if what == "data":
                settled.append(joiner.offer(gate, 0, b"key", [], part("d")))
            elif fires:  # a trigger without its tensor never reaches the join
                spec, at = (gate, 1) if triggers == 1 else (trig, index)
                settled.append(joiner.offer(spec, at, b"key", [], part(f"t{index}")))
        loop.advance(1e9)
        for _ in range(4):  # settlements chain: a trigger's record is released when its gate is
            await asyncio.sleep(0)
        assert all(f.done() for f in settled) and joiner.open == {}

    asyncio.run(main())
    fired = [(when, index) for when, index, fires in sorted(trigger_arrivals) if fires]
    assert sorted(events) == trigger_reference(kind, triggers, data, fired)


def request(rows: int, member: int) -> bytes:
    array = np.arange(rows * 2, dtype=np.int64).reshape(rows, 2) + 100 * member
    req = InferRequest(model_name="m", inputs=[Tensor.from_numpy("x", array)])
    out: bytes = grpc_codec.encode_request(req).SerializeToString()
    return out


def batch_reference(size: int, arrivals: list[tuple[float, int]]) -> list[tuple[float, list[int]]]:
    """(when written, members) of each batch: a batch opens with a request and goes when it holds
    ``size`` requests or when the window opened by its first one closes."""
    out: list[tuple[float, list[int]]] = []
    i = 0
    while i < len(arrivals):
        start, members = arrivals[i][0], [i]
        i += 1
        while len(members) < size and i < len(arrivals) and arrivals[i][0] < start + WINDOW:
            members.append(i)
            i += 1
        out.append((arrivals[members[-1]][0] if len(members) == size else start + WINDOW, members))
    return out


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 4),
    arrivals=st.lists(
        st.tuples(st.integers(0, 40).map(float), st.integers(1, 3)), min_size=1, max_size=10
    ).map(sorted),
)
def test_batches_form_and_split_as_the_reference_says(size: int, arrivals: list[tuple[float, int]]) -> None:
    written: list[tuple[float, list[tuple[str, int]], bytes]] = []

    async def main() -> None:
        loop = VirtualLoop(asyncio.get_running_loop())

        def write(spec: BatchSpec, key: bytes, headers: Any, value: bytes) -> asyncio.Future[None]:
            members = batch_members(headers)
            assert members is not None
            written.append((loop.now, members, value))
            return done(loop)

        def fail(spec: BatchSpec, key: bytes, headers: Any, message: str) -> asyncio.Future[None]:
            raise AssertionError(message)

        batcher = Batcher(loop, write, fail, partitions=8)  # type: ignore[arg-type]
        spec = BatchSpec(pipeline="p", node="m", size=size, window_s=WINDOW, sink="sink")
        settled = []
        for i, (when, rows) in enumerate(arrivals):
            loop.advance(when)
            settled.append(batcher.offer(spec, f"0.p.r{i}".encode(), [], request(rows, i)))
        loop.advance(1e9)
        await asyncio.sleep(0)
        assert all(f.done() for f in settled) and batcher.open == {}

    asyncio.run(main())
    expected = batch_reference(size, arrivals)
    assert [(when, [key for key, _ in members]) for when, members, _ in written] == [
        (when, [f"0.p.r{i}" for i in members]) for when, members in expected
    ]
    for (_, members, value), (_, indices) in zip(written, expected, strict=True):
        assert [rows for _, rows in members] == [arrivals[i][1] for i in indices]
        batched = grpc_codec.decode_request(pb2.ModelInferRequest.FromString(value)).inputs[0].to_numpy()
        # an echo model's answer for the whole batch, cut back: every member gets exactly its own rows
        answer = InferResponse(model_name="m", outputs=[Tensor.from_numpy("x", batched)])
        parts = split_response(grpc_codec.encode_response(answer, None).SerializeToString(), members)
        for i, piece in zip(indices, parts, strict=True):
            got = grpc_codec.decode_response(pb2.ModelInferResponse.FromString(piece)).outputs[0].to_numpy()
            mine = grpc_codec.decode_request(pb2.ModelInferRequest.FromString(request(arrivals[i][1], i)))
            assert got.tolist() == mine.inputs[0].to_numpy().tolist()
