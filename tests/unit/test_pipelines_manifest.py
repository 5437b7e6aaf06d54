"""Seldon Pipeline manifests: every field, Seldon's own checks, what chains-only support rejects."""

from __future__ import annotations

import pytest

from headrace.config.errors import ConfigError
from headrace.config.pipelines import (
    TIMEOUT_ANNOTATION,
    BatchSpec,
    InputSpec,
    OutputSpec,
    PipelineManifest,
    Ref,
    StepSpec,
    find_pipeline_cycle,
    group_sources,
    parse_external_ref,
    parse_pipelines,
    parse_ref,
    parse_tensor_key,
    validate_for_chains,
)

HEAD = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\n"

# Seldon's samples/pipelines, as published.
TFSIMPLES = f"""{HEAD}metadata:
  name: tfsimples
spec:
  steps:
    - name: tfsimple1
    - name: tfsimple2
      inputs:
      - tfsimple1
      tensorMap:
        tfsimple1.outputs.OUTPUT0: INPUT0
        tfsimple1.outputs.OUTPUT1: INPUT1
  output:
    steps:
    - tfsimple2
"""
TFSIMPLES_JOIN = f"""{HEAD}metadata:
  name: join
spec:
  steps:
    - name: tfsimple1
    - name: tfsimple2
    - name: tfsimple3
      inputs:
      - tfsimple1.outputs.OUTPUT0
      - tfsimple2.outputs.OUTPUT1
      tensorMap:
        tfsimple1.outputs.OUTPUT0: INPUT0
        tfsimple2.outputs.OUTPUT1: INPUT1
  output:
    steps:
    - tfsimple3
"""
TFSIMPLES_INPUT = f"""{HEAD}metadata:
  name: tfsimples-input
spec:
  steps:
    - name: tfsimple1
    - name: tfsimple2
      inputs:
      - tfsimple1.inputs.INPUT0
      - tfsimple1.outputs.OUTPUT1
      tensorMap:
        tfsimple1.outputs.OUTPUT1: INPUT1
  output:
    steps:
    - tfsimple2
"""
CONDITIONAL = f"""{HEAD}metadata:
  name: tfsimple-conditional
spec:
  steps:
  - name: conditional
  - name: mul10
    inputs:
    - conditional.outputs.OUTPUT0
    tensorMap:
      conditional.outputs.OUTPUT0: INPUT
  - name: add10
    inputs:
    - conditional.outputs.OUTPUT1
    tensorMap:
      conditional.outputs.OUTPUT1: INPUT
  output:
    steps:
    - mul10
    - add10
    stepsJoin: any
"""
CHOICE = f"""{HEAD}metadata:
  name: choice
spec:
  steps:
  - name: choice-is-one
  - name: mul10
    inputs:
    - choice.inputs.INPUT
    triggers:
    - choice-is-one.outputs.choice
  output:
    steps:
    - mul10
"""
IRIS_BATCH = f"""{HEAD}metadata:
  name: iris-batch
spec:
  steps:
    - name: iris
      batch:
       size: 2
  output:
    steps:
    - iris
"""
TFSIMPLE_EXTENDED = f"""{HEAD}metadata:
  name: tfsimple-extended
spec:
  input:
    externalInputs:
      - tfsimple.outputs
    tensorMap:
      tfsimple.outputs.OUTPUT0: INPUT0
      tfsimple.outputs.OUTPUT1: INPUT1
  steps:
    - name: tfsimple2
  output:
    steps:
    - tfsimple2
"""


def doc(spec: str, name: str = "p", meta: str = "") -> str:
    return f"{HEAD}metadata:\n  name: {name}\n{meta}spec:\n{spec}"


def one(spec: str, **kw: str) -> PipelineManifest:
    [m] = parse_pipelines(doc(spec, **kw))
    return m


def test_tfsimples_sample() -> None:
    [m] = parse_pipelines(TFSIMPLES)
    assert m.name == "tfsimples" and m.namespace == "" and m.kind == "Pipeline"
    assert m.steps == [
        StepSpec(name="tfsimple1"),
        StepSpec(
            name="tfsimple2",
            inputs=["tfsimple1"],
            tensor_map={"tfsimple1.outputs.OUTPUT0": "INPUT0", "tfsimple1.outputs.OUTPUT1": "INPUT1"},
        ),
    ]
    assert m.output == OutputSpec(steps=["tfsimple2"])
    assert m.input is None and m.timeout_s is None
    assert not m.allow_cycles and m.max_step_revisits == 0 and not m.clean_topics_on_delete
    validate_for_chains(m)


