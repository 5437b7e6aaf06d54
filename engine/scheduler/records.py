"""The scheduler's in-memory records: servers and their replicas, workers, models (with their specs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from headrace.config.errors import ConfigError
from headrace.config.manifests import ModelManifest, ServerManifest, detect_runtime
from headrace.gateway.control import Handover, LoadedModel, ModelSpec, ServerDesired, WorkerAddr

LOADED = "Loaded"
LOAD_FAILED = "LoadFailed"


@dataclass
class Replica:
    server: str
    index: int
    socket: str
    capacity: int
    pid: int = 0
    started_at: float = 0.0
    last_seen: float | None = None  # monotonic
    acked_version: int = 0
    loaded: dict[str, LoadedModel] = field(default_factory=dict)
    desired: ServerDesired = field(default_factory=ServerDesired)


@dataclass
class Server:
    manifest: ServerManifest
    replicas: list[Replica]


@dataclass
class Worker:
    id: str  # "<instance>/<index>"
    instance: str
    index: int
    pid: int = 0
    last_seen: float = 0.0
    routes_version: int = 0
    inline: dict[str, LoadedModel] = field(default_factory=dict)
    pipelines: dict[str, int] = field(default_factory=dict)  # name -> version it runs
    pipeline_errors: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # unit -> "active" | "draining"
    leaving: bool = False
    forward: WorkerAddr | None = None
    released: dict[str, Handover] = field(default_factory=dict)


@dataclass
class Model:
    manifest: ModelManifest
    generation: int
    updated_at: float
    spec: ModelSpec | None = None
    error: str = ""  # the model folder cannot be used
    server: str = ""
    replicas: tuple[int, ...] = ()
    schedule_error: str = ""
    schedule_reason: str = ""
    terminating: bool = False
    # the routing table version from which the model is routable at this generation (0: not routable);
    # ModelReady waits until every live worker has taken a table at least this new
    routable_since: int = 0
    routable_generation: int = -1

    @property
    def name(self) -> str:
        return self.manifest.name


def make_spec(manifest: ModelManifest, generation: int) -> tuple[ModelSpec | None, str]:
    try:
        runtime = detect_runtime(manifest)
    except ConfigError as exc:
        return None, exc.message
    spec = ModelSpec(
        name=manifest.name,
        uri=manifest.path,
        runtime=runtime,
        generation=generation,
        memory=manifest.memory,
        parameters=dict(manifest.parameters),
        inline=manifest.inline,
    )
    return spec, ""


def placed_replicas(model: Model, servers: dict[str, Server]) -> list[Replica]:
    server = servers.get(model.server)
    if server is None:
        return []
    return [server.replicas[i] for i in model.replicas if i < len(server.replicas)]


def is_placed(model: Model) -> bool:
    """Whether the model belongs on server replicas (not inline, usable, not being unloaded)."""
    return not model.terminating and model.spec is not None and not model.spec.inline
