"""A Pipeline compiled to routes: per source topic, where each record goes and how it is transformed."""

from __future__ import annotations

from typing import Literal

import msgspec

from headrace.config.pipelines import PipelineManifest, group_sources, validate_for_chains
from headrace.engine.dataflow.refs import qualify_tensor_map, ref_topic
from headrace.engine.dataflow.transforms import ChainKind, chain_kind
from headrace.engine.topics import Topics

RouteRole = Literal["step", "output", "error"]


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


class PipelineGraph(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the dataflow needs to run one pipeline without joins."""

    pipeline: str
    inputs_topic: str
    outputs_topic: str
    routes: dict[str, tuple[StepRoute, ...]]  # by source topic: steps, then output, then error
    output: StepRoute | None  # None: no spec.output, results only on the models' topics
    error: StepRoute
    reads: frozenset[str]  # every source topic
    writes: frozenset[str]  # every sink topic
    models: tuple[str, ...]  # the step names, in manifest order


def _route(
    manifest: PipelineManifest,
    topics: Topics,
    refs: list[str],
    sink: str,
    tensor_map: dict[str, str],
    step: str,
    role: RouteRole,
) -> StepRoute:
    sources = group_sources(refs, manifest.name)
    if len(sources) != 1:
        raise ValueError(f"Pipeline {manifest.name}: a route needs exactly one source, got {len(sources)}")
    [(source_ref, tensors)] = sources.items()
    source = ref_topic(source_ref, topics)
    qualified = qualify_tensor_map(tensor_map, manifest.name, topics)
    prefix = f"{source}."
    return StepRoute(
        step=step,
        source_topic=source,
        sink_topic=sink,
        chain_kind=chain_kind(source, sink),
        pipeline=manifest.name,
        tensors=tensors,
        tensor_map={k: v for k, v in qualified.items() if k.startswith(prefix)},
        role=role,
    )


def compile_pipeline(manifest: PipelineManifest, topics: Topics) -> PipelineGraph:
    """The routes of a pipeline this release can run (validate_for_chains raises ConfigError otherwise).

    A step with no inputs reads the pipeline's inputs topic; each step writes its model's inputs topic;
    the output step writes the pipeline's outputs topic; the hidden error route passes the namespace's
    errors topic through to the pipeline's outputs topic.
    """
    validate_for_chains(manifest)
    name = manifest.name
    inputs_topic, outputs_topic = topics.pipeline_inputs(name), topics.pipeline_outputs(name)
    routes = [
        _route(
            manifest,
            topics,
            step.inputs or [name],
            topics.model_inputs(step.name),
            step.tensor_map,
            step.name,
            "step",
        )
        for step in manifest.steps
    ]
    output = None
    if manifest.output is not None:  # as Seldon: an output with no steps echoes the pipeline's inputs
        out = manifest.output
        output = _route(manifest, topics, out.steps or [name], outputs_topic, out.tensor_map, "", "output")
        routes.append(output)
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
