"""Step batching: requests for a step are gathered (``batch.size`` rows' worth of records, or what came
within ``batch.windowMs``), concatenated along the first dimension into one model call, and the
model's answer is split back so that every request gets its own rows (Seldon answers only the last)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from headrace.config.errors import HeadraceError
from headrace.engine import topics as t
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest, InferResponse, Tensor

#: On a batched record: JSON [[member key, rows], ...] in batch order.
BATCH_HEADER = "headrace-batch"
#: On a batched record whose members carry trace context: JSON [[traceparent, tracestate], ...] in
#: batch order (null where a member has none), so each member goes on in its own trace after the split.
BATCH_TRACE_HEADER = "headrace-batch-trace"
_TRACE = ("traceparent", "tracestate")
#: A partial batch waits at most this long when the manifest gives no windowMs.
DEFAULT_WINDOW_MS = 100

Headers = list[tuple[str, Any]]
Write = Callable[["BatchSpec", bytes, Headers, bytes], "asyncio.Future[None]"]
Fail = Callable[["BatchSpec", bytes, Headers, str], "asyncio.Future[None]"]


@dataclass(frozen=True, slots=True)
class BatchSpec:
    pipeline: str
    node: str  # the step
    size: int  # records per batch
    window_s: float
    sink: str  # the step's model inputs topic


@dataclass(slots=True)
class _Pending:
    members: list[tuple[bytes, Headers, bytes]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Batcher:
    def __init__(self, loop: asyncio.AbstractEventLoop, write: Write, fail: Fail, partitions: int) -> None:
        self.loop = loop
        self.write = write
        self.fail = fail
        self.partitions = partitions
        self.open: dict[tuple[str, str], _Pending] = {}
        self._specs: dict[tuple[str, str], BatchSpec] = {}

    def offer(self, spec: BatchSpec, key: bytes, headers: Headers, value: bytes) -> asyncio.Future[None]:
        """One request for the step; the future completes once its batch is written (its source
        record is committed only then)."""
        slot = (spec.pipeline, spec.node)
        pending = self.open.get(slot)
        if pending is None:
            pending = self.open[slot] = _Pending()
            self._specs[slot] = spec
            pending.timer = self.loop.call_later(spec.window_s, self._flush, spec, slot)
        settled: asyncio.Future[None] = self.loop.create_future()
        pending.members.append((key, headers, value))
        pending.waiters.append(settled)
        if len(pending.members) >= spec.size:
            self._flush(spec, slot)
        return settled

    def _flush(self, spec: BatchSpec, slot: tuple[str, str]) -> None:
        pending = self.open.pop(slot, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        members = pending.members
        try:
            value, rows = concat_requests([m[2] for m in members])
        except (HeadraceError, ValueError) as exc:
            text = exc.message if isinstance(exc, HeadraceError) else str(exc)
            message = f"pipeline {spec.pipeline}: step {spec.node}: cannot batch these requests: {text}"
            writes = [self.fail(spec, key, headers, message) for key, headers, _ in members]
            _settle_after(writes, pending.waiters)
            return
        first_key, first_headers, _ = members[0]
        partition = t.partition_of(first_key, self.partitions)
        key = t.make_key(partition, spec.pipeline, f"batch-{uuid.uuid4().hex}").encode()
        listing = orjson.dumps(
            [[k.decode("utf-8", "replace"), n] for (k, _, _), n in zip(members, rows, strict=True)]
        )
        headers = [
            *[
                (n, v)
                for n, v in first_headers
                if n not in (t.REQUEST_ID_HEADER, BATCH_HEADER, BATCH_TRACE_HEADER)
            ],
            (BATCH_HEADER, listing),
        ]
        traces = [_trace_of(h) for _, h, _ in members]
        if any(tp is not None for tp, _ in traces):
            headers.append((BATCH_TRACE_HEADER, orjson.dumps(traces)))
        _settle_after([self.write(spec, key, headers, value)], pending.waiters)

    def flush_pipeline(self, pipeline: str) -> None:
        """Write the partial batches of a pipeline's steps now (e.g. before handing it over)."""
        for slot in [s for s in self.open if s[0] == pipeline]:
            self._flush(self._specs[slot], slot)

    def close(self) -> None:
        for pending in self.open.values():
            if pending.timer is not None:
                pending.timer.cancel()
        self.open.clear()


