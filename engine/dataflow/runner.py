"""Runs compiled pipelines on consumed records: gate on the pipeline header, transform, forward.

Every hop writes to the partition named in the record's key, so a request stays on the partition
(and so on the worker) that accepted it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from headrace.config.errors import HeadraceError
from headrace.engine import topics as t
from headrace.engine.backbone.producer import Headers
from headrace.engine.backbone.record import Record, Writer, headers_of
from headrace.engine.dataflow.answers import SeenAnswers, source_of
from headrace.engine.dataflow.batches import (
    BATCH_HEADER,
    BATCH_TRACE_HEADER,
    Batcher,
    BatchSpec,
    batch_members,
    member_traces,
    split_response,
)
from headrace.engine.dataflow.graph import PipelineGraph, StepRoute
from headrace.engine.dataflow.joins import Joiner, JoinSpec
from headrace.engine.dataflow.transforms import adjust_headers, transform
from headrace.engine.dataflow.visits import enter, visits

log = logging.getLogger("headrace.dataflow")

Written = asyncio.Future[None]
#: (pipeline, the future of its write, whether the record waits in a join)
Forwarded = tuple[str, "asyncio.Future[None]", bool]


class DataflowRunner:
    def __init__(
        self,
        producer: Writer,
        partitions: int,
        on_error: Callable[[Record, str], None],
        loop: asyncio.AbstractEventLoop,
        errors_topic: str,
    ) -> None:
        self.producer = producer
        self.partitions = partitions
        self.on_error = on_error
        self.joiner = Joiner(loop, self._emit_join, self._fail_join)
        self.batcher = Batcher(loop, self._write_batch, self._fail_batch, partitions)
        self.errors_topic = errors_topic
        self.graphs: dict[str, tuple[PipelineGraph, str]] = {}  # name -> (graph, version)
        self.by_topic: dict[str, list[StepRoute]] = {}
        self.pipelines_of: dict[str, set[str]] = {}  # topic -> the pipelines whose routes read it
        self.seen = SeenAnswers()  # model answers taken, so that one written twice is taken once

    def set_pipelines(self, graphs: dict[str, tuple[PipelineGraph, str]]) -> None:
        self.graphs = graphs
        by_topic: dict[str, list[StepRoute]] = {}
        for graph, _ in graphs.values():
            for topic, routes in graph.routes.items():
                by_topic.setdefault(topic, []).extend(routes)
        self.by_topic = by_topic
        self.pipelines_of = {topic: {r.pipeline for r in routes} for topic, routes in by_topic.items()}

    def topics(self) -> set[str]:
        return set(self.by_topic)

    def feeding(self, topics: Iterable[str], names: t.Topics) -> frozenset[str]:
        """These topics and every topic whose records reach them, through the pipelines' routes and
        their steps' models (a model's outputs come from its inputs): what to hold so that no more
        records flow into them, in memory or through Kafka."""
        sources: dict[str, set[str]] = {}
        for source, routes in self.by_topic.items():
            for route in routes:
                sources.setdefault(route.sink_topic, set()).add(source)
        out, todo = set(topics), list(topics)
        while todo:
            topic = todo.pop()
            ups = set(sources.get(topic, ()))
            ref = names.parse(topic)
            if ref is not None and ref.kind == t.MODEL and ref.direction == t.OUTPUTS:
                ups.add(names.model_inputs(ref.name))
            for up in ups - out:
                out.add(up)
                todo.append(up)
        return frozenset(out)

    def handles(self, topic: str) -> bool:
        return topic in self.by_topic

    def on_record(self, msg: Record, pipelines: Mapping[str, object] | None = None) -> list[Forwarded]:
        """Forward one record along every route it feeds (of these pipelines, or all); returns, per
        route taken, its pipeline, the future of its write and whether it waits in a join. A batched
        model answer is first cut back into one record per request of the batch."""
        topic = msg.topic() or ""
        routes = self.by_topic.get(topic)
        if routes and pipelines is not None and not self.pipelines_of[topic] <= pipelines.keys():
            routes = [r for r in routes if r.pipeline in pipelines]
        if not routes:
            return []
        headers: Headers = headers_of(msg)
        source = source_of(headers)
        if source is not None:  # a model's answer: a copy written again after a takeover is dropped
            partition, seen = msg.partition() or 0, self.seen
            fresh = {p for p in {r.pipeline for r in routes} if seen.first(p, topic, partition, source)}
            if not fresh:
                return []
            routes = [r for r in routes if r.pipeline in fresh]
        value = msg.value() or b""
        members = batch_members(headers) if topic.endswith(".outputs") else None
        if members is None:
            return self._forward(msg, routes, msg.key() or b"", headers, value)
        try:
            values = split_response(value, members)
        except (HeadraceError, ValueError) as exc:
            text = exc.message if isinstance(exc, HeadraceError) else str(exc)
            self.on_error(msg, f"a batched answer on {topic} cannot be split: {text}")
            return []
        futures: list[Forwarded] = []
        # each member goes on in its own trace (the batch's own context is its first member's)
        traces = member_traces(headers, len(members))
        dropped = {BATCH_HEADER, BATCH_TRACE_HEADER, t.REQUEST_ID_HEADER}
        if traces is not None:
            dropped |= {"traceparent", "tracestate"}
        plain = [(n, v) for n, v in headers if n not in dropped]
        for i, ((key, _), part) in enumerate(zip(members, values, strict=True)):
            request_id = (t.split_key(key) or ("", "", ""))[2]
            member_headers = [*plain, (t.REQUEST_ID_HEADER, request_id.encode())]
            if traces is not None:
                member_headers += traces[i]
            futures += self._forward(msg, routes, key.encode(), member_headers, part)
        return futures

    def _forward(
        self, msg: Record, routes: list[StepRoute], key: bytes, headers: Headers, value: bytes
    ) -> list[Forwarded]:
        partition = t.partition_of(key, self.partitions)
        futures: list[Forwarded] = []
        for route in routes:
            if not t.pipeline_matches(headers, route.gate or route.pipeline):  # type: ignore[arg-type]
                continue
            try:
                out = transform(route.chain_kind, value, route.tensors, route.tensor_map, route.source_topic)
            except HeadraceError as exc:
                self.on_error(msg, f"pipeline {route.pipeline}: {exc.message}")
                continue
            if out is None:
                continue  # nothing left after tensor selection: conditional routing drops it
            version = self.graphs.get(route.pipeline, (None, "1"))[1]
            out_headers = adjust_headers(headers, route.pipeline, version)  # type: ignore[arg-type]
            rnd = before = 0
            if route.max_visits:  # a cyclic pipeline: count the request's entries into the step
                rnd, before, out_headers = enter(out_headers, route.step)
            name = route.pipeline
            if route.join is not None:
                offer = self.joiner.offer(route.join, route.join_index, key, out_headers, out, rnd)
                futures.append((name, offer, not offer.done()))
            elif route.batch is not None:
                futures.append((name, self.batcher.offer(route.batch, key, out_headers, out), False))
            elif route.max_visits and before >= route.max_visits:
                fail = self._too_many_visits(route.pipeline, route.step, route.max_visits, key, out_headers)
                futures.append((name, fail, False))
            else:
                write = self.producer.produce(route.sink_topic, partition, key, out, out_headers)
                futures.append((name, write, False))
        return futures

    def close(self) -> None:
        """Drop open joins (their source records stay uncommitted: a successor rebuilds them)."""
        self.joiner.close()
        self.batcher.close()
        self.seen.clear()

    def release(self, pipeline: str, partition: int) -> None:
        """A pipeline's partition goes to another worker: its partial batches are written now and
        its open joins dropped (the new owner rebuilds them from the records handed to it)."""
        self.batcher.flush_pipeline(pipeline)
        self.seen.forget(pipeline, partition)
        self.joiner.abandon(pipeline, lambda key: t.partition_of(key, self.partitions) == partition)

    def _emit_join(
        self, spec: JoinSpec, key: bytes, headers: Headers, value: bytes, rnd: int
    ) -> asyncio.Future[None]:
        if spec.then is not None:  # e.g. a step's joined triggers go on to meet its inputs
            return self.joiner.offer(spec.then, spec.then_index, key, headers, value, rnd)
        if spec.max_visits and spec.request and visits(headers, spec.node) > spec.max_visits:
            return self._too_many_visits(spec.pipeline, spec.node, spec.max_visits, key, headers)
        return self.producer.produce(spec.sink, t.partition_of(key, self.partitions), key, value, headers)

    def _too_many_visits(
        self, pipeline: str, step: str, cap: int, key: bytes, headers: Headers
    ) -> asyncio.Future[None]:
        """A cyclic pipeline's request about to enter a step once more than maxStepRevisits allows."""
        message = (
            f"pipeline {pipeline}: step {step} was entered {cap} times for this request, "
            f"its cap (maxStepRevisits {cap})"
        )
        log.info("%s (key %s)", message, key.decode("utf-8", "replace"))
        return self._error(step, key, headers, message)

    def _write_batch(
        self, spec: BatchSpec, key: bytes, headers: Headers, value: bytes
    ) -> asyncio.Future[None]:
        return self.producer.produce(spec.sink, t.partition_of(key, self.partitions), key, value, headers)

    def _fail_batch(
        self, spec: BatchSpec, key: bytes, headers: Headers, message: str
    ) -> asyncio.Future[None]:
        return self._error(spec.node, key, headers, message)

    def _fail_join(self, spec: JoinSpec, key: bytes, headers: Headers, message: str) -> asyncio.Future[None]:
        """An incomplete inner join: an error record, which the error route takes to the caller."""
        log.info("%s (key %s)", message, key.decode("utf-8", "replace"))
        return self._error(spec.node if spec.node != "output" else spec.pipeline, key, headers, message)

    def _error(self, node: str, key: bytes, headers: Headers, message: str) -> asyncio.Future[None]:
        """An error record for ``key``, which the error route takes to its caller."""
        return self.producer.produce(
            self.errors_topic,
            t.partition_of(key, self.partitions),
            key,
            message.encode(),
            [*headers, (t.ERROR_HEADER, node.encode())],
        )
