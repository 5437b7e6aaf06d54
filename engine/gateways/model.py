"""Model gateway: records on a model's inputs topic → the model (servers or inline) → its outputs topic.

Models hash (mmh3) into ``max_consumers`` slots, as Seldon's MODELGATEWAY_MAX_NUM_CONSUMERS; a slot
is a logical consumer — its own queue and ``num_workers`` asyncio workers (MODELGATEWAY_NUM_WORKERS)
— over the worker's single Kafka consumer, so a slow model stalls only its own slot.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mmh3

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.engine import topics as t
from headrace.engine.backbone.loopback import HOP_HEADER
from headrace.engine.backbone.record import Record, Writer, headers_of
from headrace.engine.gateways.expiry import Expiry
from headrace.gateway.dataplane import DataPlane
from headrace.gateway.oip import grpc_codec
from headrace.gateway.oip.pb import pb2
from headrace.gateway.oip.types import InferRequest
from headrace.gateway.runtime.client import InferResult
from headrace.gateway.telemetry.front import FrontDoor
from headrace.gateway.telemetry.tracing import StepTelemetry

log = logging.getLogger("headrace.modelgw")


#: A slot holding more records than this (or bytes than HOLD_BYTES) queued asks that its models'
#: inputs topics be fetched no more until it is down to half (backpressure): a backlog on a topic (an
#: async writer's, or what a restarted worker finds) stays in Kafka instead of in memory.
HOLD_RECORDS = 1000
HOLD_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class Slot:
    queue: asyncio.Queue[tuple[str, Record, Callable[[], None]]] = field(default_factory=asyncio.Queue)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    busy: int = 0  # records taken off the queue and being called (for metrics)
    queued_bytes: int = 0
    models: set[str] = field(default_factory=set)  # whose records it took
    full: bool = False  # it asked for its models' topics to be held


def slot_of(model: str, max_consumers: int) -> int:
    return int(mmh3.hash(model, signed=False)) % max_consumers


class ModelGateway:
    def __init__(
        self,
        topics: t.Topics,
        producer: Writer,
        dataplane: DataPlane,
        *,
        num_workers: int = 8,
        max_consumers: int = 100,
        worker_timeout_s: float = 120.0,
        workers_for: Callable[[str], int | None] | None = None,
        hold: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self.topics = topics
        self.producer = producer
        self.dataplane = dataplane
        self.num_workers = num_workers
        self.max_consumers = max_consumers
        self.worker_timeout_s = worker_timeout_s
        self.workers_for = workers_for
        self.hold = hold  # told the inputs topics not to fetch for now (the consumer's hold)
        self.slots: dict[int | str, Slot] = {}  # hash slot index, or a model with its own workers
        self._expiry: Expiry | None = None  # the calls' deadlines (made on the loop, at the first)
        # metrics and tracing hooks (gateway/telemetry): the steps' model calls, hop times, spans
        self.calls = FrontDoor(getattr(dataplane, "registry", None))
        self.steps = StepTelemetry()

    def submit(self, model: str, msg: Record, done: Callable[[], None]) -> None:
        """Called on the event loop for every record of ``model``'s inputs topic; ``done`` is called
        once the record is answered (its output or error written). A model with its own concurrency
        (``modelgateway.workers``) gets a slot of its own, so it neither waits for nor holds up the
        models sharing its hash slot."""
        own = self.workers_for(model) if self.workers_for else None
        key: int | str = model if own else slot_of(model, self.max_consumers)
        count = own or self.num_workers
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = Slot()
        while len(slot.workers) < count:  # grows only: a worker is never cancelled mid-record
            slot.workers.append(asyncio.ensure_future(self._work(slot)))
        slot.queue.put_nowait((model, msg, done))
        slot.queued_bytes += len(msg.value() or b"")
        if model not in slot.models:
            slot.models.add(model)
            if slot.full:
                self._held()
        if not slot.full and (slot.queue.qsize() > HOLD_RECORDS or slot.queued_bytes > HOLD_BYTES):
            slot.full = True
            self._held()

    def _held(self) -> None:
        if self.hold is not None:
            full = (s for s in self.slots.values() if s.full)
            self.hold(frozenset(self.topics.model_inputs(m) for s in full for m in s.models))

    def in_flight(self) -> dict[int | str, int]:
        """Records queued or being handled, per slot (for metrics and tests)."""
        return {i: s.queue.qsize() + s.busy for i, s in self.slots.items()}

    async def _work(self, slot: Slot) -> None:
        me = asyncio.current_task()
        assert me is not None
        if self._expiry is None:
            self._expiry = Expiry(self.worker_timeout_s, asyncio.get_running_loop())
        expiry = self._expiry
        while True:
            model, msg, done = await slot.queue.get()
            slot.busy += 1
            slot.queued_bytes -= len(msg.value() or b"")
            if slot.full and slot.queue.qsize() <= HOLD_RECORDS // 2 and slot.queued_bytes <= HOLD_BYTES // 2:
                slot.full = False
                self._held()
            try:
                written = await self._handle(model, msg, me, expiry)
            except Exception:  # never let one record kill the worker
                log.exception("model gateway failed on a record of %s", model)
                done()
                continue
            finally:
                slot.busy -= 1
            # the next record does not wait for the broker's ack of this one's output
            written.add_done_callback(functools.partial(self._written, model, msg, done))

    async def _handle(
        self, model: str, msg: Record, me: asyncio.Task[Any], expiry: Expiry
    ) -> asyncio.Future[None]:
        """Call the model (within ``worker_timeout_s``); returns the future of writing its output
        (or its error)."""
        partition = msg.partition() or 0
        key = msg.key() or b""
        began, started = self.steps.began(), time.perf_counter()  # telemetry hook
        try:
            request = decode_model_input(model, msg.value() or b"")
            pending = self.dataplane.infer(request)
            if isinstance(pending, InferResult):
                result = pending
            else:  # a deadline on this task: no task of its own per call, as wait_for would make
                ticket = expiry.begin(me)
                try:
                    result = await pending
                except BaseException as exc:
                    if expiry.end(ticket):  # the deadline cancelled it
                        me.uncancel()
                        if isinstance(exc, asyncio.CancelledError):
                            raise TimeoutError from None
                    raise
                if expiry.end(ticket):  # expired, but the call let the cancellation pass
                    me.uncancel()
            try:
                value = grpc_codec.encode_response(result.response, request).SerializeToString()
            finally:
                result.release()
        except (HeadraceError, TimeoutError) as exc:
            message = exc.message if isinstance(exc, HeadraceError) else "model gateway worker timed out"
            failed = exc if isinstance(exc, HeadraceError) else HeadraceError(message, ErrorKind.TIMEOUT)
            self.calls.step_done(model, started, None, None, failed)  # telemetry hook
            self.steps.step(model, headers_of(msg), began, message)
            return self._error(model, msg, message)
        self.calls.step_done(model, started, result.served_by, result.response.model_version, None)
        inputs = headers_of(msg)
        headers = self.steps.step(model, inputs, began)  # telemetry hook: hop time, span
        source = _source(inputs, msg.offset())
        if source is not None:  # which input this answers: a pipeline drops a second answer to it
            headers.append((t.SOURCE_HEADER, source))
        return self.producer.produce(self.topics.model_outputs(model), partition, key, value, headers)

    def _written(self, model: str, msg: Record, done: Callable[[], None], fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is None:
            done()
            return
        # e.g. the output is larger than the broker accepts: the caller must hear of it
        self._error(model, msg, str(exc)).add_done_callback(lambda _: done())

    def _error(self, model: str, msg: Record, message: str) -> asyncio.Future[None]:
        err_headers = [*headers_of(msg), (t.ERROR_HEADER, model.encode())]
        fut = self.producer.produce(
            self.topics.errors, msg.partition() or 0, msg.key() or b"", message.encode(), err_headers
        )
        fut.add_done_callback(functools.partial(_log_failed_error, model))
        return fut

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.close()
        for slot in self.slots.values():
            for task in slot.workers:
                task.cancel()


def _source(headers: list[tuple[str, Any]], offset: int | None) -> bytes | None:
    """The input record's identity: its local-hop stamp (on the record in memory and on its copy in
    Kafka alike), or else its offset in the partition."""
    if headers and headers[0][0] == HOP_HEADER and isinstance(stamp := headers[0][1], bytes):
        return stamp
    return b"@%d" % offset if offset is not None and offset >= 0 else None


def _log_failed_error(model: str, fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("could not write the error of %s to the errors topic: %s", model, fut.exception())


def decode_model_input(model: str, value: bytes) -> InferRequest:
    """A model input record: an OIP ModelInferRequest, or a ModelInferResponse whose outputs become
    the inputs (raw contents kept), as Seldon's model gateway accepts."""
    try:
        msg = pb2.ModelInferRequest.FromString(value)
        if msg.inputs or not value:
            msg.model_name = model
            return grpc_codec.decode_request(msg)
    except HeadraceError:
        raise
    except Exception:
        pass
    try:
        resp = grpc_codec.decode_response(pb2.ModelInferResponse.FromString(value))
    except Exception as exc:
        raise HeadraceError(
            f"record is neither a ModelInferRequest nor a ModelInferResponse: {exc}"
        ) from None
    return InferRequest(model_name=model, inputs=resp.outputs, id=resp.id, parameters=resp.parameters)