def _settle_after(writes: list[asyncio.Future[None]], waiters: list[asyncio.Future[None]]) -> None:
    remaining = len(writes)

    def one(_: asyncio.Future[None]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    for fut in writes:
        fut.add_done_callback(one)


def concat_requests(values: list[bytes]) -> tuple[bytes, list[int]]:
    """One ModelInferRequest with each input's rows concatenated in order; the rows each part brought."""
    reqs = [grpc_codec.decode_request(pb2.ModelInferRequest.FromString(v)) for v in values]
    first = reqs[0]
    names = [tensor.name for tensor in first.inputs]
    if not names:
        raise ValueError("a request has no inputs")
    rows: list[int] = []
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for req in reqs:
        by_name = {tensor.name: tensor for tensor in req.inputs}
        if sorted(by_name) != sorted(names):
            raise ValueError(f"inputs {sorted(by_name)} differ from {sorted(names)}")
        count = None
        for name in names:
            array = by_name[name].to_numpy()
            if array.ndim == 0:
                raise ValueError(f"input {name!r} has no first dimension to batch along")
            if count is not None and array.shape[0] != count:
                raise ValueError("the inputs of one request have different numbers of rows")
            count = array.shape[0]
            arrays[name].append(array)
        rows.append(int(count or 0))
    joined = InferRequest(
        model_name=first.model_name,
        inputs=[Tensor.from_numpy(name, np.concatenate(arrays[name], axis=0)) for name in names],
        id=first.id,
        parameters=first.parameters,
    )
    encoded: bytes = grpc_codec.encode_request(joined).SerializeToString()
    return encoded, rows


def _trace_of(headers: Headers) -> tuple[str | None, str | None]:
    found: dict[str, str] = {}
    for name, value in headers:
        if name in _TRACE and value is not None:
            found[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return found.get("traceparent"), found.get("tracestate")


def member_traces(headers: Headers, count: int) -> list[list[tuple[str, bytes]]] | None:
    """Each member's own trace headers, if the batched record lists them."""
    for name, value in headers:
        if name == BATCH_TRACE_HEADER and value is not None:
            try:
                listed = orjson.loads(value)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(listed, list) or len(listed) != count:
                return None
            out: list[list[tuple[str, bytes]]] = []
            for entry in listed:
                pairs = zip(_TRACE, entry or (None, None), strict=False)
                out.append([(n, str(v).encode("latin-1")) for n, v in pairs if v])
            return out
    return None


def batch_members(headers: Headers) -> list[tuple[str, int]] | None:
    """[(member key, rows)] if these are a batched record's headers."""
    for name, value in headers:
        if name == BATCH_HEADER and value is not None:
            try:
                return [(str(k), int(n)) for k, n in orjson.loads(value)]
            except (orjson.JSONDecodeError, TypeError, ValueError):
                return None
    return None


def split_response(value: bytes, members: list[tuple[str, int]]) -> list[bytes]:
    """A batched ModelInferResponse cut back into one response per member, by rows, in order."""
    response = grpc_codec.decode_response(pb2.ModelInferResponse.FromString(value))
    total = sum(n for _, n in members)
    bounds = np.cumsum([n for _, n in members])[:-1]
    pieces: list[list[Tensor]] = [[] for _ in members]
    for tensor in response.outputs:
        array = tensor.to_numpy()
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(f"output {tensor.name!r} has {array.shape[:1]} rows, the batch had {total}")
        for i, part in enumerate(np.split(array, bounds, axis=0)):
            pieces[i].append(Tensor.from_numpy(tensor.name, part))
    out = []
    for (key, _), outputs in zip(members, pieces, strict=True):
        parts = t.split_key(key)
        one = InferResponse(
            model_name=response.model_name,
            outputs=outputs,
            model_version=response.model_version,
            id=parts[2] if parts else None,
            parameters=response.parameters,
        )
        out.append(grpc_codec.encode_response(one, None).SerializeToString())
    return out
