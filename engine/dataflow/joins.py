"""Joins of a step's (or a pipeline output's) several sources, keyed by the request key, on wall-clock
windows: inner, outer and any, as Seldon's Joiner — but an outer join flushes when its window closes
(not when a later record happens by), and an inner join that cannot complete is answered with an
error instead of leaving its caller waiting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headrace.config.pipelines import JoinType
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest, InferResponse

log = logging.getLogger("headrace.joins")

Headers = list[tuple[str, Any]]
#: (spec, key, headers, value, round) -> the future of writing the joined record
Emit = Callable[["JoinSpec", bytes, Headers, bytes, int], "asyncio.Future[None]"]
#: (spec, key, headers, message) -> the future of writing the error
Fail = Callable[["JoinSpec", bytes, Headers, str], "asyncio.Future[None]"]


@dataclass(frozen=True, slots=True)
class JoinSpec:
    """One join point: a step's inputs (sink a request) or a pipeline's output (sink a response)."""

    pipeline: str
    node: str  # the step's name, or "output"
    sources: tuple[str, ...]  # as written in the manifest, in declared order
    kind: JoinType
    window_s: float
    request: bool  # the joined record is a ModelInferRequest (else a ModelInferResponse)
    sink: str  # the topic the joined record goes to (unless ``then``)
    part: str = ""  # which join of the node this is ("" the inputs; "triggers"; "gate")
    keep_first: bool = False  # emit only the first source (a trigger gate drops the trigger payload)
    then: JoinSpec | None = None  # the joined record goes on to this join instead of ``sink``
    then_index: int = 0  # as that join's source number
    max_visits: int = 0  # in a cyclic pipeline: the step's cap on visits (0: the pipeline has no cycles)


#: (pipeline, node, part, key, round)
Slot = tuple[str, str, str, bytes, int]


@dataclass(slots=True)
class _Open:
    parts: list[bytes | None]
    headers: Headers
    timer: asyncio.TimerHandle | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    emitted: bool = False  # `any`: the first arrival went on; later ones are dropped


class Joiner:
    """Join state of one worker: bounded by the windows (every open join has a timer)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, emit: Emit, fail: Fail) -> None:
        self.loop = loop
        self.emit = emit
        self.fail = fail
        self.open: dict[Slot, _Open] = {}

    def offer(
        self, spec: JoinSpec, index: int, key: bytes, headers: Headers, value: bytes, rnd: int = 0
    ) -> asyncio.Future[None]:
        """One source's record for ``key`` in round ``rnd`` (a cyclic pipeline's visit number: each
        round joins apart). The future completes when the join it took part in is settled and written
        (or dropped), so the source record is committed only then: a worker that dies meanwhile
        rebuilds the join from the topics."""
        settled: asyncio.Future[None] = self.loop.create_future()
        slot = (spec.pipeline, spec.node, spec.part, key, rnd)
        state = self.open.get(slot)
        if state is None:
            state = self.open[slot] = _Open([None] * len(spec.sources), headers)
            state.timer = self.loop.call_later(spec.window_s, self._expire, spec, slot)
        if spec.kind == "any":
            if state.emitted:
                settled.set_result(None)  # a later arrival for the same key: dropped, never duplicated
                return settled
            state.emitted = True
            _chain(self.emit(spec, key, headers, value, rnd), settled)
            return settled  # the tombstone stays until the window closes
        if state.parts[index] is not None:
            settled.set_result(None)  # the same source twice for one key: the first one counts
            return settled
        state.parts[index] = value
        if index == 0:
            state.headers = headers  # as Seldon: the first declared input is the join's left side
        state.waiters.append(settled)
        if all(p is not None for p in state.parts):
            self._close(slot, state)
            self._settle(state, self._emit_joined(spec, slot, state))
        return settled

    def _expire(self, spec: JoinSpec, slot: Slot) -> None:
        state = self.open.pop(slot, None)
        if state is None or spec.kind == "any":
            return
        key = slot[3]
        if spec.kind == "outer" and any(p is not None for p in state.parts):
            self._settle(state, self._emit_joined(spec, slot, state))
            return
        missing = [s for s, p in zip(spec.sources, state.parts, strict=True) if p is None]
        where = "output" if spec.node == "output" else f"step {spec.node}"
        what = {"triggers": "trigger join", "gate": "join of inputs and triggers"}.get(spec.part, "join")
        message = (
            f"pipeline {spec.pipeline}: {where}: the {spec.kind} {what} got no {', '.join(missing)} "
            f"within its window of {spec.window_s * 1000:g} ms"
        )
        if spec.max_visits:  # a cyclic pipeline: a later round may still answer (a loop's exit gate)
            log.debug("%s (key %s, round %d): dropped", message, key.decode("utf-8", "replace"), slot[4])
            self._settle(state, _done(self.loop))
            return
        self._settle(state, self.fail(spec, key, state.headers, message))

    def _emit_joined(self, spec: JoinSpec, slot: Slot, state: _Open) -> asyncio.Future[None]:
        key = slot[3]
        parts = state.parts[:1] if spec.keep_first else state.parts
        try:
            value = merge([p for p in parts if p is not None], spec.request)
        except Exception as exc:  # a part the codec refuses (e.g. mismatched contents)
            return self.fail(spec, key, state.headers, f"pipeline {spec.pipeline}: join failed: {exc}")
        return self.emit(spec, key, state.headers, value, slot[4])

    def _close(self, slot: Slot, state: _Open) -> None:
        self.open.pop(slot, None)
        if state.timer is not None:
            state.timer.cancel()

    @staticmethod
    def _settle(state: _Open, written: asyncio.Future[None]) -> None:
        for waiter in state.waiters:
            _chain(written, waiter)
        state.waiters = []

    def abandon(self, pipeline: str, keys: Callable[[bytes], bool]) -> int:
        """Drop a pipeline's open joins whose key matches, without emitting or failing them (their
        records are handed to another worker); returns how many."""
        gone = [slot for slot in self.open if slot[0] == pipeline and keys(slot[3])]
        for slot in gone:
            state = self.open.pop(slot)
            if state.timer is not None:
                state.timer.cancel()
        return len(gone)

    def close(self) -> None:
        for state in self.open.values():
            if state.timer is not None:
                state.timer.cancel()
        self.open.clear()


