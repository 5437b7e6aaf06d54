"""Public control-API status shapes (JSON, camelCase like Seldon's CRD status)."""

from __future__ import annotations

import msgspec

# Model states, as Seldon names them.
PROGRESSING = "ModelProgressing"
AVAILABLE = "ModelAvailable"
FAILED = "ModelFailed"
SCHEDULE_FAILED = "ScheduleFailed"
TERMINATING = "ModelTerminating"
TERMINATED = "ModelTerminated"
MODEL_READY = "ModelReady"


class Condition(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    type: str
    status: str  # "True" | "False"
    reason: str = ""
    message: str = ""


class ReplicaPlacement(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    server: str  # "inline" for an inline model's worker
    index: int
    state: str  # LoadRequested | Loading | Loaded | LoadFailed
    message: str = ""


class ModelStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    state: str
    reason: str = ""
    generation: int = 0
    replicas: int = 0
    available_replicas: int = 0
    server: str = ""
    inline: bool = False
    runtime: str = ""
    storage_uri: str = ""
    memory: int = 0
    requirements: list[str] = []
    conditions: list[Condition] = []
    placement: list[ReplicaPlacement] = []
    updated_at: float = 0.0

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class ReplicaModel(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    generation: int
    state: str
    message: str = ""


class ReplicaStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    index: int
    socket: str
    connected: bool = False
    pid: int = 0
    started_at: float = 0.0
    last_report_age_s: float | None = None
    desired_version: int = 0
    acked_version: int = 0
    models: list[ReplicaModel] = []
    memory_used: int = 0
    memory_capacity: int = 0


class ServerStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    server_config: str
    replicas: int
    capabilities: list[str] = []
    loaded_models: int = 0
    replica_status: list[ReplicaStatus] = []


# Pipeline states and conditions, as Seldon names them.
PIPELINE_CREATING = "PipelineCreating"
PIPELINE_READY = "PipelineReady"
PIPELINE_FAILED = "PipelineFailed"
PIPELINE_TERMINATING = "PipelineTerminating"
PIPELINE_TERMINATED = "PipelineTerminated"
MODELS_READY = "ModelsReady"
PIPELINE_GW_READY = "PipelineGwReady"
READY = "Ready"


class PipelineTopic(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    exists: bool = False


class PipelineWorker(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What one worker (dataflow engine and pipeline gateway at once) says about the pipeline."""

    index: int
    version: int = 0  # the version it runs, 0 for none
    error: str = ""


class PipelineStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    state: str
    reason: str = ""
    version: int = 0
    steps: list[str] = []
    input_topic: str = ""
    output_topic: str = ""
    topics: list[PipelineTopic] = []  # every topic it reads or writes
    timeout_s: float = 0.0
    conditions: list[Condition] = []
    workers: list[PipelineWorker] = []
    updated_at: float = 0.0

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)
