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
MODEL_GW = "ModelGw"  # the model gateway serves the model's topics (all its slot's partitions)


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
PIPELINE_REBALANCING = "PipelineRebalancing"
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
    worker: str = ""  # "<instance>/<index>"
    version: int = 0  # the version it runs, 0 for none
    error: str = ""
    partitions: list[int] = []  # the pipeline's partitions sharding gives this worker
    active: list[int] = []  # those it holds and serves
    draining: list[int] = []  # those it is handing over to their new owner


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
    workers_used: int = 0  # distinct workers the pipeline's units are placed on
    # the cluster's replicas by Seldon's formulas (dataflow, pipeline gateway), for comparison
    dataflow_replicas: int = 0
    pipeline_gateway_replicas: int = 0
    updated_at: float = 0.0

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class RoleReplicas(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One role's replica count: Seldon's formula, and the workers the placement really uses."""

    formula: int
    used: int


class ShardWorker(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    worker: str
    instance: str
    index: int
    units: int  # units placed on it
    active: int  # units it reports it serves
    draining: int
    leaving: bool = False


class ShardingStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    partitions: int
    max_shard_count_multiplier: int  # as configured (0: the partitions)
    shards: int  # workers one pipeline or model slot is spread over at most
    epsilon: float
    max_num_consumers: int
    load_cap: int  # no worker holds more units than this
    units: int
    moving: int  # units still held by a worker other than their target
    moves: int  # units whose target changed since the scheduler started
    pipelines: int
    models: int
    dataflow: RoleReplicas
    model_gateway: RoleReplicas
    pipeline_gateway: RoleReplicas
    workers: list[ShardWorker] = []