def _done(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = loop.create_future()
    fut.set_result(None)
    return fut


def _chain(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    def done(fut: asyncio.Future[None]) -> None:
        if not target.done():
            target.set_result(None)  # settled either way: a failed write is reported where it happens

    source.add_done_callback(done)


def merge(parts: list[bytes], request: bool) -> bytes:
    """Concatenate the tensors of ``parts`` in order; id and parameters come from the first. Raw and
    typed contents are not mixed in one message: if the parts differ, all are turned into raw."""
    cls: Any = pb2.ModelInferRequest if request else pb2.ModelInferResponse
    msgs = [cls.FromString(p) for p in parts]
    if len(msgs) == 1:
        return parts[0]
    tensors, raw = ("inputs", "raw_input_contents") if request else ("outputs", "raw_output_contents")
    kinds = {len(getattr(m, raw)) > 0 for m in msgs if len(getattr(m, tensors))}
    if len(kinds) > 1:
        return _merge_decoded(msgs, request)
    first = msgs[0]
    for m in msgs[1:]:
        getattr(first, tensors).extend(getattr(m, tensors))
        getattr(first, raw).extend(getattr(m, raw))
    out: bytes = first.SerializeToString()
    return out


def _merge_decoded(msgs: list[Any], request: bool) -> bytes:
    if request:
        reqs = [grpc_codec.decode_request(m) for m in msgs]
        joined = InferRequest(
            model_name=reqs[0].model_name,
            inputs=[t for r in reqs for t in r.inputs],
            id=reqs[0].id,
            parameters=reqs[0].parameters,
        )
        out: bytes = grpc_codec.encode_request(joined).SerializeToString()
        return out
    resps = [grpc_codec.decode_response(m) for m in msgs]
    joined_response = InferResponse(
        model_name=resps[0].model_name,
        outputs=[t for r in resps for t in r.outputs],
        id=resps[0].id,
        parameters=resps[0].parameters,
    )
    encoded: bytes = grpc_codec.encode_response(joined_response, None).SerializeToString()
    return encoded
