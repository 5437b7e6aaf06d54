"""References resolved to topics, chain kinds, and Pipelines compiled to routes."""

from __future__ import annotations

import pytest

from headrace.config.errors import ConfigError
from headrace.config.pipelines import PipelineManifest, Ref, parse_pipelines
from headrace.engine.dataflow.graph import DEFAULT_JOIN_WINDOW_MS, PipelineGraph, StepRoute, compile_pipeline
from headrace.engine.dataflow.refs import qualify_tensor_map, resolve
from headrace.engine.dataflow.transforms import ChainKind, chain_kind
from headrace.engine.topics import Topics

HEAD = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\n"
TOPICS = Topics()
M = "seldon.default.model."
P = "seldon.default.pipeline."
ERRORS = "seldon.default.errors.errors"


def pipeline(spec: str, name: str = "p") -> PipelineManifest:
    [m] = parse_pipelines(f"{HEAD}metadata:\n  name: {name}\nspec:\n{spec}")
    return m


def compiled(spec: str, name: str = "p", topics: Topics = TOPICS) -> PipelineGraph:
    return compile_pipeline(pipeline(spec, name), topics)


# ---------------------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("ref", "topic", "tensor"),
    [
        ("m1", f"{M}m1.outputs", None),
        ("m1.outputs", f"{M}m1.outputs", None),
        ("m1.inputs", f"{M}m1.inputs", None),
        ("m1.outputs.t1", f"{M}m1.outputs", "t1"),
        ("m1.inputs.t1", f"{M}m1.inputs", "t1"),
        ("p", f"{P}p.inputs", None),
        ("p.inputs", f"{P}p.inputs", None),
        ("p.inputs.x", f"{P}p.inputs", "x"),
        ("p.outputs", f"{P}p.outputs", None),
        ("p.outputs.y", f"{P}p.outputs", "y"),
    ],
)
def test_resolve(ref: str, topic: str, tensor: str | None) -> None:
    assert resolve(ref, "p", TOPICS) == (topic, tensor)


def test_resolve_with_prefix_namespace_and_parsed_refs() -> None:
    topics = Topics("acme", "ns")
    assert resolve("m1.outputs.t", "p", topics) == ("acme.ns.model.m1.outputs", "t")
    assert resolve("p", "p", topics) == ("acme.ns.pipeline.p.inputs", None)
    assert resolve(Ref("m1", "inputs", "x"), "p", topics) == ("acme.ns.model.m1.inputs", "x")
    with pytest.raises(ValueError):
        resolve("m1.sideways", "p", topics)


def test_qualify_tensor_map() -> None:
    assert qualify_tensor_map(
        {"tfsimple1.outputs.OUTPUT0": "INPUT0", "p.inputs.x": "X", "m.inputs.a.b": "AB"}, "p", TOPICS
    ) == {
        f"{M}tfsimple1.outputs.OUTPUT0": "INPUT0",
        f"{P}p.inputs.x": "X",
        f"{M}m.inputs.a.b": "AB",
    }
    assert qualify_tensor_map({}, "p", TOPICS) == {}


@pytest.mark.parametrize(
    ("source", "sink", "kind"),
    [
        (f"{M}a.outputs", f"{M}b.inputs", ChainKind.RESPONSE_TO_REQUEST),
        (f"{P}p.inputs", f"{M}b.inputs", ChainKind.REQUEST_FILTER),
        (f"{M}a.inputs", f"{M}b.inputs", ChainKind.REQUEST_FILTER),
        (f"{M}a.outputs", f"{P}p.outputs", ChainKind.RESPONSE_FILTER),
        (f"{M}a.inputs", f"{P}p.outputs", ChainKind.REQUEST_TO_RESPONSE),
        (f"{P}p.inputs", f"{P}p.outputs", ChainKind.REQUEST_TO_RESPONSE),
        (ERRORS, f"{P}p.outputs", ChainKind.PASS_THROUGH),
        (f"{M}a.outputs", ERRORS, ChainKind.PASS_THROUGH),
        ("x", "y", ChainKind.PASS_THROUGH),
    ],
)
def test_chain_kind(source: str, sink: str, kind: ChainKind) -> None:
    assert chain_kind(source, sink) is kind


# ------------------------------------------------------------------------------------------- compile


def error_route(name: str = "p") -> StepRoute:
    return StepRoute(
        step="",
        source_topic=ERRORS,
        sink_topic=f"{P}{name}.outputs",
        chain_kind=ChainKind.PASS_THROUGH,
        pipeline=name,
        role="error",
    )


