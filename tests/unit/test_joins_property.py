"""Join semantics against a small reference model: random arrival orders and times, every join type,
windows expiring (a virtual clock drives the joiner's timers, so nothing depends on real time)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtual_clock import VirtualLoop, done

from headrace.engine.dataflow.joins import Joiner, JoinSpec
from headrace.gateway.oip.pb import pb2

pytestmark = pytest.mark.timeout(60)

WINDOW = 10.0


def part(index: int) -> bytes:
    msg = pb2.ModelInferRequest()
    msg.inputs.add(name=f"s{index}", datatype="INT64", shape=[1])
    msg.raw_input_contents.append(index.to_bytes(8, "little"))
    return msg.SerializeToString()


def reference(
    kind: str, sources: int, arrivals: list[tuple[float, int]]
) -> list[tuple[str, tuple[int, ...]]]:
    """What a join of ``sources`` inputs must do with these (time, source) arrivals for one key:
    ("emit", sources in declared order) or ("fail", missing sources), in order."""
    out: list[tuple[str, tuple[int, ...]]] = []
    i = 0
    while i < len(arrivals):
        start = arrivals[i][0]
        got: list[int] = []
        complete = False
        j = i
        while j < len(arrivals) and arrivals[j][0] < start + WINDOW:
            index = arrivals[j][1]
            j += 1
            if kind == "any":
                if not got:
                    out.append(("emit", (index,)))
                got.append(index)
                continue
            if index not in got:
                got.append(index)
            if len(got) == sources:
                out.append(("emit", tuple(range(sources))))
                complete = True
                break
        if kind != "any" and not complete:
            if kind == "outer":
                out.append(("emit", tuple(sorted(got))))
            else:
                out.append(("fail", tuple(k for k in range(sources) if k not in got)))
        i = j
    return out


arrival_lists = st.integers(min_value=2, max_value=4).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.tuples(st.integers(0, 30).map(float), st.integers(0, n - 1)), min_size=1, max_size=8).map(
            lambda xs: sorted(xs, key=lambda a: a[0])
        ),
    )
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["inner", "outer", "any"]), case=arrival_lists)
def test_the_joiner_does_what_the_reference_says(
    kind: str, case: tuple[int, list[tuple[float, int]]]
) -> None:
    sources, arrivals = case
    events: list[tuple[str, tuple[int, ...]]] = []

    async def main() -> None:
        loop = VirtualLoop(asyncio.get_running_loop())

        def emit(
            spec: JoinSpec, key: bytes, headers: Any, value: bytes, rnd: int = 0
        ) -> asyncio.Future[None]:
            names = [t.name for t in pb2.ModelInferRequest.FromString(value).inputs]
            events.append(("emit", tuple(int(n[1:]) for n in names)))
            return done(loop)

        def fail(spec: JoinSpec, key: bytes, headers: Any, message: str) -> asyncio.Future[None]:
            missing = tuple(k for k in range(sources) if f"s{k}.outputs" in message)
            events.append(("fail", missing))
            return done(loop)

        joiner = Joiner(loop, emit, fail)  # type: ignore[arg-type]
        spec = JoinSpec(
            pipeline="p", node="d", sources=tuple(f"s{k}.outputs" for k in range(sources)),
            kind=kind, window_s=WINDOW, request=True, sink="sink",  # type: ignore[arg-type]
        )  # fmt: skip
        settled = []
        for when, index in arrivals:
            loop.advance(when)
            settled.append(joiner.offer(spec, index, b"key", [], part(index)))
        loop.advance(1e9)  # every window closes
        await asyncio.sleep(0)
        assert all(f.done() for f in settled)  # every source record is released (committed)
        assert joiner.open == {}  # no join state outlives its window

    asyncio.run(main())
    assert events == reference(kind, sources, arrivals)
