"""Control-plane wire types shared by the scheduler, workers and model servers (JSON via msgspec).

Desired state flows down by long-poll (``after`` = last version seen); status flows up by report.
"""

from __future__ import annotations

import msgspec


class TensorSpec(msgspec.Struct, frozen=True):
    name: str
    datatype: str
    shape: list[int]


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a server (or an inline worker) needs to load one model."""

    name: str
    uri: str  # resolved local folder
    runtime: str  # "python" | "sklearn"
    version: str = "1"
    generation: int = 1  # bumped on every (re)load of the same name
    memory: int = 0
    parameters: dict[str, str] = {}
    inline: bool = False


class ReplicaAddr(msgspec.Struct, frozen=True):
    server: str
    index: int
    socket: str  # unix socket path of that server replica
    instance: str = ""  # the instance it runs on (workers call only their own instance's replicas)


class ModelRoute(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str = "1"
    generation: int = 1
    ready: bool = False
    # the scheduler's model state (Seldon names) and its reason, so a worker can tell a model that
    # is still coming up (wait for it) from one that cannot serve (answer at once)
    state: str = ""
    message: str = ""
    inline: bool = False
    spec: ModelSpec | None = None  # set for inline models: workers load them in-process
    gateway_workers: int = 0  # this model's model-gateway concurrency; 0: the global setting
    replicas: list[ReplicaAddr] = []
    platform: str = ""
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []


class PipelineRoute(msgspec.Struct, frozen=True, kw_only=True):
    """A pipeline as workers run it: they compile the manifest themselves (engine.dataflow)."""

    name: str
    version: int  # bumped whenever the manifest changes
    manifest: str  # the Seldon Pipeline YAML document
    timeout_s: float = 60.0  # a synchronous call not answered by then gets an error
    # the scheduler's view: topics exist and every step's model is ready
    ready: bool = False
    state: str = ""
    message: str = ""


class UnitRoute(msgspec.Struct, frozen=True, kw_only=True):
    """Who owns one unit (``engine.sharding.Unit`` as text): ``owner`` takes it once no other worker
    in ``waiting`` still holds it (they drain and release it first)."""

    owner: str  # worker id "<instance>/<index>"
    waiting: list[str] = []
    active: bool = False  # the owner reported it holds the unit and serves it
    # it is about to move (its owner is still the worker serving it): new calls go elsewhere first,
    # so that the ones in flight on its partition finish before the handover starts
    soon: bool = False
    # from its last owner's handover: where each of its partitions starts (the fence), and records it
    # left waiting in joins, which the owner handles again first; (topic, partition, offset) each
    starts: list[tuple[str, int, int]] = []
    replay: list[tuple[str, int, int]] = []
    generation: int = 0  # of the handover these come from (see Handover)


class Handover(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker that released a unit tells its next owner (through the scheduler)."""

    starts: list[tuple[str, int, int]] = []
    replay: list[tuple[str, int, int]] = []
    # one more than the handover its holder started from: of two handovers of one unit not yet
    # taken up, the later one's records to handle again are the ones left (it handled the others)
    generation: int = 0


class WorkerAddr(msgspec.Struct, frozen=True, kw_only=True):
    """Where a worker takes requests forwarded by other workers: a unix socket (same instance) and
    host:port (other instances)."""

    instance: str
    unix: str = ""
    tcp: str = ""
    leaving: bool = False  # set by the scheduler once it has heard that the worker is leaving


class ShardingInfo(msgspec.Struct, frozen=True, kw_only=True):
    partitions: int = 0
    shards: int = 0  # maxShardCountMultiplier in force (capped at the partitions)
    max_consumers: int = 100  # the model gateway's hash slots


class RoutingTable(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 0
    models: dict[str, ModelRoute] = {}
    pipelines: dict[str, PipelineRoute] = {}
    # sharding: every unit's owner, and where each worker can be reached
    units: dict[str, UnitRoute] = {}
    workers: dict[str, WorkerAddr] = {}
    sharding: ShardingInfo = ShardingInfo()


class ServerDesired(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 0
    models: list[ModelSpec] = []


class LoadedModel(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    generation: int
    state: str  # "Loaded" | "LoadFailed" | "Loading"
    message: str = ""
    platform: str = ""
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []


class ServerReport(msgspec.Struct, frozen=True, kw_only=True):
    server: str
    index: int
    pid: int
    started_at: float  # identifies an incarnation: a restarted replica reports a new value
    desired_version: int
    models: list[LoadedModel] = []
    # a replica of another instance (joined to this scheduler): its instance and unix socket there
    instance: str = ""
    socket: str = ""


class WorkerReport(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    pid: int
    routes_version: int
    instance: str = ""  # the instance the worker belongs to ("" = the scheduler's own)
    # units this worker holds: unit -> "active" | "draining" (releasing it to its new owner)
    held: dict[str, str] = {}
    leaving: bool = False  # stopping: its units go to other workers first
    forward: WorkerAddr | None = None
    # units it handed over, until their next owner serves them
    released: dict[str, Handover] = {}
    inline: list[LoadedModel] = []
    # pipeline name -> version this worker runs (its consumer holds the pipeline's topics)
    pipelines: dict[str, int] = {}
    # pipeline name -> why this worker could not run it
    pipeline_errors: dict[str, str] = {}