def test_one_step() -> None:
    g = compiled("  steps:\n  - name: tfsimple1\n  output:\n    steps: [tfsimple1]\n", name="tfsimple")
    step = StepRoute(
        step="tfsimple1",
        source_topic=f"{P}tfsimple.inputs",
        sink_topic=f"{M}tfsimple1.inputs",
        chain_kind=ChainKind.REQUEST_FILTER,
        pipeline="tfsimple",
    )
    output = StepRoute(
        step="",
        source_topic=f"{M}tfsimple1.outputs",
        sink_topic=f"{P}tfsimple.outputs",
        chain_kind=ChainKind.RESPONSE_FILTER,
        pipeline="tfsimple",
        role="output",
    )
    assert g.pipeline == "tfsimple"
    assert g.inputs_topic == f"{P}tfsimple.inputs" and g.outputs_topic == f"{P}tfsimple.outputs"
    assert g.routes == {
        f"{P}tfsimple.inputs": (step,),
        f"{M}tfsimple1.outputs": (output,),
        ERRORS: (error_route("tfsimple"),),
    }
    assert g.output == (output,) and g.error == error_route("tfsimple")
    assert g.reads == {f"{P}tfsimple.inputs", f"{M}tfsimple1.outputs", ERRORS}
    assert g.writes == {f"{M}tfsimple1.inputs", f"{P}tfsimple.outputs"}
    assert g.models == ("tfsimple1",)


def test_two_steps_tfsimples() -> None:
    g = compiled(
        "  steps:\n"
        "    - name: tfsimple1\n"
        "    - name: tfsimple2\n"
        "      inputs:\n"
        "      - tfsimple1\n"
        "      tensorMap:\n"
        "        tfsimple1.outputs.OUTPUT0: INPUT0\n"
        "        tfsimple1.outputs.OUTPUT1: INPUT1\n"
        "  output:\n"
        "    steps:\n"
        "    - tfsimple2\n",
        name="tfsimples",
    )
    [second] = g.routes[f"{M}tfsimple1.outputs"]
    assert second == StepRoute(
        step="tfsimple2",
        source_topic=f"{M}tfsimple1.outputs",
        sink_topic=f"{M}tfsimple2.inputs",
        chain_kind=ChainKind.RESPONSE_TO_REQUEST,
        pipeline="tfsimples",
        tensors=None,
        tensor_map={f"{M}tfsimple1.outputs.OUTPUT0": "INPUT0", f"{M}tfsimple1.outputs.OUTPUT1": "INPUT1"},
    )
    [first] = g.routes[f"{P}tfsimples.inputs"]
    assert (first.step, first.sink_topic, first.chain_kind) == (
        "tfsimple1",
        f"{M}tfsimple1.inputs",
        ChainKind.REQUEST_FILTER,
    )
    [out] = g.output
    assert out.source_topic == f"{M}tfsimple2.outputs"
    assert out.chain_kind is ChainKind.RESPONSE_FILTER
    assert g.models == ("tfsimple1", "tfsimple2")
    assert g.reads == {f"{P}tfsimples.inputs", f"{M}tfsimple1.outputs", f"{M}tfsimple2.outputs", ERRORS}
    assert g.writes == {f"{M}tfsimple1.inputs", f"{M}tfsimple2.inputs", f"{P}tfsimples.outputs"}


def test_three_steps_every_chain_kind() -> None:
    g = compiled(
        "  steps:\n"
        "  - name: a\n"
        "    inputs: [p.inputs.x]\n"
        "    tensorMap: {p.inputs.x: X}\n"
        "  - name: b\n"
        "    inputs: [a]\n"
        "  - name: c\n"
        "    inputs: [b.inputs]\n"
        "  output:\n"
        "    steps: [c.inputs.X]\n"
        "    tensorMap: {c.inputs.X: result}\n"
    )
    a, b, c, out = (
        g.routes[src][0] for src in (f"{P}p.inputs", f"{M}a.outputs", f"{M}b.inputs", f"{M}c.inputs")
    )
    assert (a.step, a.chain_kind, a.tensors, a.tensor_map) == (
        "a",
        ChainKind.REQUEST_FILTER,
        frozenset({"x"}),
        {f"{P}p.inputs.x": "X"},
    )
    assert (b.step, b.chain_kind, b.tensors, b.sink_topic) == (
        "b",
        ChainKind.RESPONSE_TO_REQUEST,
        None,
        f"{M}b.inputs",
    )
    assert (c.step, c.chain_kind, c.sink_topic) == ("c", ChainKind.REQUEST_FILTER, f"{M}c.inputs")
    assert (out,) == g.output
    assert (out.role, out.chain_kind, out.tensors, out.tensor_map, out.sink_topic) == (
        "output",
        ChainKind.REQUEST_TO_RESPONSE,
        frozenset({"X"}),
        {f"{M}c.inputs.X": "result"},
        f"{P}p.outputs",
    )
    assert g.models == ("a", "b", "c")
    assert len(g.reads) == 5 and sum(len(rs) for rs in g.routes.values()) == 5


