"""Pipeline gateway: a synchronous OIP call becomes a record on a pipeline's (or model's) inputs
topic; the answer is the record with the same key on its outputs topic, or an error, or a timeout.

Seldon's gateway waits for ever; here every call has a deadline (the pipeline's timeout).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.config.logs import current_request
from headrace.engine import topics as t
from headrace.engine.backbone.producer import Headers, ProduceError
from headrace.engine.backbone.record import Record, Writer, headers_of
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest, InferResponse
from headrace.gateway.telemetry import tracing

log = logging.getLogger("headrace.pipelinegw")

#: How long the gateway keeps writing new requests to the same one of its partitions.
STICKY_S = 0.1


@dataclass(frozen=True, slots=True)
class Target:
    """What a call addresses: a pipeline, or one model through its Kafka topics (``name.model``)."""

    name: str
    kind: str  # t.PIPELINE | t.MODEL


@dataclass(slots=True)
class Reply:
    response: InferResponse
    key: str


class PipelineGateway:
    def __init__(
        self,
        topics: t.Topics,
        producer: Writer,
        busy: Writer | None = None,
        busy_calls: int = 0,
    ) -> None:
        self.topics = topics
        self.producer = producer
        # with ``busy_calls`` or more calls in flight the inputs records go through ``busy`` (it
        # lingers: under load the broker gets fewer, larger requests)
        self.busy = busy
        self.busy_calls = busy_calls
        # per target: the partitions this worker serves it on, the turn over them, the one in use
        # and until when
        self._sticky: dict[Target, tuple[tuple[int, ...], Iterator[int], int, float]] = {}
        # key -> (the topic the answer comes on, its partition, the caller's future)
        self.pending: dict[bytes, tuple[str, int, asyncio.Future[Record]]] = {}

    def reply_topics(self, targets: list[Target]) -> set[str]:
        out = {self.topics.errors}
        for target in targets:
            out.add(
                self.topics.pipeline_outputs(target.name)
                if target.kind == t.PIPELINE
                else self.topics.model_outputs(target.name)
            )
        return out

    def on_reply(self, msg: Record) -> None:
        """A record on an outputs or the errors topic: wake the caller waiting for its key, if any.

        Intermediate steps write the same key to their models' outputs topics: only the target's own
        outputs topic (or the errors topic) answers."""
        key = msg.key() or b""
        entry = self.pending.get(key)
        if entry is None:
            return
        topic = msg.topic()
        if topic != entry[0] and topic != self.topics.errors:
            return
        del self.pending[key]
        if not entry[2].done():
            entry[2].set_result(msg)

    def awaited(self) -> set[tuple[str, int]]:
        """(topic, partition) of the answers callers still wait for (and the errors topic's)."""
        out: set[tuple[str, int]] = set()
        for topic, partition, _ in self.pending.values():
            out.add((topic, partition))
            out.add((self.topics.errors, partition))
        return out

    def _sticky_partition(self, target: Target, partitions: tuple[int, ...]) -> int:
        """One of the partitions this worker serves the target on, kept for STICKY_S before moving to
        the next (Kafka's sticky partitioner, by time): the records of requests close in time share
        partitions, so the broker gets fewer, larger batches (3-step chain peak +20% over a new
        partition per request)."""
        now = asyncio.get_running_loop().time()
        entry = self._sticky.get(target)
        if entry is None or entry[0] != partitions:
            turn = itertools.cycle(partitions)
            entry = (partitions, turn, next(turn), now + STICKY_S)
        elif now >= entry[3]:
            entry = (partitions, entry[1], next(entry[1]), now + STICKY_S)
        self._sticky[target] = entry
        return entry[2]

    async def call(
        self,
        target: Target,
        request: InferRequest,
        headers: Headers,
        timeout: float,
        partitions: tuple[int, ...],
    ) -> Reply:
        """Write the request to one of ``partitions`` (those this worker serves the target on) and
        wait for its answer."""
        request_id = request.id or _header(headers, t.REQUEST_ID_HEADER) or uuid.uuid4().hex
        partition = self._sticky_partition(target, partitions)
        key_text = t.make_key(partition, target.name, request_id)
        key = key_text.encode()
        call = current_request.get()  # telemetry hook: the answer's x-request-id, even on an error
        if call is not None:
            call.key = key_text
        if target.kind == t.PIPELINE:
            topic = self.topics.pipeline_inputs(target.name)
            reply_topic = self.topics.pipeline_outputs(target.name)
        else:
            topic = self.topics.model_inputs(target.name)
            reply_topic = self.topics.model_outputs(target.name)
        record_headers: Headers = [
            *[(n, v) for n, v in headers if n != t.REQUEST_ID_HEADER],
            (t.PIPELINE_HEADER, target.name.encode()),
            (t.REQUEST_ID_HEADER, request_id.encode()),
        ]
        value = grpc_codec.encode_request(request).SerializeToString()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Record] = loop.create_future()
        if key in self.pending:
            raise HeadraceError(f"request id {request_id!r} is already in flight", ErrorKind.CONFLICT)
        self.pending[key] = (reply_topic, partition, fut)
        try:
            deadline = loop.time() + timeout
            busy = self.busy is not None and len(self.pending) >= self.busy_calls
            writer = self.busy if busy and self.busy is not None else self.producer
            written = writer.produce(topic, partition, key, value, record_headers)
            written.add_done_callback(functools.partial(_written, fut))
            try:
                async with asyncio.timeout_at(deadline):  # one timer for the answer and the ack
                    msg = await fut
                    if not written.done():  # the answer came first (in memory): it waits for the ack
                        await asyncio.shield(written)
                        written.result()
            except TimeoutError:
                what = "answer" if written.done() else "take the request (Kafka did not acknowledge it)"
                raise HeadraceError(
                    f"{target.kind} {target.name} did not {what} within {seconds_text(timeout)} s",
                    ErrorKind.TIMEOUT,
                ) from None
            except (ProduceError, HeadraceError):
                refused = written.exception() if written.done() and not written.cancelled() else None
                if isinstance(refused, ProduceError):  # the request's own record: 413 or 503
                    kind = ErrorKind.TOO_LARGE if refused.too_large else ErrorKind.UNAVAILABLE
                    raise HeadraceError(f"{target.kind} {target.name}: {refused}", kind) from None
                raise
        finally:
            self.pending.pop(key, None)
        tracing.reply(target.name, headers_of(msg))  # telemetry hook: the last hop's time and span
        return Reply(self._decode(msg, request), key_text)

    def _decode(self, msg: Record, request: InferRequest) -> InferResponse:
        headers = headers_of(msg)
        failed = _header(headers, t.ERROR_HEADER)
        if failed is not None:
            text = (msg.value() or b"").decode("utf-8", "replace")
            raise HeadraceError(f"{failed} : {text}", ErrorKind.INVALID_ARGUMENT)
        try:
            response = grpc_codec.decode_response(pb2.ModelInferResponse.FromString(msg.value() or b""))
        except Exception as exc:
            raise HeadraceError(f"undecodable reply on {msg.topic()}: {exc}", ErrorKind.INTERNAL) from None
        if request.id and not response.id:
            response.id = request.id
        return response

    def fail(self, key: bytes, reason: str, kind: ErrorKind = ErrorKind.UNAVAILABLE) -> None:
        """Answer the caller waiting for ``key`` (if any) with an error."""
        entry = self.pending.pop(key, None)
        if entry is not None and not entry[2].done():
            entry[2].set_exception(HeadraceError(reason, kind))

    def fail_all(self, reason: str) -> None:
        for _, _, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(HeadraceError(reason, ErrorKind.UNAVAILABLE))
        self.pending.clear()


def _written(answer: asyncio.Future[Record], written: asyncio.Future[None]) -> None:
    """The request's record could not be written: its caller hears so at once."""
    if written.cancelled() or answer.done():
        return
    exc = written.exception()
    if exc is not None:
        answer.set_exception(exc)


def seconds_text(timeout: float) -> str:
    """A call's timeout as its caller set it: what is left of it when the call gets here (forwarded,
    or a millisecond later) is rounded up to 10 ms, so 1 s reads "1", not "0.997"."""
    return f"{math.ceil(timeout * 100 - 1e-6) / 100:g}"


def _header(headers: Headers, name: str) -> str | None:
    for n, v in headers:
        if n == name and v is not None:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return None