def test_every_field() -> None:
    m = one(
        "  input:\n"
        "    externalInputs: [other.outputs, other.step.m.outputs.t]\n"
        "    externalTriggers: [other2.outputs.ok, other3]\n"
        "    joinWindowMs: 500\n"
        "    joinType: outer\n"
        "    triggersJoinType: any\n"
        "    tensorMap: {other.outputs.OUT: IN}\n"
        "  steps:\n"
        "  - name: a\n"
        "  - name: b\n"
        "    inputs: [a.outputs.x, p.inputs.y]\n"
        "    tensorMap: {a.outputs.x: X, p.inputs.y: Y}\n"
        "    triggers: [a.outputs.go, p.inputs.go]\n"
        "    inputsJoinType: any\n"
        "    triggersJoinType: outer\n"
        "    joinWindowMs: 250\n"
        "    batch: {size: 4, windowMs: 10, rolling: true}\n"
        "  output:\n"
        "    steps: [a, b]\n"
        "    stepsJoin: outer\n"
        "    joinWindowMs: 100\n"
        "    tensorMap: {b.outputs.OUT: result}\n"
        "  dataflow:\n"
        "    cleanTopicsOnDelete: true\n"
        "  allowCycles: false\n"
        "  maxStepRevisits: 3\n",
        meta=(
            "  namespace: seldon-mesh\n  labels: {team: a}\n"
            f"  annotations: {{{TIMEOUT_ANNOTATION}: '2.5', note: x}}\n"
        ),
    )
    assert m.namespace == "seldon-mesh" and m.labels == {"team": "a"}
    assert m.annotations == {TIMEOUT_ANNOTATION: "2.5", "note": "x"}
    assert m.timeout_s == 2.5
    assert m.input == InputSpec(
        external_inputs=["other.outputs", "other.step.m.outputs.t"],
        external_triggers=["other2.outputs.ok", "other3"],
        join_window_ms=500,
        join_type="outer",
        triggers_join_type="any",
        tensor_map={"other.outputs.OUT": "IN"},
    )
    assert m.steps[1] == StepSpec(
        name="b",
        inputs=["a.outputs.x", "p.inputs.y"],
        tensor_map={"a.outputs.x": "X", "p.inputs.y": "Y"},
        triggers=["a.outputs.go", "p.inputs.go"],
        inputs_join_type="any",
        triggers_join_type="outer",
        join_window_ms=250,
        batch=BatchSpec(size=4, window_ms=10, rolling=True),
    )
    assert m.output == OutputSpec(
        steps=["a", "b"], steps_join="outer", join_window_ms=100, tensor_map={"b.outputs.OUT": "result"}
    )
    assert m.clean_topics_on_delete and not m.allow_cycles and m.max_step_revisits == 3


def test_defaults() -> None:
    m = one("  steps:\n  - name: a\n")
    assert m.steps == [StepSpec(name="a")]
    step = m.steps[0]
    assert step.inputs_join_type == "inner" and step.triggers_join_type == "inner"
    assert step.join_window_ms is None and step.batch is None
    assert m.output is None and m.input is None
    out = one("  steps:\n  - name: a\n  output: {steps: [a]}\n").output
    assert out == OutputSpec(steps=["a"], steps_join="inner", join_window_ms=0, tensor_map={})


def test_null_blocks_mean_unset() -> None:
    m = one("  steps:\n  - name: a\n    batch:\n  output:\n  input:\n  dataflow:\n  allowCycles:\n")
    assert m.steps[0].batch is None and m.output is None and m.input is None
    assert not m.allow_cycles and not m.clean_topics_on_delete


@pytest.mark.parametrize("value", ["30", "0.25", "1e3"])
def test_timeout_annotation(value: str) -> None:
    m = one("  steps:\n  - name: a\n", meta=f"  annotations:\n    {TIMEOUT_ANNOTATION}: '{value}'\n")
    assert m.timeout_s == float(value)


