"""Sharding: which worker owns each unit — (pipeline, partition) or (model-gateway slot, partition).

Consistent hashing with bounded loads. Every worker has ``vnodes`` points on an mmh3 ring. A
resource (a pipeline, or a slot of the model gateway's hash table) walks the ring from its own hash
and takes the first ``k = min(maxShardCountMultiplier, partitions, workers)`` distinct workers that
still have room under the cap ``ceil((1 + epsilon) * average units per worker)``; its partitions are
then shared among those k workers by rendezvous hashing on the *partition* alone, so resources placed
on the same workers put partition p on the same worker (a request's hops then stay in one process).
A last pass moves a resource's share from a crowded worker to an idle one while any worker is idle,
so that as many workers are used as Seldon's formulas say. The result depends only on the inputs:
any scheduler computes the same placement, and a change of workers moves about 1/N of the units.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import mmh3

PIPELINE = "pipeline"
MODEL_GATEWAY = "modelgw"
KINDS = (PIPELINE, MODEL_GATEWAY)


@dataclass(frozen=True, order=True, slots=True)
class Unit:
    """One unit of work: a pipeline's (dataflow and pipeline gateway) or a model-gateway slot's
    share of one partition."""

    kind: str  # PIPELINE | MODEL_GATEWAY
    name: str  # the pipeline, or the slot's index
    partition: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}:{self.partition}"

    @classmethod
    def parse(cls, text: str) -> Unit:
        kind, _, rest = text.partition(":")
        name, _, partition = rest.rpartition(":")
        if kind not in KINDS or not name or not partition.isdigit():
            raise ValueError(f"not a unit: {text!r}")
        return cls(kind, name, int(partition))

    @property
    def resource(self) -> tuple[str, str]:
        return self.kind, self.name


@dataclass(frozen=True, slots=True)
class ShardingConfig:
    partitions: int
    multiplier: int = 0  # maxShardCountMultiplier; 0 = partitions (Seldon's default)
    epsilon: float = 0.25
    max_consumers: int = 100  # MODELGATEWAY_MAX_NUM_CONSUMERS: the model gateway's slots
    vnodes: int = 64

    @property
    def shards(self) -> int:
        """Workers one resource is spread over at most (the multiplier, capped at the partitions)."""
        m = self.multiplier if self.multiplier > 0 else self.partitions
        return max(1, min(m, self.partitions))


def slot_of(model: str, max_consumers: int) -> int:
    """The model gateway's hash slot of a model (models in one slot share its consumer)."""
    return int(mmh3.hash(model, signed=False)) % max_consumers


def _h(text: str) -> int:
    return int(mmh3.hash64(text, signed=False)[0])


def _key(kind: str, name: str) -> str:
    return f"{kind}/{name}"


