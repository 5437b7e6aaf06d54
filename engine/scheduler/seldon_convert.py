"""Seldon scheduler protos to headrace manifests and back, and headrace statuses to Seldon's status protos.

The `seldon` CLI turns a Model or Pipeline CRD into the scheduler's proto on its side; here the proto is
turned back into the same YAML document and parsed by config/, so both paths accept and reject exactly
the same things, and error messages name the YAML fields the user wrote (spec.storageUri, ...).
"""

from __future__ import annotations

from typing import Any

import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from headrace.config.errors import ConfigError
from headrace.config.manifests import API_VERSION, MAX_REPLICAS, ModelManifest, parse_manifests
from headrace.config.pipelines import InputSpec, OutputSpec, PipelineManifest, StepSpec
from headrace.engine.scheduler import status as st
from headrace.engine.scheduler.pipelines import parse_pipeline_docs
from headrace.engine.scheduler.seldon import scheduler_pb2 as pb

# ------------------------------------------------------------------------------------------ models


def model_doc(model: pb.Model) -> dict[str, Any]:
    """The Seldon Model document a LoadModel request stands for; what has no YAML form headrace
    could honour raises ConfigError naming the field."""
    meta, ms = model.meta, model.modelSpec
    name = meta.name
    where = f"Model {name}" if name else "Model"
    if meta.HasField("kind") and meta.kind not in ("", "Model"):
        raise ConfigError(f"{where}: meta.kind {meta.kind!r} is not Model")
    if meta.HasField("version") and meta.version:
        raise ConfigError(f"{where}: meta.version is not supported by headrace (it numbers generations)")
    if ms.HasField("modelRuntimeInfo"):
        raise ConfigError(f"{where}: modelSpec.modelRuntimeInfo is not supported by headrace")
    if model.HasField("streamSpec") and (model.streamSpec.inputTopic or model.streamSpec.outputTopic):
        raise ConfigError(f"{where}: streamSpec is not supported by headrace (topics follow Seldon's names)")
    metadata: dict[str, Any] = {"name": name}
    if meta.HasField("kubernetesMeta") and meta.kubernetesMeta.namespace:
        metadata["namespace"] = meta.kubernetesMeta.namespace
    spec: dict[str, Any] = {"storageUri": ms.uri}
    if ms.requirements:
        spec["requirements"] = list(ms.requirements)  # the CLI has appended modelType already
    if ms.HasField("memoryBytes"):
        spec["memory"] = ms.memoryBytes
    if ms.HasField("server") and ms.server:
        spec["server"] = ms.server
    if ms.parameters:
        spec["parameters"] = [{"name": p.name, "value": p.value} for p in ms.parameters]
    # fields headrace does not support keep their YAML names, so config/ rejects them as for a file
    if ms.HasField("artifactVersion"):
        spec["artifactVersion"] = ms.artifactVersion
    if ms.HasField("storageConfig"):
        if ms.storageConfig.WhichOneof("config") == "storageRcloneConfig":
            raise ConfigError(f"{where}: modelSpec.storageConfig.storageRcloneConfig is not supported")
        spec["secretName"] = ms.storageConfig.storageSecretName
    which = ms.WhichOneof("model_spec")
    if which == "explainer":
        spec["explainer"] = _optional_fields(ms.explainer, {"type": ms.explainer.type})
    elif which == "llm":
        spec["llm"] = _optional_fields(ms.llm, {})
    if model.HasField("deploymentSpec"):
        d = model.deploymentSpec
        spec["replicas"] = d.replicas
        if d.minReplicas:
            spec["minReplicas"] = d.minReplicas
        if d.maxReplicas and d.maxReplicas != MAX_REPLICAS:  # the CLI sends 2^32-1 for "no maximum"
            spec["maxReplicas"] = d.maxReplicas
        if d.logPayloads:
            spec["logger"] = {"percent": 100}
    if model.HasField("dataflowSpec"):
        spec["dataflow"] = {"cleanTopicsOnDelete": model.dataflowSpec.cleanTopicsOnDelete}
    return {"apiVersion": API_VERSION, "kind": "Model", "metadata": metadata, "spec": spec}