def test_timeout_annotation_as_a_yaml_number() -> None:
    m = one("  steps:\n  - name: a\n", meta=f"  annotations:\n    {TIMEOUT_ANNOTATION}: 5\n")
    assert m.timeout_s == 5.0


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan", "''"])
def test_bad_timeout_annotation(value: str) -> None:
    text = doc("  steps:\n  - name: a\n", meta=f"  annotations:\n    {TIMEOUT_ANNOTATION}: {value}\n")
    with pytest.raises(ConfigError, match=rf"Pipeline p: metadata\.annotations\[{TIMEOUT_ANNOTATION}\]"):
        parse_pipelines(text)


def test_spec_key_ignores_labels_and_annotations_but_not_the_timeout() -> None:
    a = one("  steps:\n  - name: a\n", meta="  labels: {x: '1'}\n")
    b = one("  steps:\n  - name: a\n", meta="  labels: {x: '2'}\n  annotations: {note: y}\n")
    c = one("  steps:\n  - name: a\n", meta=f"  annotations: {{{TIMEOUT_ANNOTATION}: '3'}}\n")
    d = one("  steps:\n  - name: b\n")
    assert a.spec_key() == b.spec_key()
    assert a.spec_key() != c.spec_key() and a.spec_key() != d.spec_key()


UNKNOWN = [
    (doc("  steps:\n  - name: a\n") + "extra: 1\n", r"Pipeline p: extra is not a known field"),
    (doc("  steps:\n  - name: a\n", meta="  uid: x\n"), r"Pipeline p: metadata\.uid is not a known field"),
    (doc("  steps:\n  - name: a\n  foo: 1\n"), r"Pipeline p: spec\.foo is not a known field"),
    (
        doc("  steps:\n  - name: a\n  - name: b\n    foo: 1\n"),
        r"Pipeline p: spec\.steps\[1\]\.foo is not a known field",
    ),
    (
        doc("  steps:\n  - name: a\n    batch: {size: 1, foo: 2}\n"),
        r"spec\.steps\[0\]\.batch\.foo is not a known field",
    ),
    (
        doc("  steps:\n  - name: a\n  output: {steps: [a], foo: 1}\n"),
        r"spec\.output\.foo is not a known field",
    ),
    (
        doc("  steps:\n  - name: a\n  input: {externalInputs: [x.outputs], foo: 1}\n"),
        r"spec\.input\.foo is not a known field",
    ),
    (
        doc("  steps:\n  - name: a\n  dataflow: {foo: 1}\n"),
        r"spec\.dataflow\.foo is not a known field",
    ),
]


@pytest.mark.parametrize(("text", "message"), UNKNOWN)
def test_unknown_fields_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pipelines(text)


