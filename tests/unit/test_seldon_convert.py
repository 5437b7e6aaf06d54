"""Seldon scheduler protos to headrace manifests (as the `seldon` CLI sends them), and statuses to protos."""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace.config.errors import ConfigError
from headrace.config.manifests import MAX_REPLICAS, parse_manifests
from headrace.config.pipelines import parse_pipelines
from headrace.engine.scheduler import seldon_convert as convert
from headrace.engine.scheduler import status as st
from headrace.engine.scheduler.seldon import scheduler_pb2 as pb


def cli_model(uri: str, **spec: object) -> pb.Model:
    """A Model as the seldon CLI converts a CRD: kubernetesMeta always set, scaling validated."""
    return pb.Model(
        meta=pb.MetaData(name="iris", kubernetesMeta=pb.KubernetesMeta(namespace="", generation=0)),
        modelSpec=pb.ModelSpec(uri=uri, **spec),  # type: ignore[arg-type]
        deploymentSpec=pb.DeploymentSpec(replicas=1, minReplicas=0, maxReplicas=MAX_REPLICAS),
    )


# ------------------------------------------------------------------------------------------ models


def test_model_fields_map_to_the_manifest(tmp_path: Path) -> None:
    model = cli_model(
        str(tmp_path),
        requirements=["python", "sklearn"],
        memoryBytes=100 * 2**20,
        server="mine",
        parameters=[pb.ParameterSpec(name="factor", value="3")],
    )
    model.meta.kubernetesMeta.namespace = "prod"
    model.deploymentSpec.CopyFrom(pb.DeploymentSpec(replicas=3, minReplicas=2, maxReplicas=4))
    model.dataflowSpec.cleanTopicsOnDelete = True
    m = convert.model_manifest(model)
    assert (m.name, m.namespace, m.path, m.storage_uri) == ("iris", "prod", str(tmp_path), str(tmp_path))
    assert m.requirements == ["python", "sklearn"] and m.memory == 100 * 2**20 and m.server == "mine"
    assert (m.replicas, m.min_replicas, m.max_replicas) == (3, 2, 4)
    assert m.parameters == {"factor": "3"} and m.clean_topics_on_delete


def test_model_is_the_same_as_from_yaml(tmp_path: Path) -> None:
    yaml_text = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: iris\n"
        f"spec:\n  storageUri: file://{tmp_path}\n  requirements: [python]\n  memory: 1Mi\n"
    )
    [from_yaml] = parse_manifests(yaml_text)
    from_proto = convert.model_manifest(
        cli_model(f"file://{tmp_path}", requirements=["python"], memoryBytes=2**20)
    )
    assert from_proto == from_yaml
    assert convert.model_manifest(convert.model_proto(from_proto)) == from_yaml  # and back


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: setattr(m.modelSpec, "uri", ""), "Model iris: spec.storageUri must be a non-empty string"),
        (lambda m: setattr(m.modelSpec, "uri", "gs://b/iris"), "only local paths and file:// URIs"),
        (lambda m: setattr(m.modelSpec, "uri", "./iris"), "spec.storageUri ./iris is relative"),
        (lambda m: setattr(m.meta, "name", "Iris"), "metadata.name must be lowercase"),
        (lambda m: setattr(m.modelSpec, "artifactVersion", 2), "spec.artifactVersion is not supported"),
        (
            lambda m: (
                m.modelSpec.storageConfig.SetInParent()
                or setattr(m.modelSpec.storageConfig, "storageSecretName", "s")
            ),
            "spec.secretName is not supported",
        ),
        (
            lambda m: setattr(m.modelSpec.storageConfig, "storageRcloneConfig", "r"),
            "modelSpec.storageConfig.storageRcloneConfig is not supported",
        ),
        (
            lambda m: setattr(m.modelSpec.explainer, "type", "anchor_tabular"),
            "spec.explainer is not supported",
        ),
        (lambda m: setattr(m.modelSpec.llm, "modelRef", "x"), "spec.llm is not supported"),
        (
            lambda m: setattr(m.deploymentSpec, "logPayloads", True),
            "Model iris: spec.logger is not supported",
        ),
        (lambda m: setattr(m.deploymentSpec, "replicas", 0), "spec.replicas must be at least 1"),
        (
            lambda m: m.modelSpec.modelRuntimeInfo.mlserver.SetInParent(),
            "modelSpec.modelRuntimeInfo is not supported",
        ),
        (lambda m: setattr(m.streamSpec, "inputTopic", "t"), "Model iris: streamSpec is not supported"),
        (lambda m: setattr(m.meta, "version", "2"), "Model iris: meta.version is not supported"),
    ],
)
def test_model_rejects_what_headrace_cannot_honour(tmp_path: Path, change: object, message: str) -> None:
    model = cli_model(str(tmp_path))
    change(model)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        convert.model_manifest(model)
    assert message in info.value.message


