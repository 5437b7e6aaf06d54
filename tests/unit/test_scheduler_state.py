"""Scheduler state: load, desired, reports, status and routes; reload, unload, restarts, inline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from headrace.config.errors import ErrorKind, HeadraceError, NotFoundError
from headrace.config.manifests import ModelManifest, ServerManifest, parse_manifests
from headrace.engine.scheduler import state as state_mod
from headrace.engine.scheduler import views as views_mod
from headrace.engine.scheduler.state import SchedulerState
from headrace.engine.scheduler.store import Store
from headrace.gateway.control import LoadedModel, ServerReport, TensorSpec, WorkerAddr, WorkerReport

MiB = 2**20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for name in ("echo", "other"):
        (tmp_path / "repo" / name).mkdir(parents=True)
        (tmp_path / "repo" / name / "model.py").write_text("")
    return tmp_path / "repo"


def manifest(repo: Path, name: str = "echo", extra: str = "", folder: str = "echo") -> ModelManifest:
    text = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\n"
        f"metadata:\n  name: {name}\nspec:\n  storageUri: {repo / folder}\n{extra}"
    )
    [m] = parse_manifests(text)
    assert isinstance(m, ModelManifest)
    return m


def make_state(tmp_path: Path, replicas: int = 2, clock: Callable[[], float] | None = None) -> SchedulerState:
    servers = [ServerManifest(name="headrace", replicas=replicas)]
    store = Store(tmp_path / "data" / "scheduler.db")
    return SchedulerState(servers, store, lambda s, i: f"/run/{s}-{i}.sock", 100 * MiB, clock or Clock())


def report(
    state: SchedulerState, index: int, *models: tuple[str, int, str], started: float = 1.0, pid: int = 10
) -> None:
    loaded = [
        LoadedModel(
            name=n,
            generation=g,
            state=s,
            platform="python",
            inputs=[TensorSpec("x", "FP32", [-1])],
            outputs=[],
        )
        for n, g, s in models
    ]
    desired = state.desired("headrace", index).version
    state.report_server(
        ServerReport(
            server="headrace",
            index=index,
            pid=pid,
            started_at=started,
            desired_version=desired,
            models=loaded,
        )
    )


def test_load_report_available_and_route(tmp_path: Path, repo: Path) -> None:
    state = make_state(tmp_path)
    v0 = state.routes().version
    [status] = state.load([manifest(repo)])
    assert status.state == "ModelProgressing" and status.generation == 1
    assert status.conditions[0].status == "False"
    assert [(p.server, p.index, p.state) for p in status.placement] == [("headrace", 0, "LoadRequested")]
    desired = state.desired("headrace", 0)
    assert [(s.name, s.runtime, s.generation, s.uri) for s in desired.models] == [
        ("echo", "python", 1, str(repo / "echo"))
    ]
    assert state.desired("headrace", 1).models == []
    route = state.routes().models["echo"]
    assert not route.ready and state.routes().version > v0
    v1 = state.routes().version

    report(state, 0, ("echo", 1, "Loading"))
    assert state.model_status("echo").placement[0].state == "Loading"
    assert state.routes().version == v1  # nothing a worker cares about changed
    report(state, 0, ("echo", 1, "Loaded"))
    status = state.model_status("echo")
    assert status.state == "ModelAvailable" and status.available_replicas == 1
    assert status.conditions[0].type == "ModelReady" and status.conditions[0].status == "True"
    table = state.routes()
    assert table.version > v1
    route = table.models["echo"]
    assert route.ready and route.generation == 1 and route.version == "1" and route.platform == "python"
    assert [(r.server, r.index, r.socket) for r in route.replicas] == [
        ("headrace", 0, "/run/headrace-0.sock")
    ]
    assert route.inputs == [TensorSpec("x", "FP32", [-1])]


def test_identical_load_is_a_noop_and_change_bumps_generation(tmp_path: Path, repo: Path) -> None:
    state = make_state(tmp_path)
    state.load([manifest(repo)])
    report(state, 0, ("echo", 1, "Loaded"))
    version = state.routes().version
    desired_version = state.desired("headrace", 0).version
    [again] = state.load([manifest(repo)])
    assert again.generation == 1 and again.state == "ModelAvailable"
    assert state.routes().version == version and state.desired("headrace", 0).version == desired_version

    [changed] = state.load([manifest(repo, extra="  memory: 10Mi\n")])
    assert changed.generation == 2 and changed.state == "ModelProgressing"
    assert [(p.server, p.index) for p in changed.placement] == [("headrace", 0)]  # sticky
    assert state.desired("headrace", 0).models[0].generation == 2
    assert not state.routes().models["echo"].ready  # only the current generation routes
    report(state, 0, ("echo", 2, "Loaded"))
    assert state.routes().models["echo"].ready


def test_unload_terminates_then_forgets(tmp_path: Path, repo: Path) -> None:
    state = make_state(tmp_path)
    state.load([manifest(repo)])
    report(state, 0, ("echo", 1, "Loaded"))
    status = state.unload("echo")
    assert status.state == "ModelTerminating"
    assert "echo" not in state.routes().models
    assert state.desired("headrace", 0).models == []
    report(state, 0)  # the replica unloaded it
    with pytest.raises(NotFoundError):
        state.model_status("echo")
    with pytest.raises(NotFoundError):
        state.unload("echo")
    [again] = state.load([manifest(repo)])
    assert again.generation == 2  # generations are never reused for a name


def test_replica_restart_forgets_what_it_had(tmp_path: Path, repo: Path) -> None:
    state = make_state(tmp_path)
    state.load([manifest(repo)])
    report(state, 0, ("echo", 1, "Loaded"), started=1.0)
    assert state.routes().models["echo"].ready
    report(state, 0, started=2.0, pid=11)
    assert not state.routes().models["echo"].ready
    replica = state.server_status("headrace").replica_status[0]
    assert replica.pid == 11 and replica.started_at == 2.0 and replica.models == []


def test_schedule_failed_and_retried_when_memory_frees(tmp_path: Path, repo: Path) -> None:
    state = make_state(tmp_path, replicas=1)
    [too_many] = state.load([manifest(repo, "other", "  replicas: 3\n", folder="other")])
    assert too_many.state == "ScheduleFailed"
    assert too_many.reason == "model needs 3 replicas but server headrace has 1 (capabilities ok)"
    assert too_many.conditions[0].status == "False"
    assert not state.routes().models["other"].ready
    state.load([manifest(repo, "big", "  memory: 80Mi\n")])
    [second] = state.load([manifest(repo, "big2", "  memory: 80Mi\n")])
    assert second.state == "ScheduleFailed"
    assert "0 with 80MiB free memory" in second.reason
    state.unload("big")
    assert state.model_status("big2").state == "ModelProgressing"
    [missing] = state.load([manifest(repo, "xg", "  requirements: [xgboost]\n")])
    assert missing.reason == "no server has capabilities [xgboost]"


def test_load_failures(tmp_path: Path, repo: Path) -> None:
    state = make_state(tmp_path)
    [bad] = state.load([manifest(repo, "nofolder", folder="nope")])
    assert bad.state == "ModelFailed" and "does not exist" in bad.reason
    state.load([manifest(repo)])
    report(state, 0, ("echo", 1, "LoadFailed"))
    status = state.model_status("echo")
    assert status.state == "ModelFailed" and status.placement[0].state == "LoadFailed"


def test_state_survives_restart(tmp_path: Path, repo: Path) -> None:
    state = make_state(tmp_path)
    state.load([manifest(repo), manifest(repo, "two", "  replicas: 2\n", folder="other")])
    placements = {s.name: [(p.server, p.index) for p in s.placement] for s in state.model_statuses()}
    old_version = state.routes().version
    clock = Clock()
    restored = make_state(tmp_path, clock=clock)
    assert {s.name: s.generation for s in restored.model_statuses()} == {"echo": 1, "two": 1}
    assert {
        s.name: [(p.server, p.index) for p in s.placement] for s in restored.model_statuses()
    } == placements
    # Until replicas report, a worker with an older table is told to keep it (None -> HTTP 503).
    assert restored.wait_routes(old_version, 0) is None
    assert restored.wait_routes(0, 0) is not None
    report(restored, 0, ("echo", 1, "Loaded"), ("two", 1, "Loaded"))
    report(restored, 1, ("two", 1, "Loaded"))
    table = restored.wait_routes(old_version, 0)
    assert table is not None and table.version > old_version and table.models["two"].ready
    assert len(table.models["two"].replicas) == 2


def test_sync_gives_up_after_timeout(tmp_path: Path, repo: Path) -> None:
    make_state(tmp_path).load([manifest(repo)])
    clock = Clock()
    restored = make_state(tmp_path, clock=clock)
    assert restored.wait_routes(5, 0) is None
    clock.now += state_mod.READY_TIMEOUT_S
    assert restored.wait_routes(5, 0) is not None


def test_long_poll_wakes_on_change(tmp_path: Path, repo: Path) -> None:
    real = make_state(tmp_path, clock=time.monotonic)
    version = real.routes().version
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(real.wait_routes(version, 5).version))  # type: ignore[union-attr]
    thread.start()
    time.sleep(0.1)
    real.load([manifest(repo)])
    thread.join(5)
    assert got and got[0] > version
    start = time.monotonic()
    same = real.wait_routes(real.routes().version, 0.2)
    assert same is not None and time.monotonic() - start >= 0.2
    desired = real.desired("headrace", 0)
    assert real.wait_desired("headrace", 0, desired.version - 1, 5) == desired


def test_inline_models_load_in_workers(tmp_path: Path, repo: Path) -> None:
    state = make_state(tmp_path)
    [status] = state.load([manifest(repo, extra="  parameters:\n  - {name: inline, value: 'true'}\n")])
    assert status.inline and status.server == "" and status.placement == []
    assert state.desired("headrace", 0).models == []
    route = state.routes().models["echo"]
    assert route.inline and route.spec is not None and route.spec.inline and not route.ready
    loaded = LoadedModel(name="echo", generation=1, state="Loaded", platform="python")
    state.report_worker(WorkerReport(index=0, pid=5, routes_version=state.routes().version, inline=[loaded]))
    status = state.model_status("echo")
    # loaded, but the worker has yet to take the table in which the model is routable
    assert status.state == "ModelProgressing" and status.conditions[0].status == "False"
    assert status.reason == "waiting for 1 workers to route it"
    state.report_worker(WorkerReport(index=0, pid=5, routes_version=state.routes().version, inline=[loaded]))
    status = state.model_status("echo")
    assert status.state == "ModelAvailable" and status.conditions[0].status == "True"
    assert [(p.server, p.index, p.state) for p in status.placement] == [("inline", 0, "Loaded")]
    assert state.routes().models["echo"].ready and state.routes().models["echo"].platform == "python"
    assert state.unload("echo").state == "ModelTerminating"
    state.report_worker(WorkerReport(index=0, pid=5, routes_version=2, inline=[]))
    assert state.model_statuses() == []


def test_server_status(tmp_path: Path, repo: Path) -> None:
    clock = Clock()
    state = make_state(tmp_path, clock=clock)
    state.load([manifest(repo, extra="  memory: 10Mi\n")])
    report(state, 0, ("echo", 1, "Loaded"))
    status = state.server_status("headrace")
    assert status.replicas == 2 and status.loaded_models == 1 and "sklearn" in status.capabilities
    r0, r1 = status.replica_status
    assert r0.connected and not r1.connected
    assert (r0.memory_used, r0.memory_capacity) == (10 * MiB, 100 * MiB)
    clock.now += views_mod.CONNECTED_S
    assert not state.server_status("headrace").replica_status[0].connected
    with pytest.raises(NotFoundError):
        state.server_status("nope")
    with pytest.raises(NotFoundError):
        report_missing = ServerReport(server="headrace", index=7, pid=1, started_at=1.0, desired_version=0)
        state.report_server(report_missing)


def test_silent_holders_stop_blocking_termination(tmp_path: Path, repo: Path) -> None:
    clock = Clock()
    state = make_state(tmp_path, clock=clock)
    state.load([manifest(repo)])
    report(state, 0, ("echo", 1, "Loaded"))
    assert state.unload("echo").state == "ModelTerminating"
    clock.now += views_mod.STALE_S
    assert state.model_status("echo").state == "ModelTerminated"
    state.report_worker(WorkerReport(index=3, pid=1, routes_version=0))
    assert state.model_statuses() == []


def restart(tmp_path: Path, clock: Clock, **options: float) -> SchedulerState:
    """The scheduler started again on the same store (one server replica)."""
    servers = [ServerManifest(name="headrace", replicas=1)]
    store = Store(tmp_path / "data" / "scheduler.db")
    return SchedulerState(servers, store, lambda s, i: f"/run/{s}-{i}.sock", 100 * MiB, clock, **options)


def test_a_restarted_scheduler_holds_control_changes_until_its_workers_are_back(
    tmp_path: Path, repo: Path
) -> None:
    clock = Clock()
    first = make_state(tmp_path, replicas=1, clock=clock)
    first.load([manifest(repo)])
    report(first, 0, ("echo", 1, "Loaded"))
    for index in (0, 1):
        first.report_worker(WorkerReport(index=index, pid=5, routes_version=0))
    first.close()

    restored = restart(tmp_path, clock, sync_wait_s=0.2)
    report(restored, 0, ("echo", 1, "Loaded"))
    restored.report_worker(WorkerReport(index=0, pid=5, routes_version=restored.routes().version))
    with pytest.raises(HeadraceError) as err:
        restored.load([manifest(repo, "other", folder="other")])
    assert err.value.kind == ErrorKind.UNAVAILABLE
    assert "not ready yet" in err.value.message and "worker local/1" in err.value.message
    assert restored.model_status("echo").state == "ModelAvailable"  # queries still answer
    restored.report_worker(WorkerReport(index=1, pid=6, routes_version=0))
    [status] = restored.load([manifest(repo, "other", folder="other")])
    assert status.name == "other"


def test_a_worker_that_never_returns_holds_control_only_until_the_ready_timeout(
    tmp_path: Path, repo: Path
) -> None:
    clock = Clock()
    first = make_state(tmp_path, replicas=1, clock=clock)
    report(first, 0)
    first.report_worker(WorkerReport(index=3, pid=5, routes_version=0))
    first.close()
    restored = restart(tmp_path, clock, ready_timeout_s=60, sync_wait_s=0)
    report(restored, 0)
    with pytest.raises(HeadraceError, match="worker local/3"):
        restored.load([manifest(repo)])
    clock.now += 60
    assert restored.load([manifest(repo)])[0].name == "echo"


def test_the_table_says_when_the_scheduler_has_heard_a_worker_is_leaving(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    addr = WorkerAddr(instance=state.instance, unix="/run/w0.sock")
    state.report_worker(WorkerReport(index=0, pid=5, routes_version=0, forward=addr))
    me = f"{state.instance}/0"
    assert not state.routes().workers[me].leaving
    version = state.routes().version
    # a leaving worker waits for a table that knows it is leaving before it trusts that its units
    # stay with it because nobody else can take them
    state.report_worker(WorkerReport(index=0, pid=5, routes_version=version, forward=addr, leaving=True))
    assert state.routes().workers[me].leaving and state.routes().version > version