REJECTED = [
    ("", r"spec\.steps must list at least one step"),
    ("  steps: []\n", r"spec\.steps must list at least one step"),
    ("  steps: a\n", r"spec\.steps must be a list"),
    ("  steps:\n  - a\n", r"spec\.steps\[0\] must be a mapping"),
    ("  steps:\n  - inputs: [x]\n", r"spec\.steps\[0\]\.name is required"),
    ("  steps:\n  - name: Bad_Name\n", r"spec\.steps\[0\]\.name 'Bad_Name' is not a valid Model name"),
    ("  steps:\n  - name: p\n", r"spec\.steps\[0\]\.name 'p' must differ from the pipeline's name"),
    (
        "  steps:\n  - name: a\n  - name: b\n  - name: a\n",
        r"spec\.steps\[2\]\.name 'a' repeats spec\.steps\[0\]",
    ),
    ("  steps:\n  - name: a\n    inputs: b\n", r"spec\.steps\[0\]\.inputs must be a list of strings"),
    ("  steps:\n  - name: a\n    inputs: ['']\n", r"spec\.steps\[0\]\.inputs must be a list of strings"),
    ("  steps:\n  - name: a\n    triggers: [1]\n", r"spec\.steps\[0\]\.triggers must be a list of strings"),
    ("  steps:\n  - name: a\n    tensorMap: [x]\n", r"spec\.steps\[0\]\.tensorMap must be a mapping"),
    (
        "  steps:\n  - name: a\n    tensorMap: {p.inputs.x: ''}\n",
        r"spec\.steps\[0\]\.tensorMap\['p\.inputs\.x'\] must map to a non-empty tensor name",
    ),
    ("  steps:\n  - name: a\n    inputsJoinType: left\n", r"spec\.steps\[0\]\.inputsJoinType must be one of"),
    (
        "  steps:\n  - name: a\n    triggersJoinType: 1\n",
        r"spec\.steps\[0\]\.triggersJoinType must be one of",
    ),
    ("  steps:\n  - name: a\n    joinWindowMs: -1\n", r"spec\.steps\[0\]\.joinWindowMs must be an integer"),
    ("  steps:\n  - name: a\n    joinWindowMs: 4294967296\n", r"spec\.steps\[0\]\.joinWindowMs must be"),
    ("  steps:\n  - name: a\n    joinWindowMs: true\n", r"spec\.steps\[0\]\.joinWindowMs must be"),
    ("  steps:\n  - name: a\n    joinWindowMs: 1.5\n", r"spec\.steps\[0\]\.joinWindowMs must be"),
    ("  steps:\n  - name: a\n    batch: 3\n", r"spec\.steps\[0\]\.batch must be a mapping"),
    ("  steps:\n  - name: a\n    batch: {size: x}\n", r"spec\.steps\[0\]\.batch\.size must be an integer"),
    ("  steps:\n  - name: a\n    batch: {windowMs: -5}\n", r"spec\.steps\[0\]\.batch\.windowMs must be"),
    (
        "  steps:\n  - name: a\n    batch: {rolling: 'yes'}\n",
        r"spec\.steps\[0\]\.batch\.rolling must be true",
    ),
    ("  steps:\n  - name: a\n  output: [a]\n", r"spec\.output must be a mapping"),
    ("  steps:\n  - name: a\n  output: {steps: a}\n", r"spec\.output\.steps must be a list of strings"),
    ("  steps:\n  - name: a\n  output: {stepsJoin: all}\n", r"spec\.output\.stepsJoin must be one of"),
    ("  steps:\n  - name: a\n  output: {joinWindowMs: -1}\n", r"spec\.output\.joinWindowMs must be"),
    ("  steps:\n  - name: a\n  output: {tensorMap: x}\n", r"spec\.output\.tensorMap must be a mapping"),
    ("  steps:\n  - name: a\n  input: {}\n", r"spec\.input\.externalInputs must name at least one input"),
    ("  steps:\n  - name: a\n  input: {externalInputs: x}\n", r"spec\.input\.externalInputs must be a list"),
    (
        "  steps:\n  - name: a\n  input: {externalInputs: [x.outputs], joinType: no}\n",
        r"spec\.input\.joinType must be one of",
    ),
    (
        "  steps:\n  - name: a\n  input: {externalInputs: [x.outputs], triggersJoinType: no}\n",
        r"spec\.input\.triggersJoinType must be one of",
    ),
    (
        "  steps:\n  - name: a\n  input: {externalInputs: [x.outputs], joinWindowMs: x}\n",
        r"spec\.input\.joinWindowMs must be",
    ),
    (
        "  steps:\n  - name: a\n  input: {externalInputs: [x.outputs], externalTriggers: [1]}\n",
        r"spec\.input\.externalTriggers must be a list",
    ),
    (
        "  steps:\n  - name: a\n  input: {externalInputs: [x.outputs], tensorMap: [1]}\n",
        r"spec\.input\.tensorMap must be a mapping",
    ),
    (
        "  steps:\n  - name: a\n  dataflow: {cleanTopicsOnDelete: 1}\n",
        r"spec\.dataflow\.cleanTopicsOnDelete must be",
    ),
    ("  steps:\n  - name: a\n  dataflow: x\n", r"spec\.dataflow must be a mapping"),
    ("  steps:\n  - name: a\n  allowCycles: 'true'\n", r"spec\.allowCycles must be true or false"),
    ("  steps:\n  - name: a\n  maxStepRevisits: -1\n", r"spec\.maxStepRevisits must be an integer"),
    # references (Seldon's checkStepInputs, checkStepTriggers, checkStepReferencesExist, checkPipelineOutputs)
    (
        "  steps:\n  - name: a\n    inputs: [p.foo]\n",
        r"spec\.steps\[0\]\.inputs\[0\] 'p\.foo' has 'foo' where",
    ),
    (
        "  steps:\n  - name: a\n  - name: b\n    inputs: [a.outputs.t.u]\n",
        r"spec\.steps\[1\]\.inputs\[0\] 'a\.outputs\.t\.u' has too many parts",
    ),
    (
        "  steps:\n  - name: a\n    inputs: [.a]\n",
        r"spec\.steps\[0\]\.inputs\[0\] '\.a' is empty or has an empty part",
    ),
    (
        "  steps:\n  - name: a\n    inputs: [p.inputs.]\n",
        r"spec\.steps\[0\]\.inputs\[0\] 'p\.inputs\.' is empty",
    ),
    (
        "  steps:\n  - name: a\n    inputs: [zz]\n",
        r"spec\.steps\[0\]\.inputs\[0\] 'zz' refers to 'zz', which is not a step",
    ),
    (
        "  steps:\n  - name: a\n    triggers: [zz.outputs.t]\n",
        r"spec\.steps\[0\]\.triggers\[0\] 'zz\.outputs\.t' refers to 'zz', which is not a step",
    ),
    ("  steps:\n  - name: a\n    triggers: [a.x]\n", r"spec\.steps\[0\]\.triggers\[0\] 'a\.x' has 'x' where"),
    (
        "  steps:\n  - name: a\n  output: {steps: [zz]}\n",
        r"spec\.output\.steps\[0\] 'zz' refers to 'zz', which is not a step",
    ),
    (
        "  steps:\n  - name: a\n  output: {steps: [p.inputs]}\n",
        r"spec\.output\.steps\[0\] 'p\.inputs' refers to 'p', which is not a step",
    ),
    ("  steps:\n  - name: a\n  output: {steps: [a.bad]}\n", r"spec\.output\.steps\[0\] 'a\.bad' has 'bad'"),
    (
        "  steps:\n  - name: a\n    tensorMap: {p.x: y}\n",
        r"spec\.steps\[0\]\.tensorMap key 'p\.x' must be <step>\.<inputs\|outputs>\.<tensor>",
    ),
    (
        "  steps:\n  - name: a\n    tensorMap: {p.foo.x: y}\n",
        r"spec\.steps\[0\]\.tensorMap key 'p\.foo\.x' has 'foo' where",
    ),
    (
        "  steps:\n  - name: a\n    tensorMap: {zz.outputs.x: y}\n",
        r"spec\.steps\[0\]\.tensorMap key 'zz\.outputs\.x' refers to 'zz', which is not a step",
    ),
    (
        "  steps:\n  - name: a\n  output: {steps: [a], tensorMap: {zz.outputs.x: y}}\n",
        r"spec\.output\.tensorMap key 'zz\.outputs\.x' refers to 'zz'",
    ),
    # cycles (Seldon's checkForCycles)
    ("  steps:\n  - name: a\n    inputs: [a]\n", r"spec\.steps form a cycle \(a reads a\)"),
    (
        "  steps:\n  - name: a\n    inputs: [b]\n  - name: b\n    inputs: [a.outputs.t]\n",
        r"spec\.steps form a cycle \(a reads b, b reads a\)",
    ),
    (
        "  steps:\n  - name: a\n  - name: b\n    inputs: [a]\n    triggers: [c]\n"
        "  - name: c\n    inputs: [b]\n",
        r"spec\.steps form a cycle \(b reads c, c reads b\)",
    ),
]