def test_conditional_route() -> None:
    """Each branch reads one tensor of the same topic: a record without it is dropped (§1.3)."""
    g = compiled(
        "  steps:\n"
        "  - name: conditional\n"
        "  - name: mul10\n"
        "    inputs: [conditional.outputs.OUTPUT0]\n"
        "    tensorMap: {conditional.outputs.OUTPUT0: INPUT}\n"
        "  - name: add10\n"
        "    inputs: [conditional.outputs.OUTPUT1]\n"
        "    tensorMap: {conditional.outputs.OUTPUT1: INPUT}\n"
        "  output:\n"
        "    steps: [mul10]\n",
        name="tfsimple-conditional",
    )
    mul10, add10 = g.routes[f"{M}conditional.outputs"]  # one source, two routes, manifest order
    assert (mul10.step, mul10.tensors, mul10.tensor_map) == (
        "mul10",
        frozenset({"OUTPUT0"}),
        {f"{M}conditional.outputs.OUTPUT0": "INPUT"},
    )
    assert (add10.step, add10.tensors, add10.tensor_map) == (
        "add10",
        frozenset({"OUTPUT1"}),
        {f"{M}conditional.outputs.OUTPUT1": "INPUT"},
    )
    assert mul10.chain_kind is add10.chain_kind is ChainKind.RESPONSE_TO_REQUEST
    assert g.routes[f"{M}mul10.outputs"] == g.output
    assert f"{M}add10.outputs" not in g.reads  # add10's results are not a pipeline output


def test_tensor_map_only_for_the_route_source() -> None:
    g = compiled(
        "  steps:\n  - name: a\n  - name: b\n    inputs: [a]\n"
        "    tensorMap: {a.inputs.x: X, a.outputs.y: Y}\n"
    )
    [b] = g.routes[f"{M}a.outputs"]
    assert b.tensor_map == {f"{M}a.outputs.y": "Y"}


def test_whole_and_subset_of_one_topic_read_the_subset() -> None:
    g = compiled("  steps:\n  - name: a\n  - name: b\n    inputs: [a, a.outputs.t]\n")
    assert g.routes[f"{M}a.outputs"][0].tensors == frozenset({"t"})


def test_step_reading_the_pipeline_explicitly() -> None:
    explicit = compiled("  steps:\n  - name: a\n    inputs: [p]\n")
    implicit = compiled("  steps:\n  - name: a\n")
    assert explicit.routes == implicit.routes


def test_no_output() -> None:
    g = compiled("  steps:\n  - name: a\n")
    assert g.output == ()
    assert g.routes == {
        f"{P}p.inputs": (
            StepRoute(
                step="a",
                source_topic=f"{P}p.inputs",
                sink_topic=f"{M}a.inputs",
                chain_kind=ChainKind.REQUEST_FILTER,
                pipeline="p",
            ),
        ),
        ERRORS: (error_route(),),
    }
    assert g.writes == {f"{M}a.inputs", f"{P}p.outputs"}  # the error route still answers callers


def test_output_without_steps_echoes_the_inputs() -> None:
    g = compiled("  steps:\n  - name: a\n  output: {tensorMap: {p.inputs.x: y}}\n")
    [out] = g.output
    assert (out.source_topic, out.chain_kind, out.tensor_map) == (
        f"{P}p.inputs",
        ChainKind.REQUEST_TO_RESPONSE,
        {f"{P}p.inputs.x": "y"},
    )
    assert [r.role for r in g.routes[f"{P}p.inputs"]] == ["step", "output"]