class Ring:
    """``vnodes`` points per worker on a 64-bit mmh3 ring."""

    def __init__(self, workers: Iterable[str], vnodes: int) -> None:
        points = sorted((_h(f"{w}#{v}"), w) for w in set(workers) for v in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [w for _, w in points]

    def walk(self, key: str) -> Iterator[str]:
        """Distinct workers clockwise from ``key``'s hash."""
        n = len(self._owners)
        if n == 0:
            return
        start = bisect.bisect_right(self._hashes, _h(key))
        seen: set[str] = set()
        for i in range(n):
            worker = self._owners[(start + i) % n]
            if worker not in seen:
                seen.add(worker)
                yield worker


def place(
    workers: Sequence[str],
    resources: Iterable[tuple[str, str]],
    config: ShardingConfig,
    previous: Mapping[Unit, str] | None = None,
) -> dict[Unit, str]:
    """Every unit of every resource ((kind, name) pairs) → its worker. With ``previous`` (the placement
    in force) units stay where they are unless a constraint moves them: a worker gone, the spread
    changed, a worker above the cap or, for a worker that joined, below ``(1 - epsilon)`` of the
    average. Without it, the placement is the ring's."""
    pool = sorted(set(workers))
    todo = sorted(set(resources), key=lambda r: (_h(_key(*r)), r))
    if not pool or not todo:
        return {}
    parts = config.partitions
    k = min(config.shards, len(pool))
    share = -(-parts // k)  # the most units one member of a resource gets
    cap = load_cap(config, len(pool), len(todo))
    average = len(todo) * parts / len(pool)
    floor = min(math.floor((1 - config.epsilon) * average + 1e-9), cap - share)
    alive = set(pool)
    before: dict[tuple[str, str], dict[int, str]] = {}
    for unit, worker in (previous or {}).items():
        if worker in alive and 0 <= unit.partition < parts:
            before.setdefault(unit.resource, {})[unit.partition] = worker
    ring = Ring(pool, config.vnodes)
    load = dict.fromkeys(pool, 0)
    out: dict[Unit, str] = {}
    for kind, name in todo:
        held = before.get((kind, name), {})
        members = _members(ring, _key(kind, name), k, load, share, cap, held)
        for partition, worker in _split(members, parts, load, held).items():
            out[Unit(kind, name, partition)] = worker
            load[worker] += 1
    _rebalance(out, load, cap, floor)
    return out


def load_cap(config: ShardingConfig, workers: int, resources: int) -> int:
    """The most units any worker gets: ``ceil((1 + epsilon) * average)``, unless shares (a resource's
    units on one worker, never split) are too coarse for that; then the least that shares allow
    (e.g. with multiplier 1 a share is all of a resource's partitions, and two shares on one worker
    may be unavoidable)."""
    k = min(config.shards, workers)
    q, extra = divmod(config.partitions, k)
    average = resources * config.partitions / workers
    coarse = q * -(-resources * k // workers) + -(-resources * extra // workers)
    return max(math.ceil((1 + config.epsilon) * average - 1e-9), coarse)


def _members(
    ring: Ring,
    key: str,
    k: int,
    load: Mapping[str, int],
    share: int,
    cap: int,
    held: Mapping[int, str],
) -> list[str]:
    """k workers for one resource: those already holding most of it, then the first distinct workers
    clockwise with room for a share; when too few have room, the least loaded of the others."""
    counts: dict[str, int] = {}
    for worker in held.values():
        counts[worker] = counts.get(worker, 0) + 1
    chosen = sorted(counts, key=lambda w: (-counts[w], load[w], w))[:k]
    if len(chosen) == k:
        return chosen
    rest: list[str] = []
    for worker in ring.walk(key):
        if worker in chosen:
            continue
        if load[worker] + share <= cap:
            chosen.append(worker)
            if len(chosen) == k:
                return chosen
        else:
            rest.append(worker)
    order = {w: i for i, w in enumerate(rest)}
    rest.sort(key=lambda w: (load[w], order[w]))
    return chosen + rest[: k - len(chosen)]


def _split(
    members: list[str], parts: int, load: Mapping[str, int], held: Mapping[int, str]
) -> dict[int, str]:
    """Partitions over members, each getting ``parts // k`` or one more (those holding more already,
    then the least loaded). The canonical split of these members is a stable matching on rendezvous
    scores of (partition, worker), strongest pairs first; no rule looks at the resource, so resources
    on the same members split their partitions the same way (a request's hops stay in one process).
    A partition stays with its member while the quota allows — those the canonical split gives that
    member first — and the free ones go where the canonical split puts them when there is room: a
    change of members moves little more than the share that changed hands, and what moves heads back
    to the canonical split (resources drawn apart, e.g. by a multiplier of 1, line up again)."""
    q, extra = divmod(parts, len(members))
    counts = {w: 0 for w in members}
    for worker in held.values():
        if worker in counts:
            counts[worker] += 1
    plus = set(sorted(members, key=lambda w: (-min(counts[w], q + 1), load[w], w))[:extra])
    quotas = {w: q + (1 if w in plus else 0) for w in members}
    canon = _match(list(range(parts)), members, dict(quotas))
    quota = dict(quotas)
    out: dict[int, str] = {}
    kept: dict[str, list[int]] = {w: [] for w in members}
    for partition, worker in held.items():
        if worker in kept:
            kept[worker].append(partition)
    for worker, mine in kept.items():
        mine.sort(key=lambda p: (canon[p] != worker, -_h(f"{p}@{worker}"), p))
        for partition in mine[: quota[worker]]:
            out[partition] = worker
        quota[worker] -= min(len(mine), quota[worker])
    free = [p for p in range(parts) if p not in out]
    for partition in free:
        worker = canon[partition]
        if quota[worker] > 0:
            quota[worker] -= 1
            out[partition] = worker
    out.update(_match([p for p in free if p not in out], members, quota))
    return out


def _match(partitions: list[int], members: list[str], quota: dict[str, int]) -> dict[int, str]:
    """A stable matching of partitions to members with these quotas: strongest (partition, worker)
    rendezvous pairs first."""
    pairs = sorted(((_h(f"{p}@{w}"), p, w) for p in partitions for w in members), reverse=True)
    out: dict[int, str] = {}
    for _, partition, worker in pairs:
        if partition not in out and quota[worker] > 0:
            quota[worker] -= 1
            out[partition] = worker
    return out


def _rebalance(out: dict[Unit, str], load: dict[str, int], cap: int, floor: int) -> None:
    """Move whole shares (all of one resource's units on a worker, so its spread stays the same) off
    workers above the cap, onto workers below the floor (one that just joined), and onto idle
    workers while any other holds more than one share: as many workers are used as units allow."""
    held: dict[str, dict[tuple[str, str], list[Unit]]] = {w: {} for w in load}
    members: dict[tuple[str, str], set[str]] = {}
    for unit, worker in out.items():
        held[worker].setdefault(unit.resource, []).append(unit)
        members.setdefault(unit.resource, set()).add(worker)
    while (move := _next_move(held, members, load, cap, floor)) is not None:
        resource, donor, target = move
        units = held[donor].pop(resource)
        held[target][resource] = units
        members[resource].discard(donor)
        members[resource].add(target)
        for unit in units:
            out[unit] = target
        load[donor] -= len(units)
        load[target] += len(units)


def _next_move(
    held: Mapping[str, Mapping[tuple[str, str], list[Unit]]],
    members: Mapping[tuple[str, str], set[str]],
    load: Mapping[str, int],
    cap: int,
    floor: int,
) -> tuple[tuple[str, str], str, str] | None:
    """(resource, from, to) of the next share to move, or None when every bound holds."""
    by_load = sorted(load, key=lambda w: (load[w], w))

    def shares(worker: str) -> list[tuple[tuple[str, str], int]]:
        return sorted(((r, len(u)) for r, u in held[worker].items()), key=lambda s: (s[1], s[0]))

    for donor in reversed(by_load):  # the most loaded sheds a share to the least loaded taking it
        if load[donor] <= cap:
            break
        for target in by_load:
            for resource, n in shares(donor):
                if target not in members[resource] and load[target] + n <= cap:
                    return resource, donor, target
    for target in by_load:  # a worker below the floor, or idle, takes a share from the most loaded
        if load[target] >= max(floor, 1):
            break
        for donor in reversed(by_load):
            if load[donor] <= load[target] + 1:
                break
            for resource, n in shares(donor):
                if (
                    target not in members[resource]
                    and load[target] + n <= cap
                    and load[donor] - n >= max(load[target] + n, 1)
                ):
                    return resource, donor, target
    return None


def workers_used(placement: Mapping[Unit, str], kind: str) -> int:
    """How many distinct workers hold units of this kind."""
    return len({w for u, w in placement.items() if u.kind == kind})


# Seldon's formulas for the replicas each role uses (the seeds' scalability tables).
def dataflow_replicas(replicas: int, pipelines: int, shards: int) -> int:
    return min(replicas, pipelines * shards)


def model_gateway_replicas(replicas: int, models: int, max_consumers: int, shards: int) -> int:
    return min(replicas, min(models, max_consumers) * shards)


def pipeline_gateway_replicas(replicas: int, pipelines: int, max_consumers: int, shards: int) -> int:
    return min(replicas, min(pipelines, max_consumers) * shards)
