"""Runs compiled pipelines on consumed records: gate on the pipeline header, transform, forward.

Every hop writes to the partition named in the record's key, so a request stays on the partition
(and so on the worker) that accepted it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from headrace.config.errors import HeadraceError
from headrace.engine import topics as t
from headrace.engine.backbone.producer import Headers
from headrace.engine.backbone.record import Record, Writer, headers_of
from headrace.engine.dataflow.graph import PipelineGraph, StepRoute
from headrace.engine.dataflow.joins import Joiner, JoinSpec
from headrace.engine.dataflow.transforms import adjust_headers, transform

log = logging.getLogger("headrace.dataflow")


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
        self.errors_topic = errors_topic
        self.graphs: dict[str, tuple[PipelineGraph, str]] = {}  # name -> (graph, version)
        self.by_topic: dict[str, list[StepRoute]] = {}

    def set_pipelines(self, graphs: dict[str, tuple[PipelineGraph, str]]) -> None:
        self.graphs = graphs
        by_topic: dict[str, list[StepRoute]] = {}
        for graph, _ in graphs.values():
            for topic, routes in graph.routes.items():
                by_topic.setdefault(topic, []).extend(routes)
        self.by_topic = by_topic

    def topics(self) -> set[str]:
        return set(self.by_topic)

    def handles(self, topic: str) -> bool:
        return topic in self.by_topic

    def on_record(self, msg: Record) -> list[object]:
        """Forward one record along every route it feeds; returns the produce futures."""
        routes = self.by_topic.get(msg.topic() or "")
        if not routes:
            return []
        headers: Headers = headers_of(msg)
        value = msg.value() or b""
        key = msg.key() or b""
        partition = t.partition_of(key, self.partitions)
        futures: list[object] = []
        for route in routes:
            if not t.pipeline_matches(headers, route.pipeline):  # type: ignore[arg-type]
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
            if route.join is not None:
                futures.append(self.joiner.offer(route.join, route.join_index, key, out_headers, out))
            else:
                futures.append(self.producer.produce(route.sink_topic, partition, key, out, out_headers))
        return futures

    def close(self) -> None:
        """Drop open joins (their source records stay uncommitted: a successor rebuilds them)."""
        self.joiner.close()

    def _emit_join(self, spec: JoinSpec, key: bytes, headers: Headers, value: bytes) -> asyncio.Future[None]:
        if spec.then is not None:  # e.g. a step's joined triggers go on to meet its inputs
            return self.joiner.offer(spec.then, spec.then_index, key, headers, value)
        return self.producer.produce(spec.sink, t.partition_of(key, self.partitions), key, value, headers)

    def _fail_join(self, spec: JoinSpec, key: bytes, headers: Headers, message: str) -> asyncio.Future[None]:
        """An incomplete inner join: an error record, which the error route takes to the caller."""
        log.info("%s (key %s)", message, key.decode("utf-8", "replace"))
        node = spec.node if spec.node != "output" else spec.pipeline
        return self.producer.produce(
            self.errors_topic,
            t.partition_of(key, self.partitions),
            key,
            message.encode(),
            [*headers, (t.ERROR_HEADER, node.encode())],
        )
