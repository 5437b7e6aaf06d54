"""Placement: capability, memory and replica filters, sorters, minReplicas fallback, sticky and pinned."""

from __future__ import annotations

from headrace.engine.scheduler.placement import (
    ModelRequest,
    ReplicaView,
    ServerView,
    place,
    sort_replicas,
)

GiB = 2**30
CAPS = ("headrace", "python", "sklearn", "numpy")


def server(
    name: str = "headrace", replicas: int = 1, caps: tuple[str, ...] = CAPS, **used: int
) -> ServerView:
    views = tuple(ReplicaView(i, GiB, used.get(f"r{i}", 0)) for i in range(replicas))
    return ServerView(name, caps, views)


def test_places_on_first_replica() -> None:
    result = place(ModelRequest("m", ("python",)), [server(replicas=2)])
    assert result.ok and (result.server, result.replicas) == ("headrace", (0,))


def test_missing_capabilities() -> None:
    result = place(ModelRequest("m", ("xgboost",)), [server(), server("other")])
    assert result.error == "no server has capabilities [xgboost]"
    result = place(ModelRequest("m", ("gpu",)), [server(), server("gpu", caps=("gpu",))])
    assert result.server == "gpu"


def test_too_many_replicas_is_a_schedule_failure() -> None:
    result = place(ModelRequest("m", replicas=3), [server(replicas=1)])
    assert not result.ok
    assert result.error == "model needs 3 replicas but server headrace has 1 (capabilities ok)"


def test_min_replicas_fallback() -> None:
    result = place(ModelRequest("m", replicas=3, min_replicas=1), [server(replicas=2)])
    assert result.ok and result.replicas == (0, 1) and "minReplicas 1" in result.reason
    result = place(ModelRequest("m", replicas=3, min_replicas=3), [server(replicas=2)])
    assert not result.ok


def test_memory_filter_and_most_free_first() -> None:
    result = place(ModelRequest("m", memory=GiB // 2), [server(replicas=3, r0=GiB // 4 * 3, r1=GiB // 4)])
    assert result.replicas == (2,)  # r0 lacks room; r2 has the most free
    result = place(ModelRequest("m", memory=GiB // 2, replicas=3), [server(replicas=3, r0=GiB // 4 * 3)])
    assert result.error.startswith(
        "model needs 3 replicas but server headrace has 3 (capabilities ok, 2 with"
    )


def test_sticky_placement_wins_over_free_memory() -> None:
    views = (ReplicaView(0, GiB, 0), ReplicaView(1, GiB, GiB // 2, has_model=True))
    result = place(ModelRequest("m", memory=GiB), [ServerView("headrace", CAPS, views)])
    assert result.replicas == (1,)  # already there: memory check passes, and it sorts first
    ordered = sort_replicas([ReplicaView(0, GiB, 10), ReplicaView(1, GiB, 0), ReplicaView(2, GiB, 5, True)])
    assert [r.index for r in ordered] == [2, 1, 0]


def test_sticky_server_first() -> None:
    other = server("b")
    here = ServerView("c", CAPS, (ReplicaView(0, GiB, 0, has_model=True),))
    assert place(ModelRequest("m"), [other, here]).server == "c"


def test_pinned_server() -> None:
    assert place(ModelRequest("m", server="b"), [server("a"), server("b")]).server == "b"
    assert place(ModelRequest("m", server="zzz"), [server("a")]).error == "server zzz does not exist"
    result = place(ModelRequest("m", ("gpu",), server="b"), [server("a", caps=("gpu",)), server("b")])
    assert result.error == "server b lacks capabilities [gpu]"


def test_mixed_reasons_are_listed_per_server() -> None:
    result = place(ModelRequest("m", ("x", "y")), [server("a", caps=("x",)), server("b", caps=("y",))])
    assert result.error == "server a lacks capabilities [y]; server b lacks capabilities [x]"
    assert place(ModelRequest("m"), []).error == "no servers are configured"