def test_model_without_deployment_spec_gets_the_defaults(tmp_path: Path) -> None:
    model = pb.Model(meta=pb.MetaData(name="iris"), modelSpec=pb.ModelSpec(uri=str(tmp_path)))
    m = convert.model_manifest(model)
    assert (m.replicas, m.min_replicas, m.max_replicas) == (1, 0, MAX_REPLICAS)


def model_status(state: str, **kw: object) -> st.ModelStatus:
    base: dict[str, object] = dict(name="iris", state=state, generation=3, replicas=2, server="headrace")
    return st.ModelStatus(**{**base, **kw})  # type: ignore[arg-type]


def test_model_status_is_seldons(tmp_path: Path) -> None:
    manifest = convert.model_manifest(cli_model(str(tmp_path), requirements=["python"]))
    status = model_status(
        st.PROGRESSING,
        reason="1/2 replicas loaded",
        available_replicas=1,
        updated_at=1_700_000_000.5,
        placement=[
            st.ReplicaPlacement(server="headrace", index=0, state="Loaded"),
            st.ReplicaPlacement(server="headrace", index=1, state="LoadFailed", message="boom"),
        ],
    )
    res = convert.model_status_response(status, manifest)
    [v] = res.versions
    assert res.modelName == "iris" and v.version == 3 and v.serverName == "headrace"
    assert pb.ModelStatus.ModelState.Name(v.state.state) == "ModelProgressing"
    assert v.state.reason == "1/2 replicas loaded"
    assert (v.state.availableReplicas, v.state.unavailableReplicas) == (1, 1)
    assert v.state.lastChangeTimestamp.ToNanoseconds() == 1_700_000_000_500_000_000
    states = {
        i: pb.ModelReplicaStatus.ModelReplicaState.Name(r.state) for i, r in v.modelReplicaState.items()
    }
    assert states == {0: "Loaded", 1: "LoadFailed"} and v.modelReplicaState[1].reason == "boom"
    assert v.modelDefn.modelSpec.uri == str(tmp_path) and v.modelDefn.meta.name == "iris"
    assert pb.ModelStatusResponse.ModelOperation.Name(res.operation) == "ModelCreate" and not res.deleted


@pytest.mark.parametrize(
    "state",
    [st.PROGRESSING, st.AVAILABLE, st.FAILED, st.SCHEDULE_FAILED, st.TERMINATING, st.TERMINATED],
)
def test_every_model_state_has_its_seldon_name(tmp_path: Path, state: str) -> None:
    manifest = convert.model_manifest(cli_model(str(tmp_path)))
    res = convert.model_status_response(model_status(state), manifest)
    assert pb.ModelStatus.ModelState.Name(res.versions[0].state.state) == state
    assert res.deleted == (state == st.TERMINATED)


def test_an_unknown_state_is_model_state_unknown(tmp_path: Path) -> None:
    manifest = convert.model_manifest(cli_model(str(tmp_path)))
    res = convert.model_status_response(model_status("Sideways"), manifest)
    assert res.versions[0].state.state == pb.ModelStatus.ModelStateUnknown