def _optional_fields(msg: Any, out: dict[str, Any]) -> dict[str, Any]:
    for field in ("modelRef", "pipelineRef"):
        if msg.HasField(field):
            out[field] = getattr(msg, field)
    return out


def model_manifest(model: pb.Model) -> ModelManifest:
    """A LoadModel request's model, validated as `headrace model load -f` validates the YAML."""
    [manifest] = parse_manifests(yaml.safe_dump(model_doc(model), sort_keys=False), None)
    assert isinstance(manifest, ModelManifest)
    return manifest


def model_proto(m: ModelManifest) -> pb.Model:
    """The scheduler's Model for a manifest (the modelDefn of a status)."""
    meta = pb.MetaData(name=m.name)
    if m.namespace:
        meta.kubernetesMeta.namespace = m.namespace
    spec = pb.ModelSpec(
        uri=m.storage_uri,
        requirements=m.requirements,
        parameters=[pb.ParameterSpec(name=k, value=v) for k, v in m.parameters.items()],
    )
    if m.memory:
        spec.memoryBytes = m.memory
    if m.server:
        spec.server = m.server
    out = pb.Model(
        meta=meta,
        modelSpec=spec,
        deploymentSpec=pb.DeploymentSpec(
            replicas=m.replicas, minReplicas=m.min_replicas, maxReplicas=m.max_replicas
        ),
    )
    if m.clean_topics_on_delete:
        out.dataflowSpec.cleanTopicsOnDelete = True
    return out


def _timestamp(wall: float) -> Timestamp | None:
    if not wall:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(wall * 1e9))
    return ts


def _enum_name(enum: Any, name: str) -> str:
    """A state named as Seldon names it, if the enum has it; else the enum's zero value (…Unknown)."""
    return name if name in enum.keys() else str(enum.Name(0))  # noqa: SIM118 (an enum wrapper)


def model_status_response(s: st.ModelStatus, manifest: ModelManifest) -> pb.ModelStatusResponse:
    """One model's status, as Seldon's scheduler streams it: one version (headrace keeps only the
    current generation), its replicas keyed by index, the definition it was loaded with."""
    replicas = {
        p.index: pb.ModelReplicaStatus(
            state=_enum_name(pb.ModelReplicaStatus.ModelReplicaState, p.state), reason=p.message
        )
        for p in s.placement
    }
    state = pb.ModelStatus(
        state=_enum_name(pb.ModelStatus.ModelState, s.state),
        reason=s.reason,
        availableReplicas=s.available_replicas,
        unavailableReplicas=max(0, s.replicas - s.available_replicas),
        lastChangeTimestamp=_timestamp(s.updated_at),
    )
    version = pb.ModelVersionStatus(
        version=s.generation,
        serverName="inline" if s.inline else s.server,
        modelReplicaState=replicas,
        state=state,
        modelDefn=model_proto(manifest),
    )
    deleting = s.state in (st.TERMINATING, st.TERMINATED)
    return pb.ModelStatusResponse(
        modelName=s.name,
        versions=[version],
        deleted=s.state == st.TERMINATED,
        keepTopics=not manifest.clean_topics_on_delete,
        operation="ModelDelete" if deleting else "ModelCreate",
    )


# --------------------------------------------------------------------------------------- pipelines

_JOIN_NAMES = {0: "inner", 1: "outer", 2: "any"}  # JoinOp: INNER, OUTER, ANY (same in every message)


def _join(value: int, where: str, field: str) -> str:
    if value not in _JOIN_NAMES:
        raise ConfigError(f"{where}: {field} {value} is not a join type (INNER, OUTER or ANY)")
    return _JOIN_NAMES[value]


