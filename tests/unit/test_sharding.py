"""Sharding: bounded loads, spread, movement on join/leave, partition affinity, Seldon's replica formulas."""

from __future__ import annotations

import collections
import math
import random

import pytest

from headrace.engine.sharding import (
    MODEL_GATEWAY,
    PIPELINE,
    ShardingConfig,
    Unit,
    dataflow_replicas,
    load_cap,
    model_gateway_replicas,
    pipeline_gateway_replicas,
    place,
    slot_of,
    workers_used,
)


def workers(n: int, instance: str = "i") -> list[str]:
    return [f"{instance}/{i}" for i in range(n)]


def pipelines(n: int) -> list[tuple[str, str]]:
    return [(PIPELINE, f"pipeline-{i}") for i in range(n)]


def loads(placement: dict[Unit, str], pool: list[str]) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter(dict.fromkeys(pool, 0))
    counts.update(placement.values())
    return counts


def spread(placement: dict[Unit, str]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for unit, worker in placement.items():
        out[unit.resource].add(worker)
    return out


def moved(a: dict[Unit, str], b: dict[Unit, str]) -> int:
    return sum(1 for unit, worker in a.items() if b.get(unit) != worker)


# --- the seeds' tables: the workers a placement really uses are the formulas' replicas ------------


@pytest.mark.parametrize("partitions", [4, 8])
@pytest.mark.parametrize(
    ("deployed", "multiplier", "replicas", "expected"), [(3, 4, 9, 9), (2, 4, 9, 8), (1, 4, 9, 4)]
)
def test_dataflow_replicas_used(
    deployed: int, multiplier: int, replicas: int, expected: int, partitions: int
) -> None:
    config = ShardingConfig(partitions=partitions, multiplier=multiplier)
    assert dataflow_replicas(replicas, deployed, config.shards) == expected
    placement = place(workers(replicas), pipelines(deployed), config)
    assert workers_used(placement, PIPELINE) == expected
    assert all(len(s) == multiplier for s in spread(placement).values())


@pytest.mark.parametrize(
    ("deployed", "multiplier", "replicas", "consumers", "expected"), [(5, 4, 20, 100, 20), (1, 4, 20, 100, 4)]
)
def test_model_gateway_replicas_used(
    deployed: int, multiplier: int, replicas: int, consumers: int, expected: int
) -> None:
    config = ShardingConfig(partitions=4, multiplier=multiplier, max_consumers=consumers)
    models = [f"model-{i}" for i in range(deployed)]
    slots = {slot_of(m, consumers) for m in models}
    assert len(slots) == deployed  # these names land in distinct slots (others may share one)
    assert model_gateway_replicas(replicas, deployed, consumers, config.shards) == expected
    placement = place(workers(replicas), [(MODEL_GATEWAY, str(s)) for s in slots], config)
    assert workers_used(placement, MODEL_GATEWAY) == expected


@pytest.mark.parametrize(
    ("deployed", "multiplier", "replicas", "consumers", "expected"),
    [(8, 4, 10, 100, 10), (2, 4, 10, 100, 8), (1, 4, 10, 100, 4)],
)
def test_pipeline_gateway_replicas_used(
    deployed: int, multiplier: int, replicas: int, consumers: int, expected: int
) -> None:
    config = ShardingConfig(partitions=4, multiplier=multiplier, max_consumers=consumers)
    assert pipeline_gateway_replicas(replicas, deployed, consumers, config.shards) == expected
    assert workers_used(place(workers(replicas), pipelines(deployed), config), PIPELINE) == expected


def test_formulas_cap_at_max_consumers_and_multiplier_at_partitions() -> None:
    assert model_gateway_replicas(1000, 500, 100, 4) == 400
    assert pipeline_gateway_replicas(50, 500, 100, 4) == 50
    assert ShardingConfig(partitions=8, multiplier=32).shards == 8  # never above the partitions
    assert ShardingConfig(partitions=8).shards == 8  # default: the partitions


def test_models_in_one_slot_share_its_units() -> None:
    consumers = 3
    names = [f"m{i}" for i in range(40)]
    by_slot = collections.defaultdict(list)
    for name in names:
        by_slot[slot_of(name, consumers)].append(name)
    assert len(by_slot) == 3  # 40 models, 3 slots: each slot's models move together
    config = ShardingConfig(partitions=8, max_consumers=consumers)
    placement = place(workers(5), [(MODEL_GATEWAY, str(s)) for s in by_slot], config)
    assert len(placement) == 3 * 8


# --- bounded loads ---------------------------------------------------------------------------------


def test_no_worker_above_ceil_1_plus_epsilon_times_the_average_over_many_random_clusters() -> None:
    rng = random.Random(7)
    for _ in range(150):
        pool = workers(rng.randint(1, 48), instance=f"host{rng.randint(0, 3)}")
        partitions = rng.choice([4, 8, 16])
        resources = pipelines(rng.randint(2 * len(pool), 6 * len(pool)))  # Seldon's default spread
        config = ShardingConfig(partitions=partitions, epsilon=rng.choice([0.1, 0.25, 0.5]))
        placement = place(pool, resources, config)
        average = len(placement) / len(pool)
        assert len(placement) == len(resources) * partitions
        assert max(loads(placement, pool).values()) <= math.ceil((1 + config.epsilon) * average)


def test_any_multiplier_keeps_the_spread_and_the_cap() -> None:
    rng = random.Random(11)
    for _ in range(200):
        pool = workers(rng.randint(1, 40))
        partitions = rng.choice([4, 8, 16])
        config = ShardingConfig(partitions=partitions, multiplier=rng.randint(1, partitions))
        resources = pipelines(rng.randint(1, 120))
        placement = place(pool, resources, config)
        assert len(placement) == len(resources) * partitions
        assert max(loads(placement, pool).values()) <= load_cap(config, len(pool), len(resources))
        k = min(config.shards, len(pool))
        assert all(len(s) == k for s in spread(placement).values())


def test_the_same_inputs_give_the_same_placement() -> None:
    config = ShardingConfig(partitions=8, multiplier=3)
    a = place(workers(7), pipelines(30), config)
    b = place(list(reversed(workers(7))), list(reversed(pipelines(30))), config)
    assert a == b


# --- movement ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("partitions", "multiplier"), [(8, 8), (16, 16), (16, 4), (8, 2)])
def test_a_worker_joining_or_leaving_moves_about_one_nth_of_the_units(
    partitions: int, multiplier: int
) -> None:
    rng = random.Random(partitions * 100 + multiplier)
    join, leave = [], []
    for _ in range(20):
        pool = workers(rng.randint(4, 40))
        resources = pipelines(rng.randint(3 * len(pool), 8 * len(pool)))
        config = ShardingConfig(partitions=partitions, multiplier=multiplier)
        before = place(pool, resources, config)
        grown = place([*pool, "i/new"], resources, config, previous=before)
        shrunk = place(pool[1:], resources, config, previous=before)
        join.append(moved(before, grown) / len(before) * (len(pool) + 1))  # 1.0 = the ideal 1/N
        leave.append(moved(before, shrunk) / len(before) * len(pool))
        # the new worker takes a fair share
        assert loads(grown, [*pool, "i/new"])["i/new"] >= 0.6 * len(grown) / (len(pool) + 1)
    assert sum(join) / len(join) <= 1.1 and max(join) <= 1.5
    assert sum(leave) / len(leave) <= 1.25 and max(leave) <= 2.0


def test_loading_a_pipeline_moves_nothing_else() -> None:
    config = ShardingConfig(partitions=8)
    pool = workers(6)
    before = place(pool, pipelines(20), config)
    after = place(pool, [*pipelines(20), (PIPELINE, "new")], config, previous=before)
    assert moved(before, after) == 0
    assert {u for u in after if u.name == "new"} == {Unit(PIPELINE, "new", p) for p in range(8)}


def test_a_lower_multiplier_keeps_the_workers_holding_most() -> None:
    pool = workers(8)
    before = place(pool, pipelines(10), ShardingConfig(partitions=8, multiplier=8))
    after = place(pool, pipelines(10), ShardingConfig(partitions=8, multiplier=2), previous=before)
    assert all(len(s) == 2 for s in spread(after).values())
    for resource, members in spread(after).items():
        assert members <= spread(before)[resource]  # shrinks to workers it was on


# --- partition affinity: a request's hops stay in one worker --------------------------------------


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_on_one_host_every_unit_of_a_partition_is_on_one_worker(count: int) -> None:
    config = ShardingConfig(partitions=8)
    resources = pipelines(12) + [(MODEL_GATEWAY, str(s)) for s in range(6)]
    placement = place(workers(count, "host"), resources, config)
    owners: dict[int, set[str]] = collections.defaultdict(set)
    for unit, worker in placement.items():
        owners[unit.partition].add(worker)
    assert all(len(o) == 1 for o in owners.values())
    assert set(loads(placement, workers(count, "host")).values()) == {len(resources) * 8 // count}


def test_affinity_survives_a_worker_joining_the_host() -> None:
    config = ShardingConfig(partitions=8)
    resources = pipelines(12) + [(MODEL_GATEWAY, str(s)) for s in range(6)]
    two = place(workers(2, "host"), resources, config)
    four = place(
        workers(4, "host"), resources, config, previous=place(workers(3, "host"), resources, config, two)
    )
    owners: dict[int, set[str]] = collections.defaultdict(set)
    for unit, worker in four.items():
        owners[unit.partition].add(worker)
    assert sum(len(o) == 1 for o in owners.values()) >= 6  # most partitions still on one worker


def test_unit_names_round_trip() -> None:
    unit = Unit(PIPELINE, "my.pipe:v2", 7)
    assert Unit.parse(str(unit)) == unit
    with pytest.raises(ValueError):
        Unit.parse("nonsense")