# --------------------------------------------------------------------------------------- pipelines

FULL = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: full
  namespace: prod
spec:
  input:
    externalInputs: [up.outputs, other.step.a.outputs.t]
    externalTriggers: [go.outputs]
    joinWindowMs: 40
    joinType: any
    tensorMap:
      up.outputs.y: x
  steps:
  - name: a
  - name: b
    inputs: [a.outputs.y, full.inputs.x]
    tensorMap:
      a.outputs.y: x
    inputsJoinType: outer
    joinWindowMs: 20
    triggers: [a.outputs.go, full.inputs.t]
    triggersJoinType: any
  - name: c
    inputs: [b]
    batch:
      size: 4
      windowMs: 100
  output:
    steps: [b, c]
    stepsJoin: outer
    joinWindowMs: 30
    tensorMap:
      c.outputs.y: z
  dataflow:
    cleanTopicsOnDelete: true
  maxStepRevisits: 3
"""


def cli_pipeline() -> pb.Pipeline:
    """FULL as the seldon CLI's CRD conversion sends it."""
    return pb.Pipeline(
        name="full",
        kubernetesMeta=pb.KubernetesMeta(namespace="prod"),
        input=pb.PipelineInput(
            externalInputs=["up.outputs", "other.step.a.outputs.t"],
            externalTriggers=["go.outputs"],
            joinWindowMs=40,
            joinType=pb.PipelineInput.ANY,
            tensorMap={"up.outputs.y": "x"},
        ),
        steps=[
            pb.PipelineStep(name="a"),
            pb.PipelineStep(
                name="b",
                inputs=["a.outputs.y", "full.inputs.x"],
                tensorMap={"a.outputs.y": "x"},
                inputsJoin=pb.PipelineStep.OUTER,
                joinWindowMs=20,
                triggers=["a.outputs.go", "full.inputs.t"],
                triggersJoin=pb.PipelineStep.ANY,
            ),
            pb.PipelineStep(name="c", inputs=["b"], batch=pb.Batch(size=4, windowMs=100)),
        ],
        output=pb.PipelineOutput(
            steps=["b", "c"],
            stepsJoin=pb.PipelineOutput.OUTER,
            joinWindowMs=30,
            tensorMap={"c.outputs.y": "z"},
        ),
        dataflowSpec=pb.DataflowSpec(cleanTopicsOnDelete=True),
        maxStepRevisits=3,
    )


def test_pipeline_is_the_same_as_from_yaml() -> None:
    [from_yaml] = parse_pipelines(FULL)
    manifest, text = convert.pipeline_manifest(cli_pipeline())
    assert manifest == from_yaml
    assert parse_pipelines(text) == [from_yaml]  # the document workers get says the same
    again, _ = convert.pipeline_manifest(convert.pipeline_proto(manifest))  # and back
    assert again == from_yaml


def test_pipeline_allow_cycles_passes_through() -> None:
    p = pb.Pipeline(
        name="loop",
        allowCycles=True,
        steps=[
            pb.PipelineStep(name="a", inputs=["loop.inputs", "b"], inputsJoin=pb.PipelineStep.ANY),
            pb.PipelineStep(name="b", inputs=["a"]),
        ],
    )
    manifest, _ = convert.pipeline_manifest(p)
    assert manifest.allow_cycles and manifest.steps[0].inputs_join_type == "any"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.ClearField("steps"), "Pipeline full: spec.steps must list at least one step"),
        (lambda p: p.steps[2].inputs.append("zz"), "spec.steps[2].inputs[1] 'zz' refers to 'zz'"),
        (lambda p: p.steps.add(name="a"), "spec.steps[3].name 'a' repeats spec.steps[0]"),
        (lambda p: setattr(p.steps[2], "inputsJoin", pb.PipelineStep.OUTER), "inputsJoinType has no effect"),
        (lambda p: setattr(p.steps[1], "inputsJoin", 7), "spec.steps[1].inputsJoinType 7 is not a join type"),
        (lambda p: p.steps[0].inputs.append("c"), "spec.steps form a cycle"),
        (lambda p: p.input.ClearField("externalInputs"), "spec.input.externalInputs must name at least one"),
    ],
)
def test_pipeline_rejects_as_the_yaml_path_does(change: object, message: str) -> None:
    p = cli_pipeline()
    change(p)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        convert.pipeline_manifest(p)
    assert message in info.value.message