def pipeline_doc(p: pb.Pipeline) -> dict[str, Any]:
    """The Seldon Pipeline document a LoadPipeline request stands for. INNER, the proto's zero value,
    is left out like an unset join type (the proto cannot tell them apart); uid and version are the
    scheduler's to set and are ignored, as Seldon's scheduler does."""
    where = f"Pipeline {p.name}" if p.name else "Pipeline"
    metadata: dict[str, Any] = {"name": p.name}
    if p.HasField("kubernetesMeta") and p.kubernetesMeta.namespace:
        metadata["namespace"] = p.kubernetesMeta.namespace
    steps: list[dict[str, Any]] = []
    for i, s in enumerate(p.steps):
        step: dict[str, Any] = {"name": s.name}
        if s.inputs:
            step["inputs"] = list(s.inputs)
        if s.HasField("joinWindowMs"):
            step["joinWindowMs"] = s.joinWindowMs
        if s.tensorMap:
            step["tensorMap"] = dict(s.tensorMap)
        if s.triggers:
            step["triggers"] = list(s.triggers)
        if s.inputsJoin:
            step["inputsJoinType"] = _join(s.inputsJoin, where, f"spec.steps[{i}].inputsJoinType")
        if s.triggersJoin:
            step["triggersJoinType"] = _join(s.triggersJoin, where, f"spec.steps[{i}].triggersJoinType")
        if s.HasField("batch"):
            batch: dict[str, Any] = {}
            if s.batch.HasField("size"):
                batch["size"] = s.batch.size
            if s.batch.HasField("windowMs"):
                batch["windowMs"] = s.batch.windowMs
            step["batch"] = batch
        steps.append(step)
    spec: dict[str, Any] = {"steps": steps}
    if p.HasField("input"):
        inp: dict[str, Any] = {"externalInputs": list(p.input.externalInputs)}
        if p.input.externalTriggers:
            inp["externalTriggers"] = list(p.input.externalTriggers)
        if p.input.HasField("joinWindowMs"):
            inp["joinWindowMs"] = p.input.joinWindowMs
        if p.input.joinType:
            inp["joinType"] = _join(p.input.joinType, where, "spec.input.joinType")
        if p.input.triggersJoin:
            inp["triggersJoinType"] = _join(p.input.triggersJoin, where, "spec.input.triggersJoinType")
        if p.input.tensorMap:
            inp["tensorMap"] = dict(p.input.tensorMap)
        spec["input"] = inp
    if p.HasField("output"):
        out: dict[str, Any] = {"steps": list(p.output.steps)}
        if p.output.joinWindowMs:
            out["joinWindowMs"] = p.output.joinWindowMs
        if p.output.stepsJoin:
            out["stepsJoin"] = _join(p.output.stepsJoin, where, "spec.output.stepsJoin")
        if p.output.tensorMap:
            out["tensorMap"] = dict(p.output.tensorMap)
        spec["output"] = out
    if p.HasField("dataflowSpec"):
        spec["dataflow"] = {"cleanTopicsOnDelete": p.dataflowSpec.cleanTopicsOnDelete}
    if p.allowCycles:
        spec["allowCycles"] = True
    if p.maxStepRevisits:
        spec["maxStepRevisits"] = p.maxStepRevisits
    return {"apiVersion": API_VERSION, "kind": "Pipeline", "metadata": metadata, "spec": spec}


def pipeline_manifest(p: pb.Pipeline) -> tuple[PipelineManifest, str]:
    """A LoadPipeline request's pipeline with its YAML document, checked as `headrace pipeline load`
    checks a file (what workers run is that document)."""
    [doc] = parse_pipeline_docs(yaml.safe_dump(pipeline_doc(p), sort_keys=False))
    return doc


def _step_proto(s: StepSpec) -> pb.PipelineStep:
    step = pb.PipelineStep(
        name=s.name,
        inputs=s.inputs,
        tensorMap=s.tensor_map,
        triggers=s.triggers,
        inputsJoin=s.inputs_join_type.upper(),
        triggersJoin=s.triggers_join_type.upper(),
    )
    if s.join_window_ms is not None:
        step.joinWindowMs = s.join_window_ms
    if s.batch is not None:
        step.batch.SetInParent()
        if s.batch.size is not None:
            step.batch.size = s.batch.size
        if s.batch.window_ms is not None:
            step.batch.windowMs = s.batch.window_ms
    return step


