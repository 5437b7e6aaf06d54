"""A Pipeline compiled to routes: per source topic, where each record goes and how it is transformed."""

from __future__ import annotations

from typing import Literal

import msgspec

from headrace.config.pipelines import (
    JoinType,
    PipelineManifest,
    StepSpec,
    group_sources,
    parse_external_ref,
    validate_for_chains,
)
from headrace.engine.dataflow.batches import DEFAULT_WINDOW_MS, BatchSpec
from headrace.engine.dataflow.joins import JoinSpec
from headrace.engine.dataflow.refs import qualify_tensor_map, ref_topic
from headrace.engine.dataflow.transforms import ChainKind, chain_kind
from headrace.engine.dataflow.visits import DEFAULT_MAX_VISITS
from headrace.engine.topics import Topics

RouteRole = Literal["input", "step", "output", "error"]

#: A join window of 0 or unset means this (Seldon's kafka.join.window.millis default).
DEFAULT_JOIN_WINDOW_MS = 60_000


class StepRoute(msgspec.Struct, frozen=True, kw_only=True):
    """One hop: records on source_topic whose ``pipeline`` header is ``pipeline`` go to sink_topic.

    ``tensors`` keeps a subset (None: all); ``tensor_map`` renames, keyed ``"<source_topic>.<tensor>"``.
    """

    step: str  # the step's model; "" for the output and error routes
    source_topic: str
    sink_topic: str
    chain_kind: ChainKind
    pipeline: str
    tensors: frozenset[str] | None = None
    tensor_map: dict[str, str] = {}
    role: RouteRole = "step"
    join: JoinSpec | None = None  # set when the step (or output) reads several sources
    join_index: int = 0  # this source's place in the join's declared order
    batch: BatchSpec | None = None  # set when the step batches its requests
    gate: str = ""  # the pipeline header a record must carry, when not ``pipeline`` (external inputs)
    max_visits: int = 0  # allowCycles: the step's cap on a request's entries (0: no cycles, not counted)