@pytest.mark.parametrize(("spec", "message"), REJECTED)
def test_rejected_naming_the_field(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"Pipeline p: {message}"):
        parse_pipelines(doc(spec))


def test_spec_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"Pipeline p: spec must be a mapping"):
        parse_pipelines(f"{HEAD}metadata:\n  name: p\nspec: [a]\n")


def test_bad_pipeline_name() -> None:
    with pytest.raises(ConfigError, match=r"Pipeline 'P_1': metadata\.name must be lowercase"):
        parse_pipelines(doc("  steps:\n  - name: a\n", name="P_1"))


def test_cycles_are_parsed_when_allowed() -> None:
    m = one("  allowCycles: true\n  maxStepRevisits: 5\n  steps:\n  - name: a\n    inputs: [a]\n")
    assert m.allow_cycles and m.max_step_revisits == 5
    validate_for_chains(m)  # cyclic pipelines run


def test_references_to_the_pipeline_itself() -> None:
    m = one("  steps:\n  - name: a\n    inputs: [p]\n  - name: b\n    inputs: [p.inputs.x, p.outputs]\n")
    assert m.steps[0].inputs == ["p"] and m.steps[1].inputs == ["p.inputs.x", "p.outputs"]


def test_documents() -> None:
    both = parse_pipelines(TFSIMPLES + "---\n" + doc("  steps:\n  - name: a\n") + "---\n")
    assert [m.name for m in both] == ["tfsimples", "p"]
    assert parse_pipelines("") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: m}\n",
            r"kind 'Model' is not a",
        ),
        (TFSIMPLES + "---\nkind: Server\n", r"document 2: kind 'Server' is not a Pipeline"),
        (TFSIMPLES.replace("v1alpha1", "v1"), r"apiVersion 'mlops\.seldon\.io/v1' is not supported"),
        ("- a\n", r"document 1: expected a mapping"),
        ("a: [\n", r"invalid YAML"),
        (TFSIMPLES + "---\n" + TFSIMPLES, r"Pipeline tfsimples: defined more than once"),
        (f"{HEAD}spec: {{}}\n", r"Pipeline: metadata with a name is required"),
    ],
)
def test_document_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pipelines(text)


