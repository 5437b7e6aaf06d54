"""Model placement as in Seldon's scheduler: named server/replica filters and sorters pick N replicas."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRequest:
    """What placement needs to know about one model."""

    name: str
    requirements: tuple[str, ...] = ()
    memory: int = 0
    replicas: int = 1
    min_replicas: int = 0
    server: str = ""  # pinned server name, or "" for any


@dataclass(frozen=True)
class ReplicaView:
    """One server replica as placement sees it; ``used`` excludes the model being placed."""

    index: int
    capacity: int
    used: int = 0
    has_model: bool = False  # the model is already placed (or loaded) here

    @property
    def free(self) -> int:
        return self.capacity - self.used


@dataclass(frozen=True)
class ServerView:
    name: str
    capabilities: tuple[str, ...]
    replicas: tuple[ReplicaView, ...]

    @property
    def has_model(self) -> bool:
        return any(r.has_model for r in self.replicas)


@dataclass(frozen=True)
class ServerFilter:
    name: str
    description: str
    accept: Callable[[ModelRequest, ServerView], bool]
    explain: Callable[[ModelRequest, ServerView], str]


@dataclass(frozen=True)
class ReplicaFilter:
    name: str
    description: str
    accept: Callable[[ModelRequest, ReplicaView], bool]


@dataclass(frozen=True)
class Sorter:
    """A sort key; sorters apply stably in order, so the last one listed is the primary key (as Seldon)."""

    name: str
    description: str
    key: Callable[[ReplicaView], tuple[int, ...]]


@dataclass(frozen=True)
class Placement:
    server: str = ""
    replicas: tuple[int, ...] = ()
    error: str = ""  # set when scheduling failed
    reason: str = ""  # e.g. the minReplicas fallback

    @property
    def ok(self) -> bool:
        return not self.error


def _missing(model: ModelRequest, server: ServerView) -> list[str]:
    return [r for r in model.requirements if r not in server.capabilities]


PINNED_SERVER = ServerFilter(
    "pinned-server",
    "a model with spec.server only goes to the server of that name",
    lambda m, s: not m.server or m.server == s.name,
    lambda m, s: f"model is pinned to server {m.server}, not {s.name}",
)
CAPABILITIES = ServerFilter(
    "capabilities",
    "every model requirement is among the server's capabilities",
    lambda m, s: not _missing(m, s),
    lambda m, s: f"server {s.name} lacks capabilities [{', '.join(_missing(m, s))}]",
)
HAS_REPLICAS = ServerFilter(
    "has-replicas",
    "the server has at least one replica",
    lambda m, s: len(s.replicas) > 0,
    lambda m, s: f"server {s.name} has no replicas",
)
MEMORY = ReplicaFilter(
    "memory",
    "free memory (capacity - models placed there) covers the model, or the model is already there",
    lambda m, r: r.has_model or r.free >= m.memory,
)
BY_INDEX = Sorter("index", "lower replica index first", lambda r: (r.index,))
BY_FREE_MEMORY = Sorter("free-memory", "most free memory first", lambda r: (-r.free,))
BY_ALREADY_PLACED = Sorter(
    "already-placed", "replicas that already hold the model first", lambda r: (not r.has_model,)
)

SERVER_FILTERS: tuple[ServerFilter, ...] = (PINNED_SERVER, HAS_REPLICAS, CAPABILITIES)
REPLICA_FILTERS: tuple[ReplicaFilter, ...] = (MEMORY,)
REPLICA_SORTERS: tuple[Sorter, ...] = (BY_INDEX, BY_FREE_MEMORY, BY_ALREADY_PLACED)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n}B"


def sort_replicas(
    replicas: Sequence[ReplicaView], sorters: Sequence[Sorter] = REPLICA_SORTERS
) -> list[ReplicaView]:
    ordered = list(replicas)
    for sorter in sorters:
        ordered.sort(key=sorter.key)
    return ordered


def _no_server(model: ModelRequest, servers: Sequence[ServerView], filters: Sequence[ServerFilter]) -> str:
    considered = [s for s in servers if PINNED_SERVER.accept(model, s)]
    if model.server and not considered:
        return f"server {model.server} does not exist"
    missing = {tuple(_missing(model, s)) for s in considered}
    if len(missing) == 1 and () not in missing:
        wanted = ", ".join(missing.pop())
        if model.server:
            return f"server {model.server} lacks capabilities [{wanted}]"
        return f"no server has capabilities [{wanted}]"
    reasons = []
    for server in considered:
        failed = next((f for f in filters if not f.accept(model, server)), None)
        if failed is not None:
            reasons.append(failed.explain(model, server))
    return "; ".join(reasons) or "no servers are configured"


def _too_few(model: ModelRequest, server: ServerView, candidates: int) -> str:
    detail = "capabilities ok"
    if candidates < len(server.replicas):
        detail += f", {candidates} with {_size(model.memory)} free memory"
    return (
        f"model needs {_plural(model.replicas, 'replica')} but server {server.name} "
        f"has {len(server.replicas)} ({detail})"
    )


def place(
    model: ModelRequest,
    servers: Sequence[ServerView],
    server_filters: Sequence[ServerFilter] = SERVER_FILTERS,
    replica_filters: Sequence[ReplicaFilter] = REPLICA_FILTERS,
    sorters: Sequence[Sorter] = REPLICA_SORTERS,
) -> Placement:
    """Seldon's algorithm: per server (where the model already is first) take the first N candidate
    replicas; else fall back to minReplicas; else ScheduleFailed with a message saying why."""
    eligible = [s for s in servers if all(f.accept(model, s) for f in server_filters)]
    if not eligible:
        return Placement(error=_no_server(model, servers, server_filters))
    eligible.sort(key=lambda s: not s.has_model)
    failures: list[str] = []
    for server in eligible:
        candidates = sort_replicas(
            [r for r in server.replicas if all(f.accept(model, r) for f in replica_filters)], sorters
        )
        if len(candidates) >= model.replicas:
            chosen = candidates[: model.replicas]
            return Placement(server.name, tuple(sorted(r.index for r in chosen)))
        if model.min_replicas > 0 and len(candidates) >= model.min_replicas:
            chosen = candidates[: min(len(candidates), model.replicas)]
            return Placement(
                server.name,
                tuple(sorted(r.index for r in chosen)),
                reason=f"placed on {len(chosen)} of {model.replicas} replicas "
                f"(minReplicas {model.min_replicas})",
            )
        failures.append(_too_few(model, server, len(candidates)))
    return Placement(error="; ".join(failures))