def test_fan_out_from_the_pipeline_inputs() -> None:
    g = compiled("  steps:\n  - name: a\n  - name: b\n    inputs: [p.inputs.x]\n  output: {steps: [b]}\n")
    assert [(r.step, r.tensors) for r in g.routes[f"{P}p.inputs"]] == [("a", None), ("b", frozenset({"x"}))]


def test_prefix_and_namespace() -> None:
    topics = Topics("acme", "ns")
    g = compiled("  steps:\n  - name: a\n  output: {steps: [a]}\n", topics=topics)
    assert g.inputs_topic == "acme.ns.pipeline.p.inputs"
    assert g.error.source_topic == "acme.ns.errors.errors"
    assert g.reads == {"acme.ns.pipeline.p.inputs", "acme.ns.model.a.outputs", "acme.ns.errors.errors"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("  steps:\n  - name: a\n    batch: {size: 2, rolling: true}\n", r"spec\.steps\[0\]\.batch\.rolling"),
    ],
)
def test_compile_refuses_what_chains_cannot_run(spec: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"Pipeline p: {field}.*not supported yet"):
        compiled(spec)


def test_a_step_reading_several_sources_is_a_join_in_declared_order() -> None:
    g = compiled(
        "  steps:\n  - name: a\n  - name: b\n  - name: c\n    inputs: [b, a.outputs.x]\n"
        "    inputsJoinType: outer\n    joinWindowMs: 250\n  output: {steps: [c]}\n"
    )
    [from_b] = [r for r in g.routes[f"{M}b.outputs"] if r.step == "c"]
    [from_a] = [r for r in g.routes[f"{M}a.outputs"] if r.step == "c"]
    assert from_a.join is from_b.join is not None
    join = from_b.join
    assert (join.node, join.sources, join.kind, join.window_s, join.request, join.sink) == (
        "c",
        ("b.outputs", "a.outputs"),
        "outer",
        0.25,
        True,
        f"{M}c.inputs",
    )
    assert (from_b.join_index, from_a.join_index) == (0, 1)
    assert from_a.tensors == frozenset({"x"})
    [out] = g.output
    assert out.join is None


def test_an_output_of_several_steps_is_a_join_with_the_default_window() -> None:
    g = compiled("  steps:\n  - name: a\n  - name: b\n  output: {steps: [a, b], stepsJoin: any}\n")
    assert [r.join_index for r in g.output] == [0, 1]
    join = g.output[0].join
    assert join is not None and join is g.output[1].join
    assert (join.node, join.kind, join.window_s, join.request, join.sink) == (
        "output",
        "any",
        DEFAULT_JOIN_WINDOW_MS / 1000,
        False,
        f"{P}p.outputs",
    )


def test_triggers_are_joined_then_gate_the_inputs() -> None:
    g = compiled(
        "  steps:\n  - name: a\n  - name: t1\n  - name: t2\n  - name: c\n    inputs: [a]\n"
        "    triggers: [t1.outputs.ok, t2]\n    triggersJoinType: any\n    joinWindowMs: 300\n"
    )
    [data] = [r for r in g.routes[f"{M}a.outputs"] if r.step == "c"]
    [t1] = [r for r in g.routes[f"{M}t1.outputs"] if r.step == "c"]
    [t2] = [r for r in g.routes[f"{M}t2.outputs"] if r.step == "c"]
    gate = data.join
    assert gate is not None and data.join_index == 0
    assert (gate.part, gate.kind, gate.keep_first, gate.window_s, gate.sink) == (
        "gate",
        "inner",
        True,
        0.3,
        f"{M}c.inputs",
    )
    triggers = t1.join
    assert triggers is not None and triggers is t2.join and (t1.join_index, t2.join_index) == (0, 1)
    assert (triggers.part, triggers.kind, triggers.then, triggers.then_index) == ("triggers", "any", gate, 1)
    assert t1.tensors == frozenset({"ok"})  # a trigger fires only if its tensor is there


def test_a_batched_step_carries_its_batch_on_its_route() -> None:
    g = compiled("  steps:\n  - name: a\n    batch: {size: 3, windowMs: 40}\n  - name: b\n    inputs: [a]\n")
    [to_a] = g.routes[f"{P}p.inputs"]
    assert to_a.batch is not None
    assert (to_a.batch.node, to_a.batch.size, to_a.batch.window_s, to_a.batch.sink) == (
        "a",
        3,
        0.04,
        f"{M}a.inputs",
    )
    [to_b] = g.routes[f"{M}a.outputs"]
    assert to_b.batch is None