# ---------------------------------------------------------------------------------- validate_for_chains


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            IRIS_BATCH.replace("size: 2", "size: 2\n       rolling: true"),
            r"Pipeline iris-batch: spec\.steps\[0\]\.batch\.rolling is not supported yet",
        ),
        (
            doc("  steps:\n  - name: a\n  - name: b\n    inputs: [a, p.inputs]\n    batch: {size: 2}\n"),
            r"Pipeline p: spec\.steps\[1\]\.batch: batching a step that joins inputs",
        ),
        (
            doc("  steps:\n  - name: a\n    batch: {size: 2}\n  allowCycles: true\n"),
            r"Pipeline p: spec\.steps\[0\]\.batch: batching in a pipeline with allowCycles is not supported",
        ),
        (
            TFSIMPLE_EXTENDED.replace("    tensorMap:", "    externalTriggers: [other.nope]\n    tensorMap:"),
            r"spec\.input\.externalTriggers\[0\] 'other\.nope' has 'nope'",
        ),
        (
            TFSIMPLE_EXTENDED.replace("- tfsimple.outputs\n", "- tfsimple.stage.x\n"),
            r"spec\.input\.externalInputs\[0\] 'tfsimple\.stage\.x' has 'stage' where inputs, outputs",
        ),
        (
            TFSIMPLE_EXTENDED.replace("- tfsimple.outputs\n", "- tfsimple-extended.outputs\n"),
            r"spec\.input\.externalInputs\[0\] 'tfsimple-extended\.outputs' reads the pipeline itself",
        ),
    ],
)
def test_not_supported_yet(text: str, message: str) -> None:
    [m] = parse_pipelines(text)
    with pytest.raises(ConfigError, match=message):
        validate_for_chains(m)


@pytest.mark.parametrize(
    "spec",
    [
        "  steps:\n  - name: a\n",
        "  steps:\n  - name: a\n  - name: b\n    inputs: [a.outputs.x, a.outputs.y, a]\n",
        "  steps:\n  - name: a\n    inputs: [p.inputs.x, p]\n  output: {steps: [a.outputs.t, a.outputs.u]}\n",
        "  steps:\n  - name: a\n    batch: {size: 0, windowMs: 5}\n",
        "  steps:\n  - name: a\n  - name: b\n    inputs: [a]\n    triggers: [a.outputs.go]\n"
        "    joinWindowMs: 1\n",  # the window of the trigger gate
        "  steps:\n  - name: a\n  output: {}\n",
        "  steps:\n  - name: a\n  maxStepRevisits: 3\n  allowCycles: false\n",
    ],
)
def test_chains_accepted(spec: str) -> None:
    validate_for_chains(one(spec))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "  steps:\n  - name: a\n    inputsJoinType: any\n",
            r"spec\.steps\[0\]\.inputsJoinType has no effect: step a reads one input",
        ),
        (
            "  steps:\n  - name: a\n  - name: b\n    inputs: [a.outputs.x, a.outputs.y]\n"
            "    joinWindowMs: 5\n",
            r"spec\.steps\[1\]\.joinWindowMs has no effect: step b reads one input and has no triggers",
        ),
        (
            "  steps:\n  - name: a\n  - name: b\n    inputs: [a, p]\n    triggers: [a.outputs.go]\n"
            "    triggersJoinType: outer\n",
            r"spec\.steps\[1\]\.triggersJoinType has no effect: step b has 1 trigger",
        ),
        (
            "  steps:\n  - name: a\n  output: {steps: [a.outputs.t, a.outputs.u], stepsJoin: any}\n",
            r"spec\.output\.stepsJoin has no effect: the output reads one step",
        ),
        (
            "  input: {externalInputs: [o], joinType: outer}\n  steps:\n  - name: a\n",
            r"spec\.input\.joinType has no effect: the pipeline reads one external input",
        ),
        (
            "  input: {externalInputs: [o], joinWindowMs: 10}\n  steps:\n  - name: a\n",
            r"spec\.input\.joinWindowMs has no effect",
        ),
    ],
)
def test_join_fields_where_nothing_is_joined_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"Pipeline p: {message}.*a join needs two or more sources"):
        one(spec)