class PipelineGraph(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the dataflow needs to run one pipeline: its routes, by source topic."""

    pipeline: str
    inputs_topic: str
    outputs_topic: str
    routes: dict[str, tuple[StepRoute, ...]]  # by source topic: steps, then output, then error
    output: tuple[StepRoute, ...]  # empty: no spec.output, results only on the models' topics
    error: StepRoute
    reads: frozenset[str]  # every source topic
    writes: frozenset[str]  # every sink topic
    models: tuple[str, ...]  # the step names, in manifest order


def _routes(
    manifest: PipelineManifest,
    topics: Topics,
    refs: list[str],
    sink: str,
    tensor_map: dict[str, str],
    step: str,
    role: RouteRole,
    join_kind: JoinType,
    window_ms: int | None,
    *,
    part: str = "",
    then: JoinSpec | None = None,
    then_index: int = 0,
    max_visits: int = 0,
) -> list[StepRoute]:
    """One route per source topic; several sources make a join, keyed by the record key. With
    ``then``, what they make (one source's record, or their join) goes on to that join. In a cyclic
    pipeline (``max_visits``) a step's routes count the request's entries into the step."""
    sources = group_sources(refs, manifest.name)
    qualified = qualify_tensor_map(tensor_map, manifest.name, topics)
    join, first_index = then, then_index
    if len(sources) > 1:
        join = JoinSpec(
            pipeline=manifest.name,
            node=step or "output",
            sources=tuple(str(ref) for ref in sources),
            kind=join_kind,
            window_s=(window_ms or DEFAULT_JOIN_WINDOW_MS) / 1000,
            request=role == "step",
            sink=sink,
            part=part,
            then=then,
            then_index=then_index,
            max_visits=max_visits,
        )
        first_index = 0
    out = []
    for index, (source_ref, tensors) in enumerate(sources.items()):
        source = ref_topic(source_ref, topics)
        prefix = f"{source}."
        out.append(
            StepRoute(
                step=step,
                source_topic=source,
                sink_topic=sink,
                chain_kind=chain_kind(source, sink),
                pipeline=manifest.name,
                tensors=tensors,
                tensor_map={k: v for k, v in qualified.items() if k.startswith(prefix)},
                role=role,
                join=join,
                join_index=index if len(sources) > 1 else first_index,
                max_visits=max_visits if role == "step" else 0,
            )
        )
    return out


def visit_cap(manifest: PipelineManifest) -> int:
    """The cap on a request's entries into each step: 0 (not counted) unless the pipeline allows cycles."""
    if not manifest.allow_cycles:
        return 0
    return manifest.max_step_revisits or DEFAULT_MAX_VISITS


def _step_routes(manifest: PipelineManifest, topics: Topics, step: StepSpec) -> list[StepRoute]:
    """A step's routes. With triggers, as Seldon: the triggers (each only if its tensor is there) are
    joined with ``triggersJoinType``, then inner-joined with the step's inputs; only the inputs go on."""
    sink = topics.model_inputs(step.name)
    inputs = step.inputs or [manifest.name]
    cap = visit_cap(manifest)
    if not step.triggers:
        routes = _routes(
            manifest, topics, inputs, sink, step.tensor_map, step.name, "step",
            step.inputs_join_type, step.join_window_ms, max_visits=cap,
        )  # fmt: skip
        if step.batch is not None and step.batch.size:
            batch = BatchSpec(
                pipeline=manifest.name,
                node=step.name,
                size=step.batch.size,
                window_s=(step.batch.window_ms or DEFAULT_WINDOW_MS) / 1000,
                sink=sink,
            )
            routes = [msgspec.structs.replace(route, batch=batch) for route in routes]
        return routes
    gate = JoinSpec(
        pipeline=manifest.name,
        node=step.name,
        sources=("inputs", f"triggers ({', '.join(step.triggers)})"),
        kind="inner",
        window_s=(step.join_window_ms or DEFAULT_JOIN_WINDOW_MS) / 1000,
        request=True,
        sink=sink,
        part="gate",
        keep_first=True,
        max_visits=cap,
    )
    return [
        *_routes(
            manifest, topics, inputs, sink, step.tensor_map, step.name, "step",
            step.inputs_join_type, step.join_window_ms, then=gate, then_index=0, max_visits=cap,
        ),
        *_routes(
            manifest, topics, step.triggers, sink, {}, step.name, "step",
            step.triggers_join_type, step.join_window_ms, part="triggers", then=gate, then_index=1,
            max_visits=cap,
        ),
    ]  # fmt: skip


def _input_routes(manifest: PipelineManifest, topics: Topics) -> list[StepRoute]:
    """``input.externalInputs``: records of other pipelines (their inputs or outputs, or one of their
    steps'), gated on those pipelines' header, go to this pipeline's inputs topic under the same key —
    so the partition, and the worker, carry over. Several sources are joined with ``input.joinType``;
    ``input.externalTriggers`` gate them as a step's triggers gate its inputs."""
    spec = manifest.input
    if spec is None:
        return []
    sink = topics.pipeline_inputs(manifest.name)
    window_s = (spec.join_window_ms or DEFAULT_JOIN_WINDOW_MS) / 1000
    tensor_map: dict[str, str] = {}
    for key, new_name in spec.tensor_map.items():
        _, ref = parse_external_ref(key)
        tensor_map[f"{ref_topic(ref, topics)}.{ref.tensor}"] = new_name
    gate = None
    if spec.external_triggers:
        gate = JoinSpec(
            pipeline=manifest.name,
            node="input",
            sources=("inputs", f"triggers ({', '.join(spec.external_triggers)})"),
            kind="inner",
            window_s=window_s,
            request=True,
            sink=sink,
            part="gate",
            keep_first=True,
        )
    routes = _external_routes(
        manifest, topics, spec.external_inputs, sink, tensor_map, spec.join_type, window_s, "", gate, 0
    )
    if spec.external_triggers:
        routes += _external_routes(
            manifest, topics, spec.external_triggers, sink, {}, spec.triggers_join_type, window_s,
            "triggers", gate, 1,
        )  # fmt: skip
    return routes


def _external_routes(
    manifest: PipelineManifest,
    topics: Topics,
    refs: list[str],
    sink: str,
    tensor_map: dict[str, str],
    kind: JoinType,
    window_s: float,
    part: str,
    then: JoinSpec | None,
    then_index: int,
) -> list[StepRoute]:
    # as group_sources: a topic named with tensors reads only those, else every tensor
    groups: dict[tuple[str, str], set[str]] = {}
    labels: dict[tuple[str, str], str] = {}
    for text in refs:
        source, ref = parse_external_ref(text)
        slot = (source, ref_topic(ref, topics))
        tensors = groups.setdefault(slot, set())
        labels.setdefault(slot, text if ref.tensor is None else text.rpartition(".")[0])
        if ref.tensor is not None:
            tensors.add(ref.tensor)
    join, first_index = then, then_index
    if len(groups) > 1:
        join = JoinSpec(
            pipeline=manifest.name,
            node="input",
            sources=tuple(labels[slot] for slot in groups),
            kind=kind,
            window_s=window_s,
            request=True,
            sink=sink,
            part=part,
            then=then,
            then_index=then_index,
        )
    return [
        StepRoute(
            step="",
            source_topic=topic,
            sink_topic=sink,
            chain_kind=chain_kind(topic, sink),
            pipeline=manifest.name,
            tensors=frozenset(tensors) if tensors else None,
            tensor_map={k: v for k, v in tensor_map.items() if k.startswith(f"{topic}.")},
            role="input",
            join=join,
            join_index=index if len(groups) > 1 else first_index,
            gate=source,
        )
        for index, ((source, topic), tensors) in enumerate(groups.items())
    ]


def compile_pipeline(manifest: PipelineManifest, topics: Topics) -> PipelineGraph:
    """The routes of a pipeline this release can run (validate_for_chains raises ConfigError otherwise).

    A step with no inputs reads the pipeline's inputs topic; each step writes its model's inputs topic;
    the output step writes the pipeline's outputs topic; the hidden error route passes the namespace's
    errors topic through to the pipeline's outputs topic.
    """
    validate_for_chains(manifest)
    name = manifest.name
    inputs_topic, outputs_topic = topics.pipeline_inputs(name), topics.pipeline_outputs(name)
    routes = _input_routes(manifest, topics)
    routes += [route for step in manifest.steps for route in _step_routes(manifest, topics, step)]
    output: tuple[StepRoute, ...] = ()
    if manifest.output is not None:  # as Seldon: an output with no steps echoes the pipeline's inputs
        out = manifest.output
        output = tuple(
            _routes(
                manifest,
                topics,
                out.steps or [name],
                outputs_topic,
                out.tensor_map,
                "",
                "output",
                out.steps_join,
                out.join_window_ms,
                max_visits=visit_cap(manifest),
            )
        )
        routes.extend(output)
    error = StepRoute(
        step="",
        source_topic=topics.errors,
        sink_topic=outputs_topic,
        chain_kind=ChainKind.PASS_THROUGH,
        pipeline=name,
        role="error",
    )
    routes.append(error)
    by_source: dict[str, list[StepRoute]] = {}
    for route in routes:
        by_source.setdefault(route.source_topic, []).append(route)
    return PipelineGraph(
        pipeline=name,
        inputs_topic=inputs_topic,
        outputs_topic=outputs_topic,
        routes={topic: tuple(rs) for topic, rs in by_source.items()},
        output=output,
        error=error,
        reads=frozenset(by_source),
        writes=frozenset(r.sink_topic for r in routes),
        models=tuple(step.name for step in manifest.steps),
    )
