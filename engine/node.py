"""A worker's Kafka roles together: model gateway, dataflow and pipeline gateway over its consumers
(bulk and prompt, backbone.split_consumer) and producers, for the units sharding gives this worker
(engine/sharding.py, engine/ownership.py). Records for partitions its active units read are also
handed over in memory (local hops, see backbone.loopback). Units come and go by drain-first handoff
(engine/handover.py)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml
from confluent_kafka import Message

from headrace.config.errors import ErrorKind, HeadraceError
from headrace.config.pipelines import parse_pipelines
from headrace.config.settings import Settings
from headrace.engine import sampler
from headrace.engine import topics as t
from headrace.engine.backbone.consumer import PartitionConsumer
from headrace.engine.backbone.groups import GroupError, GroupOffsets, group_of
from headrace.engine.backbone.loopback import HopLedger, LocalRecord, LoopbackProducer
from headrace.engine.backbone.offload import (
    AlreadyHandled,
    HopOffload,
    PayloadGone,
    ResolvedRecord,
    offload_header,
)
from headrace.engine.backbone.producer import AsyncProducer, HeaderSeq, ProduceError
from headrace.engine.backbone.record import Record, headers_of
from headrace.engine.backbone.split_consumer import SplitConsumer
from headrace.engine.dataflow.graph import PipelineGraph, compile_pipeline
from headrace.engine.dataflow.runner import DataflowRunner
from headrace.engine.gateways.model import ModelGateway
from headrace.engine.gateways.pipeline import PipelineGateway, Reply, Target
from headrace.engine.handover import UnitKeeper
from headrace.engine.kafka.config import (
    BUSY_CALLS,
    admin_config,
    busy_producer_config,
    consumer_config,
    dataplane_consumer_config,
    hop_producer_config,
    producer_config,
)
from headrace.engine.kafka.ready import BrokerNotReady, wait_ready
from headrace.engine.ownership import ACTIVE, DRAINING, TP, Held, Holdings
from headrace.engine.sharding import MODEL_GATEWAY, PIPELINE, Unit, slot_of
from headrace.engine.steady import steady_paths
from headrace.gateway.control import RoutingTable, UnitRoute
from headrace.gateway.dataplane import DataPlane
from headrace.gateway.oip.types import InferRequest, InferResponse

log = logging.getLogger("headrace.node")

COMMIT_INTERVAL_S = 1.0
#: How often the loop polls the lingering producers for delivery reports while any are due: the steps'
#: records (nobody waits for their acknowledgement on a call's path) and a busy worker's pipeline
#: records (its callers wait for the input's, after a linger of 2 ms).
HOP_POLL_S = 0.005
BUSY_POLL_S = 0.001
_UNPARSED: Any = object()
#: Forwards a call to the worker that serves it: (worker id, target, request, headers, timeout).
Forward = Callable[[str, Target, InferRequest, list[tuple[str, Any]], float], Awaitable[Reply]]


def kafka_enabled(settings: Settings) -> bool:
    """Pipelines need a broker: a given cluster, or an embedded one (not ``embedded_broker = none``)."""
    return bool(settings.kafka_bootstrap) or settings.embedded_broker != "none"


def worker_id(settings: Settings, index: int) -> str:
    return f"{settings.instance_id or 'local'}/{index}"


class DataNode:
    def __init__(
        self, settings: Settings, loop: asyncio.AbstractEventLoop, index: int, dataplane: DataPlane
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.me = worker_id(settings, index)
        self.topics = t.Topics(settings.topic_prefix, settings.namespace)
        # the records a caller waits for (what the pipeline gateway writes) go out at once; with
        # local hops, the steps' records go through a second producer that batches them
        self.producer = AsyncProducer(producer_config(settings), loop)
        self.hop_producer = self.busy_producer = self.producer
        if settings.local_hops:
            # these two linger, so their reports are polled for on the loop (no thread hand-over)
            self.hop_producer = AsyncProducer(hop_producer_config(settings), loop, HOP_POLL_S)
            self.busy_producer = AsyncProducer(busy_producer_config(settings), loop, BUSY_POLL_S)
        group = f"{settings.topic_prefix}-{settings.namespace}-headrace-dataplane"
        consumer_conf = dataplane_consumer_config(settings, group)
        # -- metrics hooks (engine/sampler.py): consumer lag, produce→delivery per producer
        consumer_conf.update(sampler.consumer_stats(index, "bulk"))
        self.producer.delivery = sampler.delivery(index, "fast")
        if settings.local_hops:
            self.hop_producer.delivery = sampler.delivery(index, "hop")
            self.busy_producer.delivery = sampler.delivery(index, "busy")
        # --
        # with local hops, records other workers write for this one are read by a second consumer
        # that does not wait for bulk fetches (backbone/split_consumer.py)
        prompt = None
        if settings.local_hops:
            prompt_conf = consumer_config(settings, group)
            prompt_conf.update(sampler.consumer_stats(index, "prompt"))
            prompt = PartitionConsumer(prompt_conf, loop, self._dispatch)
        self.consumer = SplitConsumer(PartitionConsumer(consumer_conf, loop, self._dispatch), prompt)
        self.groups = GroupOffsets(admin_config(settings))
        self._admin = ThreadPoolExecutor(2, thread_name_prefix="kafka-admin")
        self.holdings = Holdings()
        # with local hops, a step's large payload may be parked in shared memory (its Kafka copy
        # then carries a reference; see backbone/offload.py)
        self.offload = HopOffload(
            os.urandom(4).hex(),
            settings.hop_shm_min_bytes if settings.local_hops else 0,
            settings.hop_shm_arena_bytes,
        )
        self.hops = HopLedger(release=self.offload.release)
        self._model_topics: dict[str, bool] = {}
        # the steps' records (models' topics) linger long; pipelines' records (what topic readers of
        # the async path wait for) and errors only briefly
        # a step's record for another worker is waited for there: it goes through the producer that
        # does not linger
        steps = self._loopback(self.hop_producer, offloadable=self._is_model_topic, remote=self.producer)
        busy = self._loopback(self.busy_producer)
        fast = self._loopback(self.producer)
        self._writers = [steps, busy, fast]
        self.writer = SplitWriter(self._is_model_topic, steps, busy)
        self.models = ModelGateway(
            self.topics,
            self.writer,
            dataplane,
            num_workers=settings.modelgateway_num_workers,
            max_consumers=settings.modelgateway_max_num_consumers,
            worker_timeout_s=settings.modelgateway_worker_timeout_ms / 1000,
            workers_for=self._gateway_workers,
            hold=self._hold,
        )
        self.dataflow = DataflowRunner(
            self.writer, settings.partitions, self._dataflow_error, loop, self.topics.errors
        )
        self.gateway = PipelineGateway(self.topics, fast, busy, BUSY_CALLS)
        self.keeper = UnitKeeper(
            loop=loop,
            settings=settings,
            topics=self.topics,
            holdings=self.holdings,
            groups=self.groups,
            consumer=self.consumer,
            admin=self._admin,
            dataflow=self.dataflow,
            writers=self._writers,
            producers=self._producers,
            models=lambda: self.table.models,
            awaited=self.gateway.awaited,
            mark_running=self._mark_running,
            notify=self._notify,
            reconcile=self._reconcile,
        )
        self.table = RoutingTable()
        self.running: dict[str, int] = {}  # pipeline -> version its active units here run
        self.errors: dict[str, str] = {}
        self.leaving = False
        self.forward: Forward | None = None
        self.on_change: Callable[[], None] | None = None
        self._changed = asyncio.Event()
        self._commit_timer: asyncio.TimerHandle | None = None
        self._committing = False
        self._started = False
        self._turn = 0
        self._said: dict[str, Any] = {}  # the report last announced
        self._parsed: dict[str, t.TopicRef | None] = {}  # topic -> what it is, parsed once
        self._shared: frozenset[TP] = frozenset()  # partitions other workers' units read too
        # pipeline -> (manifest, version, its graph or why it has none): compiled once per version
        self._compiled: dict[str, tuple[str, int, PipelineGraph | str]] = {}
        # pipeline -> its partitions with a steady path -> their owner, for this table (see call)
        self._steady: dict[str, dict[int, str]] = {}
        # pipeline -> (the partitions it is served on here, those of them with a steady path), for
        # this table
        self._choice: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def _loopback(
        self,
        producer: AsyncProducer,
        offloadable: Callable[[str], bool] | None = None,
        remote: AsyncProducer | None = None,
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
            remote=remote,
            shared=self._is_shared,
        )

    def _producers(self) -> list[AsyncProducer]:
        return list(dict.fromkeys([self.producer, self.hop_producer, self.busy_producer]))

    def _is_shared(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self._shared

    def _elsewhere(self) -> tuple[frozenset[TP], frozenset[TP]]:
        """(partitions units other workers own read, partitions they write). A record this worker
        writes to the first is waited for by another worker too, so it must not linger; the second
        carry records waited for here, so this worker reads them promptly (backbone/split_consumer.py)."""
        read: set[TP] = set()
        written: set[TP] = set()
        slots: dict[int, list[str]] | None = None
        errors = self.topics.errors
        for key, route in self.table.units.items():
            if route.owner == self.me:
                continue
            try:
                unit = Unit.parse(key)
            except ValueError:
                continue
            p = unit.partition
            if unit.kind == PIPELINE:
                entry = self.dataflow.graphs.get(unit.name)
                if entry is not None:
                    graph = entry[0]
                    read.update((topic, p) for topic in graph.reads)
                    written.update((topic, p) for topic in graph.writes)
                    written.add((graph.inputs_topic, p))  # its pipeline gateway's
                continue
            if slots is None:
                consumers = self.settings.modelgateway_max_num_consumers
                slots = {}
                for model in self.table.models:
                    slots.setdefault(slot_of(model, consumers), []).append(model)
            models = slots.get(int(unit.name), ())
            read.update((self.topics.model_inputs(m), p) for m in models)
            written.update((self.topics.model_outputs(m), p) for m in models)
            if models:
                written.add((errors, p))
        return frozenset(read), frozenset(written)

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
        self._started = True
        self._commit_timer = self.loop.call_later(COMMIT_INTERVAL_S, self._commit)
        self.update(self.table)

    @property
    def started(self) -> bool:
        return self._started

    # -- routing updates (event loop) -------------------------------------------------------------
    def update(self, table: RoutingTable) -> None:
        self.table = table
        if not self._started:
            return  # applied when the clients open
        graphs: dict[str, tuple[PipelineGraph, str]] = {}
        errors: dict[str, str] = {}
        compiled: dict[str, tuple[str, int, PipelineGraph | str]] = {}
        for name, route in table.pipelines.items():
            known = self._compiled.get(name)
            if known is not None and known[0] == route.manifest and known[1] == route.version:
                graph: PipelineGraph | str = known[2]  # a rebalance changes units, not manifests
            else:
                try:
                    graph = compile_pipeline(parse_pipelines(route.manifest)[0], self.topics)
                except HeadraceError as exc:
                    graph = exc.message
                except (yaml.YAMLError, IndexError) as exc:
                    graph = f"unreadable manifest: {exc}"
            compiled[name] = (route.manifest, route.version, graph)
            if isinstance(graph, str):
                errors[name] = graph
            else:
                graphs[name] = (graph, str(route.version))
        self._compiled = compiled
        self._steady, self._choice = {}, {}
        self.dataflow.set_pipelines(graphs)
        self.errors = errors
        self._shared, prompt = self._elsewhere()
        self.consumer.prompt(prompt)
        self._reconcile()

    def _reconcile(self) -> None:
        """Take the units the table gives this worker (once nobody else holds them), hand over the
        ones it gives to others, and keep every held unit reading what it must."""
        mine: dict[Unit, UnitRoute] = {}
        for key, route in self.table.units.items():
            if route.owner == self.me:
                try:
                    mine[Unit.parse(key)] = route
                except ValueError:
                    continue
        for key in [k for k in self.keeper.released if self.table.units.get(k, UnitRoute(owner="")).active]:
            del self.keeper.released[key]  # its next owner serves it: nothing more to tell
        for unit, route in mine.items():
            held = self.holdings.get(unit)
            if held is None and not route.waiting and not self.leaving:
                held = Held(unit, group_of(unit, self.topics.prefix, self.topics.namespace))
                self.holdings.add(held)
                held.task = asyncio.ensure_future(self.keeper.take(held, route))
        for held in self.holdings:
            if held.unit not in mine:
                if held.state != DRAINING:
                    self.keeper.start_drain(held)
            elif held.state == ACTIVE and (held.task is None or held.task.done()):
                grouped, replies = self.keeper.reads_of(held.unit)
                if grouped != set(held.reads) or replies != held.replies:
                    held.task = asyncio.ensure_future(self.keeper.extend(held))
        self._mark_running()
        self._notify()

    def _mark_running(self) -> None:
        """A pipeline runs here (at the table's version) once an active unit of it reads every topic
        of that version."""
        running: dict[str, int] = {}
        for name, route in self.table.pipelines.items():
            entry = self.dataflow.graphs.get(name)
            if entry is None or entry[1] != str(route.version):
                continue
            for held in self.holdings:
                unit = held.unit
                if (
                    unit.kind == PIPELINE
                    and unit.name == name
                    and held.state == ACTIVE
                    and all((topic, unit.partition) in held.reads for topic in entry[0].reads)
                ):
                    running[name] = route.version
                    break
        self.running = running

    def _notify(self) -> None:
        """Wake calls waiting for a unit; tell the scheduler when what the report says changed."""
        self._changed.set()
        self._changed = asyncio.Event()
        said = self.report()
        if said != self._said:
            self._said = said
            if self.on_change is not None:
                self.on_change()

    def report(self) -> dict[str, Any]:
        """What the worker's report says of its Kafka roles (read from the reporting thread)."""
        return {
            "pipelines": dict(self.running),
            "pipeline_errors": dict(self.errors),
            "held": self.holdings.report(),
            "released": dict(self.keeper.released),
            "leaving": self.leaving,
        }

    def _hold(self, inputs: frozenset[str]) -> None:
        """Backpressure from full model-gateway slots: hold their models' inputs topics and every
        topic that feeds them (a pipeline's inputs feed its first step in memory, past the consumer)."""
        self.consumer.hold(self.dataflow.feeding(inputs, self.topics))

    def _gateway_workers(self, model: str) -> int | None:
        route = self.table.models.get(model)
        return route.gateway_workers if route is not None and route.gateway_workers > 0 else None

    def pipeline_ready(self, name: str) -> bool:
        """Ready to take a call for this pipeline: its topics and models are there, and this worker
        or another serves one of its partitions (with this version)."""
        route = self.table.pipelines.get(name)
        if route is None or not route.ready:
            return False
        return self.running.get(name) == route.version or self._peer(PIPELINE, name) is not None

    def _peer(self, kind: str, name: str) -> str | None:
        """Another worker serving some partition of this resource, to forward a call to."""
        prefix = f"{kind}:{name}:"
        return self._turn_of(
            r.owner
            for k, r in self.table.units.items()
            if k.startswith(prefix) and r.active and r.owner in self.table.workers
        )

    def _turn_of(self, owners: Iterable[str]) -> str | None:
        """One of these workers other than this one, in turn (forwarded calls spread over them)."""
        others = sorted({w for w in owners if w != self.me})
        if not others or self.forward is None:
            return None
        self._turn += 1
        return others[self._turn % len(others)]

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
    async def call(
        self,
        target: Target,
        request: InferRequest,
        headers: list[tuple[str, Any]],
        forwarded: bool = False,
        timeout: float | None = None,
    ) -> Reply:
        """Answer a call through Kafka on one of the partitions this worker serves the target on; a
        worker serving none forwards it (once) to one that does. ``forwarded``: it came from another
        worker, and is answered here."""
        if target.kind == t.PIPELINE:
            route = self.table.pipelines.get(target.name)
            if route is None:
                raise HeadraceError(f"pipeline '{target.name}' not found", kind=ErrorKind.NOT_FOUND)
            kind, name = PIPELINE, target.name
            limit = route.timeout_s
        else:
            if target.name not in self.table.models:
                raise HeadraceError(f"model '{target.name}' not found", kind=ErrorKind.NOT_FOUND)
            kind = MODEL_GATEWAY
            name = str(slot_of(target.name, self.settings.modelgateway_max_num_consumers))
            limit = self.settings.pipeline_timeout_s
        deadline = self.loop.time() + (timeout if timeout is not None else limit)
        while True:
            partitions = self._serving(target, kind, name)
            steady = True
            if kind == PIPELINE and partitions:
                partitions, steady = self._steady_first(name, partitions)
            peer = None
            if not forwarded and not (partitions and steady):
                # a worker serving a steady path of the pipeline (also when none of this worker's
                # partitions has one: it answers sooner than a handover here), else any serving it
                peer = self._steady_peer(name) if kind == PIPELINE else None
                if not partitions:
                    peer = peer or self._peer(kind, name)
            if peer is None and partitions:
                remaining = max(0.001, deadline - self.loop.time())
                return await self.gateway.call(target, request, headers, remaining, partitions)
            if peer is not None and self.forward is not None:
                return await self.forward(
                    peer, target, request, headers, max(0.001, deadline - self.loop.time())
                )
            if self.loop.time() >= deadline:
                raise HeadraceError(self._not_served(target), kind=ErrorKind.UNAVAILABLE)
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), min(0.05, max(0.001, deadline - self.loop.time())))
            except TimeoutError:
                pass

    def _serving(self, target: Target, kind: str, name: str) -> tuple[int, ...]:
        if kind == PIPELINE:
            route = self.table.pipelines.get(target.name)
            if route is None or not route.ready or self.running.get(target.name) != route.version:
                return ()
        return self.holdings.active(kind, name)

    def _steady_of(self, pipeline: str) -> dict[int, str]:
        """The pipeline's partitions whose whole path is served where it is (the scheduler moves half
        the partitions at a time, so some stay steady) and their owners; once per table."""
        known = self._steady.get(pipeline)
        if known is None:
            entry = self.dataflow.graphs.get(pipeline)
            models = entry[0].models if entry is not None else ()
            slots = {slot_of(m, self.settings.modelgateway_max_num_consumers) for m in models}
            known = self._steady[pipeline] = steady_paths(self.table, pipeline, slots, self.me)
        return known

    def _steady_peer(self, pipeline: str) -> str | None:
        return self._turn_of(self._steady_of(pipeline).values())

    def _steady_first(self, pipeline: str, partitions: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
        """The partitions a new call goes to: this worker's with a steady path, if any, not into a
        handover (chosen once per table and set of partitions, not per call); and whether they are
        steady."""
        known = self._choice.get(pipeline)
        if known is not None and known[0] is partitions:
            mine = known[1]
        else:
            steady = self._steady_of(pipeline)
            mine = tuple(p for p in partitions if steady.get(p) == self.me)
            self._choice[pipeline] = (partitions, mine)
        return mine or partitions, bool(mine)

    def _not_served(self, target: Target) -> str:
        if target.kind == t.PIPELINE:
            route = self.table.pipelines.get(target.name)
            why = route.message if route is not None and route.message else "no worker serves it yet"
            return f"pipeline '{target.name}' is not ready: {why}"
        return f"model '{target.name}' is not served through Kafka yet: no worker has its partitions"

    # -- records, consumed or handed over in memory (event loop) --------------------------------
    def _is_local(self, topic: str, partition: int) -> bool:
        return self.holdings.local((topic, partition))

    def _dispatch(self, msgs: list[Message]) -> None:
        """Records from the consumer thread. A copy of a record this process handed over in memory
        is not handled again by the units that took it then: it is committed once they are done."""
        hops = self.hops
        own = hops.own
        trackers = self.holdings.trackers
        for msg in msgs:
            if msg.error() is not None:
                log.warning("consumer: %s", msg.error())
                continue
            headers = msg.headers()
            seq = own(headers)
            if seq is not None and hops.undelivered(seq):
                # back before it was handed over in memory: dispatched once it has been
                hops.after_delivery(seq, functools.partial(self._dispatch, [msg]))
                continue
            tp = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            takers = [h for h in self.holdings.readers(tp) if h.takes(tp, offset)]
            if seq is not None:
                holders, joined = hops.holders(seq)
                if takers == list(holders):  # the common case: its takers took it in memory
                    took, rest = takers, []
                else:
                    took = [h for h in takers if h in holders]
                    rest = [h for h in takers if h not in holders]
                for h in took:
                    trackers[h.group].begin(tp, offset)
                    if joined:
                        h.parked.add((tp[0], tp[1], offset))
                hops.returned(seq, functools.partial(self._finished, took, tp, offset))
                if rest:
                    self._handle(msg, rest, tp, offset, replies=False)
                continue
            parked = offload_header(headers)
            if parked is not None:
                record = self._resolve_parked(msg, parked)
                if record is None:
                    self._finished(takers, tp, offset, begun=False)
                    continue
                self._handle(record, takers, tp, offset, replies=True)
            else:
                self._handle(msg, takers, tp, offset, replies=True)

    def _handle(self, msg: Record, takers: list[Held], tp: TP, offset: int, *, replies: bool) -> None:
        for h in takers:
            self.holdings.trackers[h.group].begin(tp, offset)
        for h, futures, joined in self._route(msg, takers, replies):
            if joined:
                h.parked.add((tp[0], tp[1], offset))
            _when_all(futures, functools.partial(self._finished, [h], tp, offset))

    def _finished(self, holders: list[Held], tp: TP, offset: int, begun: bool = True) -> None:
        for h in holders:
            h.parked.discard((tp[0], tp[1], offset))
            if begun:
                self.holdings.trackers[h.group].done(tp, offset)

    def _resolve_parked(self, msg: Message, parked: bytes) -> Record | None:
        """A step's record whose payload another incarnation parked in shared memory (it died before
        handling it): its payload, or None when there is nothing left to do with it."""
        try:
            value = self.offload.fetch(parked)
        except AlreadyHandled:
            return None  # its block was freed: the hop had been handled before the writer died
        except PayloadGone as exc:
            self._dataflow_error(msg, f"the record on {msg.topic()} cannot be handled: {exc}")
            return None
        return ResolvedRecord(msg, value)

    def _deliver_local(self, record: LocalRecord) -> None:
        tp = (record.topic(), record.partition())
        takers = [h for h in self.holdings.readers(tp) if h.takes_local()]
        routed = self._route(record, takers, replies=True)
        joined = any(j for _, _, j in routed)
        self.hops.handled_by(record.seq, tuple(takers), joined)
        _when_all(
            [f for _, futures, _ in routed for f in futures],
            functools.partial(self.hops.handled, record.seq),
        )

    def _route(
        self, msg: Record, takers: list[Held], replies: bool
    ) -> list[tuple[Held, list[asyncio.Future[None]], bool]]:
        """Hand a record to the roles of the units that take it; per unit, the futures of its work and
        whether the record waits in a join. Callers' answers go to the pipeline gateway."""
        topic = msg.topic() or ""
        ref = self._parsed.get(topic, _UNPARSED)
        if ref is _UNPARSED:
            ref = self._parsed[topic] = self.topics.parse(topic)
        if replies and (topic == self.topics.errors or (ref is not None and ref.direction == t.OUTPUTS)):
            self.gateway.on_reply(msg)
        out: list[tuple[Held, list[asyncio.Future[None]], bool]] = []
        if not takers:
            return out
        pipelines: dict[str, Held] = {}
        for h in takers:
            if h.unit.kind == PIPELINE:
                pipelines[h.unit.name] = h
            elif ref is not None and ref.kind == t.MODEL and ref.direction == t.INPUTS:
                if ref.name in self.table.models:
                    done: asyncio.Future[None] = self.loop.create_future()
                    self.models.submit(ref.name, msg, functools.partial(_resolve, done))
                    out.append((h, [done], False))
                else:
                    out.append((h, [], False))
        if len(pipelines) == 1:  # the common case: one pipeline's unit reads this partition here
            [(name, h)] = pipelines.items()
            routed = self.dataflow.on_record(msg, pipelines) if self.dataflow.handles(topic) else []
            out.append((h, [f for _, f, _ in routed], any(j for _, _, j in routed)))
        elif pipelines:
            by_unit: dict[str, tuple[list[asyncio.Future[None]], bool]] = {n: ([], False) for n in pipelines}
            if self.dataflow.handles(topic):
                for name, fut, joined in self.dataflow.on_record(msg, pipelines):
                    futures, was = by_unit[name]
                    futures.append(fut)
                    by_unit[name] = (futures, was or joined)
            out += [(pipelines[n], futures, joined) for n, (futures, joined) in by_unit.items()]
        return out

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

    # -- commits, leaving, closing ----------------------------------------------------------------
    def _commit(self) -> None:
        self._commit_timer = self.loop.call_later(COMMIT_INTERVAL_S, self._commit)
        self.hops.sweep()
        self.keeper.unread_unused()
        if self._committing:
            return
        due = self._due_commits()
        if due:
            self._committing = True
            fut = self.loop.run_in_executor(self._admin, self._commit_all, due)
            fut.add_done_callback(lambda _: setattr(self, "_committing", False))

    def _due_commits(self) -> dict[str, dict[TP, int]]:
        """Per group, the offsets whose commit point moved — only for partitions a held unit reads
        (a unit handed over commits its fence itself)."""
        reading: dict[str, set[TP]] = {}
        for held in self.holdings:
            if held.committed:
                reading.setdefault(held.group, set()).update(held.reads)
        due: dict[str, dict[TP, int]] = {}
        for group, tracker in self.holdings.trackers.items():
            moved = {(tp, p): o for tp, p, o in tracker.to_commit() if (tp, p) in reading.get(group, ())}
            if moved:
                due[group] = moved
        return due

    def _commit_all(self, due: dict[str, dict[TP, int]]) -> None:
        for group, offsets in due.items():
            try:
                self.groups.commit(group, offsets)
            except GroupError as exc:
                log.warning("offset commit failed: %s", exc)

    async def leave(self, timeout: float) -> None:
        """Hand every unit to other workers before stopping (when there are any): say so, then wait
        until nothing is held — or a table that knows this worker is leaving still gives it its units
        and does not say they move soon (nobody can take them), or the time is up. (A newer table
        alone is not enough: one made for another worker that is leaving too still gives this one its
        units.)"""
        self.leaving = True
        self._notify()
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline and any(True for _ in self.holdings):
            heard = self.table.workers.get(self.me)
            if (
                heard is not None
                and heard.leaving
                and all(self._kept_here(str(h.unit)) for h in self.holdings)
            ):
                break  # the scheduler has heard and gives the units to nobody else
            await asyncio.sleep(0.02)

    def _kept_here(self, unit: str) -> bool:
        """The table leaves this unit here for good: not one whose turn to move is only announced."""
        route = self.table.units.get(unit, UnitRoute(owner=""))
        return route.owner == self.me and not route.soon

    def close(self) -> None:
        """Called off the event loop, at the end: commit what is finished, stop the clients."""
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        due: dict[str, dict[TP, int]] = {}
        for held in self.holdings:
            tracker = self.holdings.trackers.get(held.group)
            if tracker is not None and held.committed:
                moved = {(tp, p): o for tp, p, o in tracker.to_commit() if (tp, p) in held.reads}
                if moved:
                    due.setdefault(held.group, {}).update(moved)
        self._commit_all(due)
        self.models.close()
        self.dataflow.close()
        self.gateway.fail_all("worker is shutting down")
        self.consumer.stop()
        for producer in self._producers():
            producer.close()
        self.offload.close()
        self._admin.shutdown(wait=False)
        self.groups.close()


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


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _when_all(futures: Sequence[asyncio.Future[None]], done: Callable[[], None]) -> None:
    remaining = len(futures)
    if remaining == 0:
        done()
        return

    def one(_: Any) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done()

    for fut in futures:
        fut.add_done_callback(one)