def test_conditional_chain_accepted() -> None:
    [m] = parse_pipelines(CONDITIONAL.replace("    - add10\n    stepsJoin: any\n", ""))
    validate_for_chains(m)


@pytest.mark.parametrize(
    "text", [TFSIMPLES_JOIN, TFSIMPLES_INPUT, CONDITIONAL, CHOICE, IRIS_BATCH, TFSIMPLE_EXTENDED]
)
def test_joins_and_triggers_accepted(text: str) -> None:
    [m] = parse_pipelines(text)
    validate_for_chains(m)


# ---------------------------------------------------------------------------------------- references

REFS = [
    ("m1", Ref("m1", "outputs", None, False)),
    ("p", Ref("p", "inputs", None, True)),
    ("m1.outputs", Ref("m1", "outputs", None, False)),
    ("m1.inputs", Ref("m1", "inputs", None, False)),
    ("m1.outputs.t1", Ref("m1", "outputs", "t1", False)),
    ("m1.inputs.t1", Ref("m1", "inputs", "t1", False)),
    ("p.inputs.x", Ref("p", "inputs", "x", True)),
    ("p.outputs", Ref("p", "outputs", None, True)),
]


@pytest.mark.parametrize(("text", "ref"), REFS)
def test_parse_ref(text: str, ref: Ref) -> None:
    assert parse_ref(text, "p") == ref
    assert parse_ref(str(ref), "p") == ref


def test_ref_str_is_the_normal_form() -> None:
    assert str(parse_ref("m1", "p")) == "m1.outputs"
    assert str(parse_ref("p", "p")) == "p.inputs"
    assert str(parse_ref("m1.inputs.t", "p")) == "m1.inputs.t"


@pytest.mark.parametrize("text", ["", "m.", ".m", "m..t", "m.in", "m.outputs.t.u", " "])
def test_bad_refs(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ref(text, "p")


def test_tensor_keys() -> None:
    assert parse_tensor_key("m1.outputs.OUTPUT0", "p") == Ref("m1", "outputs", "OUTPUT0", False)
    assert parse_tensor_key("p.inputs.x", "p") == Ref("p", "inputs", "x", True)
    assert parse_tensor_key("m1.outputs.a.b", "p") == Ref("m1", "outputs", "a.b", False)
    for bad in ("m1", "m1.outputs", "m1.x.t", "m1.outputs."):
        with pytest.raises(ValueError):
            parse_tensor_key(bad, "p")


def test_group_sources_as_seldon() -> None:
    groups = group_sources(["a.outputs.x", "a.outputs.y", "a", "p.inputs", "b.inputs.z"], "p")
    assert groups == {
        Ref("a", "outputs"): frozenset({"x", "y"}),  # a named tensor wins over the whole topic
        Ref("p", "inputs", None, True): None,
        Ref("b", "inputs"): frozenset({"z"}),
    }
    assert list(groups) == [Ref("a", "outputs"), Ref("p", "inputs", None, True), Ref("b", "inputs")]
    assert group_sources([], "p") == {}


@pytest.mark.parametrize(
    ("text", "source", "ref"),
    [
        ("a", "a", Ref("a", "outputs", None, True)),
        ("a.inputs", "a", Ref("a", "inputs", None, True)),
        ("a.outputs.t", "a", Ref("a", "outputs", "t", True)),
        ("a.step.s", "a", Ref("s", "outputs", None, False)),
        ("a.step.s.inputs", "a", Ref("s", "inputs", None, False)),
        ("a.step.s.outputs.t", "a", Ref("s", "outputs", "t", False)),
    ],
)
def test_external_references(text: str, source: str, ref: Ref) -> None:
    assert parse_external_ref(text) == (source, ref)


def test_pipeline_cycles_through_external_inputs_are_found() -> None:
    assert find_pipeline_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_pipeline_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_pipeline_cycle({"a": {"gone"}}) is None  # a pipeline not loaded is no cycle
