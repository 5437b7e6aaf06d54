"""A worker's Kafka roles together: model gateway, dataflow and pipeline gateway over one consumer
and its producers, for the partitions this worker owns (p % workers == index); records for its own
partitions are also handed over in memory (local hops, see backbone.loopback)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from confluent_kafka import Message

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.config.pipelines import parse_pipelines
from headrace.config.settings import Settings
from headrace.engine import topics as t
from headrace.engine.backbone.consumer import PartitionConsumer
from headrace.engine.backbone.loopback import HopLedger, LocalRecord, LoopbackProducer
from headrace.engine.backbone.offload import (
    AlreadyHandled,
    HopOffload,
    PayloadGone,
    ResolvedRecord,
    offload_header,
)
from headrace.engine.backbone.offsets import OffsetTracker
from headrace.engine.backbone.producer import AsyncProducer, HeaderSeq, ProduceError
from headrace.engine.backbone.record import Record, headers_of
from headrace.engine.dataflow.graph import PipelineGraph, compile_pipeline
from headrace.engine.dataflow.runner import DataflowRunner
from headrace.engine.gateways.model import ModelGateway
from headrace.engine.gateways.pipeline import PipelineGateway, Reply, Target
from headrace.engine.kafka.config import (
    BUSY_CALLS,
    admin_config,
    busy_producer_config,
    dataplane_consumer_config,
    hop_producer_config,
    producer_config,
)
from headrace.engine.kafka.ready import BrokerNotReady, wait_ready
from headrace.gateway.control import RoutingTable
from headrace.gateway.dataplane import DataPlane
from headrace.gateway.oip.types import InferRequest, InferResponse

log = logging.getLogger("headrace.node")

COMMIT_INTERVAL_S = 1.0


def kafka_enabled(settings: Settings) -> bool:
    """Pipelines need a broker: a given cluster, or an embedded one (not ``embedded_broker = none``)."""
    return bool(settings.kafka_bootstrap) or settings.embedded_broker != "none"


def owned_partitions(partitions: int, workers: int, index: int) -> list[int]:
    return [p for p in range(partitions) if p % workers == index]


class DataNode:
    def __init__(
        self, settings: Settings, loop: asyncio.AbstractEventLoop, index: int, dataplane: DataPlane
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.topics = t.Topics(settings.topic_prefix, settings.namespace)
        self.partitions = owned_partitions(settings.partitions, settings.worker_count, index)
        # the records a caller waits for (what the pipeline gateway writes) go out at once; with
        # local hops, the steps' records go through a second producer that batches them
        self.producer = AsyncProducer(producer_config(settings), loop)
        self.hop_producer = self.busy_producer = self.producer
        if settings.local_hops:
            self.hop_producer = AsyncProducer(hop_producer_config(settings), loop)
            self.busy_producer = AsyncProducer(busy_producer_config(settings), loop)
        group = f"{settings.topic_prefix}-{settings.namespace}-headrace-dataplane"
        self.consumer = PartitionConsumer(
            dataplane_consumer_config(settings, group), self.partitions, loop, self._dispatch
        )
        self.tracker = OffsetTracker()
        # with local hops, a step's large payload may be parked in shared memory (its Kafka copy
        # then carries a reference; see backbone/offload.py)
        self.offload = HopOffload(
            os.urandom(4).hex(),
            settings.hop_shm_min_bytes if settings.local_hops else 0,
            settings.hop_shm_arena_bytes,
        )
        self.hops = HopLedger(release=self.offload.release)
        self._model_topics: dict[str, bool] = {}
        self._owned = frozenset(self.partitions)
        self._wanted: frozenset[str] = frozenset()
        # the steps' records (models' topics) linger long; pipelines' records (what topic readers of
        # the async path wait for) and errors only briefly
        steps = self._loopback(self.hop_producer, offloadable=self._is_model_topic)
        busy = self._loopback(self.busy_producer)
        self.writer = SplitWriter(self._is_model_topic, steps, busy)
        self.models = ModelGateway(
            self.topics,
            self.writer,
            dataplane,
            num_workers=settings.modelgateway_num_workers,
            max_consumers=settings.modelgateway_max_num_consumers,
            worker_timeout_s=settings.modelgateway_worker_timeout_ms / 1000,
            workers_for=self._gateway_workers,
        )
        self.dataflow = DataflowRunner(
            self.writer, settings.partitions, self._dataflow_error, loop, self.topics.errors
        )
        self.gateway = PipelineGateway(
            self.topics, self._loopback(self.producer), self.partitions, busy, BUSY_CALLS
        )
        self.table = RoutingTable()
        self.running: dict[str, int] = {}  # pipeline -> version whose topics this worker consumes
        self.errors: dict[str, str] = {}
        self.on_change: Callable[[], None] | None = None
        self._commit_timer: asyncio.TimerHandle | None = None
        self._generation = 0

    def _loopback(
        self, producer: AsyncProducer, offloadable: Callable[[str], bool] | None = None
    ) -> LoopbackProducer:
        return LoopbackProducer(
            producer,
            self.hops,
            self._is_local,
            self._deliver_local,
            self.loop,
            on_lost=self._hop_lost,
            enabled=self.settings.local_hops,
            offload=self.offload if offloadable is not None else None,
            offloadable=offloadable,
        )

    def _producers(self) -> list[AsyncProducer]:
        return list(dict.fromkeys([self.producer, self.hop_producer, self.busy_producer]))

    def _is_model_topic(self, topic: str) -> bool:
        """A step's record (a model's inputs or outputs): its payload may be parked in shared memory.
        The pipelines' inputs and outputs topics always carry full payloads."""
        known = self._model_topics.get(topic)
        if known is None:
            ref = self.topics.parse(topic)
            known = self._model_topics[topic] = ref is not None and ref.kind == t.MODEL
        return known

    async def start(self) -> None:
        """Open the Kafka clients once the broker answers (it may start after the workers)."""
        conf = admin_config(self.settings)
        while True:
            try:
                await self.loop.run_in_executor(None, wait_ready, conf, 30.0)
                break
            except BrokerNotReady as exc:
                log.warning("%s; still waiting", exc.message)
        for producer in self._producers():
            producer.start()
        self.consumer.start()
        self._commit_timer = self.loop.call_later(COMMIT_INTERVAL_S, self._commit)
        self.update(self.table)

    # -- routing updates (event loop) -------------------------------------------------------------
    def update(self, table: RoutingTable) -> None:
        self.table = table
        if not self.consumer.started:
            return  # applied when the clients open
        graphs: dict[str, tuple[PipelineGraph, str]] = {}
        errors: dict[str, str] = {}
        for name, route in table.pipelines.items():
            try:
                manifest = parse_pipelines(route.manifest)[0]
                graphs[name] = (compile_pipeline(manifest, self.topics), str(route.version))
            except HeadraceError as exc:
                errors[name] = exc.message
            except (yaml.YAMLError, IndexError) as exc:
                errors[name] = f"unreadable manifest: {exc}"
        self.dataflow.set_pipelines(graphs)
        self.errors = errors
        wanted = {self.topics.errors} | self.dataflow.topics()
        wanted |= {self.topics.model_inputs(m) for m in table.models}
        wanted |= self.gateway.reply_topics([Target(p, t.PIPELINE) for p in graphs])
        versions = {name: table.pipelines[name].version for name in graphs}
        self._generation += 1
        generation = self._generation
        self._wanted = frozenset(wanted)
        fut = self.consumer.set_topics(wanted)

        def assigned(f: asyncio.Future[None]) -> None:
            if generation == self._generation and not f.cancelled() and f.exception() is None:
                self.running = versions
                if self.on_change is not None:
                    self.on_change()

        fut.add_done_callback(assigned)

    def _gateway_workers(self, model: str) -> int | None:
        route = self.table.models.get(model)
        return route.gateway_workers if route is not None and route.gateway_workers > 0 else None

    def pipeline_ready(self, name: str) -> bool:
        route = self.table.pipelines.get(name)
        return route is not None and route.ready and self.running.get(name) == route.version

    # -- the data plane's KafkaPath port ------------------------------------------------------------
    def pipeline_known(self, name: str) -> bool:
        return name in self.table.pipelines

    async def call_via_kafka(
        self, name: str, kind: str, request: InferRequest, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[InferResponse, str]:
        reply = await self.call(
            Target(name, t.PIPELINE if kind == t.PIPELINE else t.MODEL), request, list(headers)
        )
        return reply.response, reply.key

    # -- synchronous calls ------------------------------------------------------------------------
    async def call(self, target: Target, request: InferRequest, headers: list[tuple[str, Any]]) -> Reply:
        if target.kind == t.PIPELINE:
            route = self.table.pipelines.get(target.name)
            if route is None:
                raise HeadraceError(f"pipeline '{target.name}' not found", kind=ErrorKind.NOT_FOUND)
            timeout = route.timeout_s
            if not self.pipeline_ready(target.name):
                await self._wait_ready(target.name, timeout)
        else:
            if target.name not in self.table.models:
                raise HeadraceError(f"model '{target.name}' not found", kind=ErrorKind.NOT_FOUND)
            timeout = self.settings.pipeline_timeout_s
        return await self.gateway.call(target, request, headers, timeout)

    async def _wait_ready(self, name: str, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        while not self.pipeline_ready(name):
            if self.loop.time() >= deadline:
                route = self.table.pipelines.get(name)
                why = (
                    route.message if route is not None and route.message else "not running in this worker yet"
                )
                raise HeadraceError(f"pipeline '{name}' is not ready: {why}", kind=ErrorKind.UNAVAILABLE)
            await asyncio.sleep(0.05)

    # -- records, consumed or handed over in memory (event loop) --------------------------------
    def _is_local(self, topic: str, partition: int) -> bool:
        return partition in self._owned and topic in self._wanted

    def _dispatch(self, msgs: list[Message]) -> None:
        """Records from the consumer thread. A copy of a record this process handed over in memory
        is not handled again: it is committed once the in-memory handling is done."""
        own = self.hops.own
        tracker = self.tracker
        for msg in msgs:
            if msg.error() is not None:
                log.warning("consumer: %s", msg.error())
                continue
            tp = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            tracker.begin(tp, offset)
            done = functools.partial(tracker.done, tp, offset)
            seq = own(msg.headers())
            if seq is not None:
                self.hops.returned(seq, done)
            elif (parked := offload_header(msg.headers())) is not None:
                self._route_parked(msg, parked, done)
            else:
                self._route(msg, done)

    def _route_parked(self, msg: Message, parked: bytes, done: Callable[[], None]) -> None:
        """A step's record whose payload another incarnation parked in shared memory (it died before
        handling it): fetch the payload back and handle the record."""
        try:
            value = self.offload.fetch(parked)
        except AlreadyHandled:
            done()  # its block was freed: the hop had been handled before the writer died
            return
        except PayloadGone as exc:
            self._dataflow_error(msg, f"the record on {msg.topic()} cannot be handled: {exc}")
            done()
            return
        self._route(ResolvedRecord(msg, value), done)

    def _deliver_local(self, record: LocalRecord) -> None:
        self._route(record, functools.partial(self.hops.handled, record.seq))

    def _route(self, msg: Record, done: Callable[[], None]) -> None:
        """Hand a record to the roles that want it; ``done`` once they have all finished with it."""
        topic = msg.topic() or ""
        ref = self.topics.parse(topic)
        if ref is not None and ref.kind == t.MODEL and ref.direction == t.INPUTS:
            if ref.name in self.table.models:
                self.models.submit(ref.name, msg, done)
                return
        elif topic == self.topics.errors or (ref is not None and ref.direction == t.OUTPUTS):
            self.gateway.on_reply(msg)
        if self.dataflow.handles(topic):
            futures = self.dataflow.on_record(msg)
            if futures:
                _when_all(futures, done)
                return
        done()

    def _hop_lost(self, record: LocalRecord, exc: BaseException) -> None:
        """A pipeline's record could not be written: fail its caller, if waiting (a record larger than
        its topic accepts is the pipeline's problem, 400; anything else the broker's, 503)."""
        too_large = isinstance(exc, ProduceError) and exc.too_large
        kind = ErrorKind.INVALID_ARGUMENT if too_large else ErrorKind.UNAVAILABLE
        self.gateway.fail(record.key(), f"writing to {record.topic()} failed: {exc}", kind)

    def _dataflow_error(self, msg: Record, message: str) -> None:
        headers = headers_of(msg)
        self.writer.produce(
            self.topics.errors,
            t.partition_of(msg.key(), self.settings.partitions),
            msg.key() or b"",
            message.encode(),
            [*headers, (t.ERROR_HEADER, b"dataflow")],
        )

    def _commit(self) -> None:
        self.consumer.commit(self.tracker.to_commit())
        self.hops.sweep()
        self._commit_timer = self.loop.call_later(COMMIT_INTERVAL_S, self._commit)

    def close(self) -> None:
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        self.consumer.commit(self.tracker.to_commit())
        self.models.close()
        self.dataflow.close()
        self.gateway.fail_all("worker is shutting down")
        self.consumer.stop()
        for producer in self._producers():
            producer.close()
        self.offload.close()


class SplitWriter:
    """Writes a model's record through one producer and anything else through another."""

    def __init__(
        self, is_model: Callable[[str], bool], models: LoopbackProducer, other: LoopbackProducer
    ) -> None:
        self.is_model = is_model
        self.models = models
        self.other = other

    def produce(
        self, topic: str, partition: int, key: bytes, value: bytes, headers: HeaderSeq
    ) -> asyncio.Future[None]:
        writer = self.models if self.is_model(topic) else self.other
        return writer.produce(topic, partition, key, value, headers)


def _when_all(futures: list[Any], done: Callable[[], None]) -> None:
    remaining = len(futures)

    def one(_: Any) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done()

    for fut in futures:
        fut.add_done_callback(one)