def test_external_inputs_route_other_pipelines_records_to_this_ones_inputs_gated_on_their_header() -> None:
    g = compiled(
        "  input:\n    externalInputs: [up.outputs.y, up.step.s.outputs]\n    joinType: any\n"
        "    tensorMap: {up.outputs.y: x}\n  steps:\n  - name: a\n"
    )
    [from_up] = g.routes[f"{P}up.outputs"]
    [from_s] = g.routes[f"{M}s.outputs"]
    for route in (from_up, from_s):
        assert (route.role, route.gate, route.pipeline, route.sink_topic) == (
            "input",
            "up",
            "p",
            f"{P}p.inputs",
        )
    assert from_up.tensors == frozenset({"y"}) and from_up.tensor_map == {f"{P}up.outputs.y": "x"}
    assert from_up.chain_kind is ChainKind.RESPONSE_TO_REQUEST
    join = from_up.join
    assert join is not None and join is from_s.join and join.kind == "any"
    assert join.sources == ("up.outputs", "up.step.s.outputs")


def test_external_triggers_gate_the_external_inputs() -> None:
    g = compiled(
        "  input:\n    externalInputs: [up]\n    externalTriggers: [up.step.flag.outputs.go]\n"
        "  steps:\n  - name: a\n"
    )
    [data] = g.routes[f"{P}up.outputs"]
    [trigger] = g.routes[f"{M}flag.outputs"]
    gate = data.join
    assert gate is not None and gate is trigger.join
    assert (data.join_index, trigger.join_index) == (0, 1)
    assert (gate.part, gate.kind, gate.keep_first, gate.sink) == ("gate", "inner", True, f"{P}p.inputs")
    assert trigger.gate == "up" and trigger.tensors == frozenset({"go"})


COUNTER = """  allowCycles: true
  steps:
  - name: counter
    inputsJoinType: any
    inputs: [p.inputs, loop.outputs]
  - name: done
    joinWindowMs: 1
    inputs: [counter.outputs]
    triggers: [counter.outputs.stop]
  - name: loop
    joinWindowMs: 1
    inputs: [counter.outputs.output]
    triggers: [counter.outputs.continue]
  output:
    steps: [done.outputs]
"""


def test_a_cyclic_pipeline_counts_visits_on_its_steps_with_the_default_cap() -> None:
    g = compiled(COUNTER)
    counter = [r for r in g.routes["seldon.default.model.loop.outputs"] if r.step == "counter"]
    assert counter[0].max_visits == 10 and counter[0].join is not None and counter[0].join.max_visits == 10
    loop = [r for r in g.routes["seldon.default.model.counter.outputs"] if r.step == "loop"]
    assert {r.join.part for r in loop if r.join} == {"gate"} and all(r.max_visits == 10 for r in loop)
    (out,) = g.output
    assert out.max_visits == 0  # the output is not a step: not counted
    capped = compiled(COUNTER.replace("allowCycles: true", "allowCycles: true\n  maxStepRevisits: 3"))
    assert {r.max_visits for rs in capped.routes.values() for r in rs if r.role == "step"} == {3}
    acyclic = compiled("  steps:\n  - name: a\n  - name: b\n    inputs: [a]\n")
    assert {r.max_visits for rs in acyclic.routes.values() for r in rs} == {0}


def test_what_feeds_a_step_is_every_topic_upstream_through_routes_and_models() -> None:
    """Backpressure on a backed-up step holds everything that leads to it: its upstream steps' topics
    and the pipeline's inputs, not the steps after it nor other pipelines."""
    import asyncio

    from headrace.engine.dataflow.runner import DataflowRunner

    loop = asyncio.new_event_loop()
    try:
        runner = DataflowRunner(None, 8, lambda m, e: None, loop, ERRORS)  # type: ignore[arg-type]
        chain = "  steps:\n  - name: a\n  - name: b\n    inputs: [a]\n  - name: c\n    inputs: [b]\n"
        other = "  steps:\n  - name: z\n"
        runner.set_pipelines(
            {
                "p": (compiled(chain + "  output:\n    steps: [c]\n", "p"), "1"),
                "q": (compiled(other + "  output:\n    steps: [z]\n", "q"), "1"),
            }
        )
        held = runner.feeding({f"{M}b.inputs"}, TOPICS)
    finally:
        loop.close()
    assert held == {f"{M}b.inputs", f"{M}a.outputs", f"{M}a.inputs", f"{P}p.inputs"}
