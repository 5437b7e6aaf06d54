"""Step batching: requests concatenated along the first dimension, flushed by size or by window, and the
model's answer cut back so that every request gets its own rows."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from headrace.engine.dataflow.batches import (
    BATCH_HEADER,
    Batcher,
    BatchSpec,
    batch_members,
    concat_requests,
    split_response,
)
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest, InferResponse, Tensor

pytestmark = pytest.mark.timeout(10)


def request(rows: list[list[int]]) -> bytes:
    req = InferRequest(model_name="m", inputs=[Tensor.from_numpy("x", np.array(rows, dtype=np.int64))])
    out: bytes = grpc_codec.encode_request(req).SerializeToString()
    return out


def test_concat_then_split_gives_every_member_its_own_rows() -> None:
    value, rows = concat_requests([request([[1, 2]]), request([[3, 4], [5, 6]]), request([[7, 8]])])
    assert rows == [1, 2, 1]
    batched = grpc_codec.decode_request(pb2.ModelInferRequest.FromString(value))
    assert batched.inputs[0].to_numpy().tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    # the model answers for the whole batch: doubled rows
    answer = InferResponse(model_name="m", outputs=[Tensor.from_numpy("y", batched.inputs[0].to_numpy() * 2)])
    members = [("0.p.a", 1), ("0.p.b", 2), ("1.p.c", 1)]
    parts = split_response(grpc_codec.encode_response(answer, None).SerializeToString(), members)
    got = [grpc_codec.decode_response(pb2.ModelInferResponse.FromString(p)) for p in parts]
    assert [r.outputs[0].to_numpy().tolist() for r in got] == [[[2, 4]], [[6, 8], [10, 12]], [[14, 16]]]
    assert [r.id for r in got] == ["a", "b", "c"]  # each answer carries its own request id


def test_requests_that_cannot_be_stacked_are_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        concat_requests([request([[1]]), grpc_codec.encode_request(InferRequest(model_name="m", inputs=[
            Tensor.from_numpy("z", np.array([[1]], dtype=np.int64))])).SerializeToString()])  # fmt: skip
    with pytest.raises(ValueError):
        concat_requests([request([[1, 2]]), request([[1, 2, 3]])])  # rows of different widths


def test_an_answer_with_the_wrong_number_of_rows_is_refused() -> None:
    answer = InferResponse(model_name="m", outputs=[Tensor.from_numpy("y", np.zeros((3, 1)))])
    with pytest.raises(ValueError, match="rows"):
        split_response(
            grpc_codec.encode_response(answer, None).SerializeToString(), [("0.p.a", 1), ("0.p.b", 1)]
        )


class Sink:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, list[tuple[str, Any]], bytes]] = []
        self.failed: list[tuple[bytes, str]] = []

    def _done(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def write(self, spec: BatchSpec, key: bytes, headers: Any, value: bytes) -> asyncio.Future[None]:
        self.written.append((key, headers, value))
        return self._done()

    def fail(self, spec: BatchSpec, key: bytes, headers: Any, message: str) -> asyncio.Future[None]:
        self.failed.append((key, message))
        return self._done()


SPEC = BatchSpec(pipeline="p", node="m", size=3, window_s=0.05, sink="sink")


def test_a_full_batch_goes_at_once_and_a_partial_one_when_its_window_closes() -> None:
    async def main() -> None:
        sink = Sink()
        batcher = Batcher(asyncio.get_running_loop(), sink.write, sink.fail, partitions=8)
        settled = [
            batcher.offer(SPEC, f"2.p.r{i}".encode(), [("x-request-id", f"r{i}".encode())], request([[i]]))
            for i in range(4)
        ]
        await asyncio.sleep(0)
        assert len(sink.written) == 1 and all(f.done() for f in settled[:3]) and not settled[3].done()
        key, headers, _ = sink.written[0]
        assert key.startswith(b"2.p.batch-")  # the partition of the batch's first request
        assert batch_members(headers) == [("2.p.r0", 1), ("2.p.r1", 1), ("2.p.r2", 1)]
        assert "x-request-id" not in dict(headers)
        await asyncio.sleep(0.1)  # nothing else comes: the window flushes the last one alone
        assert len(sink.written) == 2 and settled[3].done()
        assert orjson.loads(dict(sink.written[1][1])[BATCH_HEADER]) == [["2.p.r3", 1]]
        batcher.close()

    asyncio.run(main())


def test_a_batch_that_cannot_be_stacked_fails_each_member() -> None:
    async def main() -> None:
        sink = Sink()
        batcher = Batcher(asyncio.get_running_loop(), sink.write, sink.fail, partitions=8)
        batcher.offer(SPEC, b"0.p.a", [], request([[1, 2]]))
        batcher.offer(SPEC, b"0.p.b", [], request([[1, 2, 3]]))
        await asyncio.sleep(0.1)
        assert sink.written == []
        assert [k for k, _ in sink.failed] == [b"0.p.a", b"0.p.b"]
        assert "step m: cannot batch" in sink.failed[0][1]

    asyncio.run(main())


def test_each_member_of_a_batch_keeps_its_own_trace_context() -> None:
    """The batched record's own context is its first member's; the members' contexts are listed, and
    the split gives each member its own back."""
    from headrace.engine.dataflow.batches import BATCH_TRACE_HEADER, member_traces

    async def main() -> None:
        sink = Sink()
        batcher = Batcher(asyncio.get_running_loop(), sink.write, sink.fail, partitions=8)
        tp = [f"00-{i:032x}-{i:016x}-01".encode() for i in (1, 2)]
        batcher.offer(SPEC, b"0.p.a", [("traceparent", tp[0]), ("tracestate", b"k=v")], request([[1]]))
        batcher.offer(SPEC, b"0.p.b", [("traceparent", tp[1])], request([[2]]))
        batcher.offer(SPEC, b"0.p.c", [], request([[3]]))
        await asyncio.sleep(0)
        _, headers, _ = sink.written[0]
        assert dict(headers)["traceparent"] == tp[0]
        assert BATCH_TRACE_HEADER in dict(headers)
        assert member_traces(headers, 3) == [
            [("traceparent", tp[0]), ("tracestate", b"k=v")],
            [("traceparent", tp[1])],
            [],
        ]
        assert member_traces(headers, 2) is None  # a listing that does not fit is ignored
        batcher.close()

    asyncio.run(main())