def _input_proto(i: InputSpec) -> pb.PipelineInput:
    out = pb.PipelineInput(
        externalInputs=i.external_inputs,
        externalTriggers=i.external_triggers,
        joinType=i.join_type.upper(),
        triggersJoin=i.triggers_join_type.upper(),
        tensorMap=i.tensor_map,
    )
    if i.join_window_ms is not None:
        out.joinWindowMs = i.join_window_ms
    return out


def _output_proto(o: OutputSpec) -> pb.PipelineOutput:
    return pb.PipelineOutput(
        steps=o.steps,
        joinWindowMs=o.join_window_ms,
        stepsJoin=o.steps_join.upper(),
        tensorMap=o.tensor_map,
    )


def pipeline_proto(m: PipelineManifest, version: int = 0) -> pb.Pipeline:
    """The scheduler's Pipeline for a manifest (the pipeline of a status)."""
    out = pb.Pipeline(
        name=m.name,
        version=version,
        steps=[_step_proto(s) for s in m.steps],
        allowCycles=m.allow_cycles,
        maxStepRevisits=m.max_step_revisits,
    )
    if m.namespace:
        out.kubernetesMeta.namespace = m.namespace
    if m.input is not None:
        out.input.CopyFrom(_input_proto(m.input))
    if m.output is not None:
        out.output.CopyFrom(_output_proto(m.output))
    if m.clean_topics_on_delete:
        out.dataflowSpec.cleanTopicsOnDelete = True
    return out


def _condition_ok(s: st.PipelineStatus, type_: str) -> tuple[bool, str]:
    c = s.condition(type_)
    return (c is not None and c.status == "True"), (c.message if c is not None else "")


def pipeline_status_response(s: st.PipelineStatus, manifest: PipelineManifest) -> pb.PipelineStatusResponse:
    """One pipeline's status as Seldon's scheduler streams it: its one current version, the state,
    whether its models are ready, and the pipeline gateway's (headrace's workers') side."""
    status = _enum_name(pb.PipelineVersionState.PipelineStatus, s.state)
    models_ok, _ = _condition_ok(s, st.MODELS_READY)
    gw_ok, gw_message = _condition_ok(s, st.PIPELINE_GW_READY)
    if gw_ok:
        gw_status = st.PIPELINE_READY
    elif s.state in (st.PIPELINE_FAILED, st.PIPELINE_TERMINATING, st.PIPELINE_TERMINATED):
        gw_status = status
    else:
        gw_status = st.PIPELINE_CREATING
    state = pb.PipelineVersionState(
        pipelineVersion=s.version,
        status=status,
        reason=s.reason,
        lastChangeTimestamp=_timestamp(s.updated_at),
        modelsReady=models_ok,
        pipelineGwStatus=gw_status,
        pipelineGwReason="" if gw_ok else gw_message,
    )
    deleting = s.state in (st.PIPELINE_TERMINATING, st.PIPELINE_TERMINATED)
    return pb.PipelineStatusResponse(
        pipelineName=s.name,
        versions=[pb.PipelineWithState(pipeline=pipeline_proto(manifest, s.version), state=state)],
        operation="PipelineDelete" if deleting else "PipelineCreate",
    )


# ----------------------------------------------------------------------------------------- servers


def server_status_response(s: st.ServerStatus) -> pb.ServerStatusResponse:
    """A server with its replicas' memory and loaded models; available replicas are connected ones."""
    resources = [
        pb.ServerReplicaResources(
            replicaIdx=r.index,
            totalMemoryBytes=r.memory_capacity,
            availableMemoryBytes=max(0, r.memory_capacity - r.memory_used),
            numLoadedModels=sum(1 for m in r.models if m.state == "Loaded"),
        )
        for r in s.replica_status
    ]
    return pb.ServerStatusResponse(
        type="StatusUpdate",
        serverName=s.name,
        resources=resources,
        expectedReplicas=s.replicas,
        availableReplicas=sum(1 for r in s.replica_status if r.connected),
        numLoadedModelReplicas=sum(r.numLoadedModels for r in resources),
    )