def pipeline_status(state: str, *, gw: bool = False, models: bool = True) -> st.PipelineStatus:
    return st.PipelineStatus(
        name="full",
        state=state,
        reason="why" if state != st.PIPELINE_READY else "",
        version=2,
        updated_at=1_700_000_000.0,
        conditions=[
            st.Condition(type=st.MODELS_READY, status=str(models), reason=state),
            st.Condition(type=st.PIPELINE_GW_READY, status=str(gw), reason=state, message="0/2 workers"),
        ],
    )


@pytest.mark.parametrize(
    ("state", "gw", "gw_status"),
    [
        (st.PIPELINE_CREATING, False, "PipelineCreating"),
        (st.PIPELINE_READY, True, "PipelineReady"),
        (st.PIPELINE_FAILED, False, "PipelineFailed"),
        (st.PIPELINE_TERMINATING, False, "PipelineTerminating"),
        (st.PIPELINE_TERMINATED, False, "PipelineTerminated"),
    ],
)
def test_pipeline_status_is_seldons(state: str, gw: bool, gw_status: str) -> None:
    manifest, _ = convert.pipeline_manifest(cli_pipeline())
    res = convert.pipeline_status_response(pipeline_status(state, gw=gw), manifest)
    [v] = res.versions
    names = pb.PipelineVersionState.PipelineStatus
    assert res.pipelineName == "full" and names.Name(v.state.status) == state
    assert v.state.pipelineVersion == 2 and v.pipeline.version == 2 and v.state.modelsReady
    assert names.Name(v.state.pipelineGwStatus) == gw_status
    assert v.state.pipelineGwReason == ("" if gw else "0/2 workers")
    assert v.state.reason == ("" if state == st.PIPELINE_READY else "why")
    assert convert.pipeline_manifest(v.pipeline)[0] == manifest
    deleting = state in (st.PIPELINE_TERMINATING, st.PIPELINE_TERMINATED)
    assert pb.PipelineStatusResponse.PipelineOperation.Name(res.operation) == (
        "PipelineDelete" if deleting else "PipelineCreate"
    )


# ----------------------------------------------------------------------------------------- servers


def test_server_status_is_seldons() -> None:
    loaded = st.ReplicaModel(name="a", generation=1, state="Loaded")
    loading = st.ReplicaModel(name="b", generation=1, state="Loading")
    status = st.ServerStatus(
        name="headrace",
        server_config="headrace",
        replicas=2,
        loaded_models=1,
        replica_status=[
            st.ReplicaStatus(index=0, socket="/s0", connected=True, models=[loaded, loading],
                             memory_used=100, memory_capacity=1000),
            st.ReplicaStatus(index=1, socket="/s1", connected=False, models=[loaded], memory_capacity=1000),
        ],
    )  # fmt: skip
    res = convert.server_status_response(status)
    assert (res.serverName, res.expectedReplicas, res.availableReplicas) == ("headrace", 2, 1)
    assert res.numLoadedModelReplicas == 2
    assert pb.ServerStatusResponse.Type.Name(res.type) == "StatusUpdate"
    assert [
        (r.replicaIdx, r.totalMemoryBytes, r.availableMemoryBytes, r.numLoadedModels) for r in res.resources
    ] == [
        (0, 1000, 900, 1),
        (1, 1000, 1000, 1),
    ]
