"""Pipelines in the scheduler state: status transitions, versions, unload, restarts and the topic plan."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from headrace.config.errors import NotFoundError
from headrace.config.manifests import ModelManifest, ServerManifest, parse_manifests
from headrace.engine.scheduler import status as st
from headrace.engine.scheduler.pipelines import parse_pipeline_docs
from headrace.engine.scheduler.state import SchedulerState
from headrace.engine.scheduler.store import Store
from headrace.engine.scheduler.units import ANNOUNCE_S
from headrace.engine.sharding import slot_of
from headrace.engine.topics import Topics
from headrace.gateway.control import Handover, LoadedModel, ServerReport, WorkerReport

MiB = 2**20
T = Topics()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pipeline_yaml(
    name: str = "p", steps: tuple[str, ...] = ("a", "b"), extra: str = "", spec: str = ""
) -> str:
    lines = [f"    - name: {steps[0]}"]
    lines += [f"    - name: {s}\n      inputs: [{prev}]" for prev, s in itertools.pairwise(steps)]
    return (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\n"
        f"metadata:\n  name: {name}\n{extra}spec:\n{spec}  steps:\n" + "\n".join(lines) + "\n"
        f"  output:\n    steps: [{steps[-1]}]\n"
    )


def model(repo: Path, name: str, extra: str = "") -> ModelManifest:
    (repo / name).mkdir(parents=True, exist_ok=True)
    (repo / name / "model.py").write_text("")
    text = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\n"
        f"metadata:\n  name: {name}\nspec:\n  storageUri: {repo / name}\n{extra}"
    )
    [m] = parse_manifests(text)
    assert isinstance(m, ModelManifest)
    return m


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_state(tmp_path: Path, clock: Callable[[], float], timeout: float = 60.0) -> SchedulerState:
    store = Store(tmp_path / "data" / "scheduler.db")
    servers = [ServerManifest(name="headrace", replicas=1)]
    return SchedulerState(
        servers,
        store,
        lambda s, i: f"/run/{s}-{i}.sock",
        100 * MiB,
        clock,
        topics=T,
        pipeline_timeout_s=timeout,
    )


def models_loaded(state: SchedulerState, *names: str) -> None:
    """The one server replica reports these models (at their current generation) as Loaded."""
    loaded = [LoadedModel(name=n, generation=state.models[n].generation, state="Loaded") for n in names]
    desired = state.desired("headrace", 0).version
    state.report_server(
        ServerReport(
            server="headrace", index=0, pid=1, started_at=1.0, desired_version=desired, models=loaded
        )
    )


def worker(state: SchedulerState, index: int, errors: dict[str, str] | None = None, **pipelines: int) -> None:
    """Worker ``index`` reports, then serves the units the table gives it: the model gateway's, and
    those of the pipelines it runs."""
    me = f"local/{index}"

    def report(held: dict[str, str]) -> None:
        state.report_worker(
            WorkerReport(
                index=index,
                pid=100 + index,
                routes_version=state.routes().version,
                pipelines=pipelines,
                pipeline_errors=errors or {},
                held=held,
            )
        )

    known = state.workers.get(me)
    units = state.routes().units
    # what it still holds of what the table gives it (it hands the rest over)
    report({u: v for u, v in known.held.items() if units.get(u) and units[u].owner == me} if known else {})
    units = state.routes().units
    report(
        {
            u: "active"
            for u, r in units.items()
            if r.owner == me
            and not r.waiting
            and (u.startswith("modelgw:") or u.split(":")[:2] in (["pipeline", p] for p in pipelines))
        }
    )


def load(state: SchedulerState, text: str) -> list[st.PipelineStatus]:
    return state.load_pipelines(parse_pipeline_docs(text))


def all_topics_exist(state: SchedulerState) -> None:
    state.topics_synced(state.topic_plan().desired)


def conditions(status: st.PipelineStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.message) for c in status.conditions}


def test_waits_for_models_then_topics_then_workers(tmp_path: Path, repo: Path, clock: Clock) -> None:
    state = make_state(tmp_path, clock)
    [status] = load(state, pipeline_yaml())
    assert (status.state, status.reason, status.version) == (
        "PipelineCreating",
        "waiting for models: a, b",
        1,
    )
    assert status.steps == ["a", "b"]
    assert conditions(status)["ModelsReady"] == ("False", "a: not loaded; b: not loaded")
    route = state.routes().pipelines["p"]
    assert not route.ready and route.version == 1 and route.state == "PipelineCreating"
    assert yaml.safe_load(route.manifest)["metadata"]["name"] == "p"
    assert route.timeout_s == 60.0

    state.load([model(repo, "a")])
    models_loaded(state, "a")
    status = state.pipeline_status("p")
    # a is on its server, but in a pipeline the model gateway must serve its topics too (Seldon)
    assert status.reason == "waiting for models: a, b"
    assert conditions(status)["ModelsReady"] == ("False", "a: model gateway no workers yet; b: not loaded")
    for index in (0, 1, 0, 1):  # the workers take the model gateway's units (no pipeline running yet)
        worker(state, index)
    assert state.pipeline_status("p").reason == "waiting for models: b"
    state.load([model(repo, "b")])
    assert state.pipeline_status("p").reason == "waiting for models: b"
    assert "b: ModelProgressing" in conditions(state.pipeline_status("p"))["ModelsReady"][1]
    models_loaded(state, "a", "b")
    for index in (0, 1, 0, 1):
        worker(state, index)
    status = state.pipeline_status("p")
    assert (status.state, status.reason) == ("PipelineCreating", "waiting for Kafka topics")
    assert conditions(status)["ModelsReady"] == ("True", "2/2 models available")
    assert status.input_topic == "seldon.default.pipeline.p.inputs"
    assert {t.name for t in status.topics} == {
        "seldon.default.pipeline.p.inputs",
        "seldon.default.pipeline.p.outputs",
        "seldon.default.model.a.inputs",
        "seldon.default.model.a.outputs",
        "seldon.default.model.b.inputs",
        "seldon.default.model.b.outputs",
        "seldon.default.errors.errors",
    }
    assert not any(t.exists for t in status.topics)
    state.topics_synced(None, error="Kafka at 127.0.0.1:1 is not reachable")
    assert state.pipeline_status("p").reason == (
        "waiting for Kafka topics (Kafka at 127.0.0.1:1 is not reachable)"
    )
    assert not state.routes().pipelines["p"].ready

    before = state.routes().version
    all_topics_exist(state)
    assert state.routes().version > before  # topics ready republishes routes
    route = state.routes().pipelines["p"]
    assert (
        route.ready and route.state == "PipelineCreating" and route.message == "starting version 1 on workers"
    )
    status = state.pipeline_status("p")
    assert (status.state, status.reason) == ("PipelineCreating", "0/8 units ready (version 1)")
    assert all(t.exists for t in status.topics)

    worker(state, 0)
    worker(state, 1, p=1)
    status = state.pipeline_status("p")
    assert (status.state, status.reason) == ("PipelineCreating", "4/8 units ready (version 1)")
    assert conditions(status)["PipelineReady"] == ("False", "4/8 units ready")
    assert conditions(status)["PipelineGwReady"] == ("False", "4/8 units ready")
    assert [(w.index, w.version, len(w.partitions)) for w in status.workers] == [(0, 0, 4), (1, 1, 4)]
    assert status.workers_used == 2
    routes_version = state.routes().version
    worker(state, 0, p=1)
    status = state.pipeline_status("p")
    assert (status.state, status.reason) == ("PipelineReady", "")
    assert conditions(status) == {
        "ModelsReady": ("True", "2/2 models available"),
        "PipelineReady": ("True", "8/8 units ready"),
        "PipelineGwReady": ("True", "8/8 units ready"),
        "Ready": ("True", "8/8 units ready"),
    }
    table = state.routes()
    assert table.version > routes_version and table.pipelines["p"].state == "PipelineReady"
    worker(state, 1, p=1)
    assert state.routes().version == table.version  # a worker saying the same again changes nothing


def test_model_not_ready_again_and_worker_errors(tmp_path: Path, repo: Path, clock: Clock) -> None:
    state = make_state(tmp_path, clock)
    state.load([model(repo, "a"), model(repo, "b")])
    models_loaded(state, "a", "b")
    load(state, pipeline_yaml())
    all_topics_exist(state)
    worker(state, 0, p=1)
    assert state.pipeline_status("p").state == "PipelineReady"

    worker(state, 0, {"p": "cannot compile: boom"})
    status = state.pipeline_status("p")
    assert (status.state, status.reason) == ("PipelineFailed", "worker local/0: cannot compile: boom")
    assert conditions(status)["PipelineReady"] == ("False", "worker local/0: cannot compile: boom")
    assert conditions(status)["Ready"][0] == "False"
    assert state.routes().pipelines["p"].state == "PipelineFailed"
    assert status.workers[0].error == "cannot compile: boom"

    worker(state, 0, p=1)
    models_loaded(state, "a")  # b went away on the replica
    status = state.pipeline_status("p")
    assert (status.state, status.reason) == ("PipelineCreating", "waiting for models: b")
    assert not state.routes().pipelines["p"].ready
    state.unload("a")
    assert state.pipeline_status("p").reason == "waiting for models: a, b"


def test_versions_noop_reload_and_timeout(tmp_path: Path, clock: Clock) -> None:
    state = make_state(tmp_path, clock, timeout=7.5)
    load(state, pipeline_yaml())
    version = state.routes().version
    [again] = load(state, pipeline_yaml())
    assert again.version == 1 and state.routes().version == version

    labelled = pipeline_yaml(extra="  labels: {team: x}\n")
    [same] = load(state, labelled)
    assert same.version == 1
    assert "team" in state.routes().pipelines["p"].manifest  # the text follows, the version does not

    timed = pipeline_yaml(extra="  annotations: {headrace.io/timeout-seconds: '2.5'}\n")
    [bumped] = load(state, timed)
    assert bumped.version == 2 and bumped.timeout_s == 2.5
    assert state.routes().pipelines["p"].timeout_s == 2.5
    [changed] = load(state, pipeline_yaml(steps=("a",)))
    assert changed.version == 3 and changed.steps == ["a"] and changed.timeout_s == 7.5


def test_unload_terminating_terminated_and_restart(tmp_path: Path, clock: Clock) -> None:
    state = make_state(tmp_path, clock)
    load(state, pipeline_yaml() + "---\n" + pipeline_yaml("q", ("a",)))
    worker(state, 0, p=1, q=1)
    status = state.unload_pipeline("p")
    assert status.state == "PipelineTerminating" and status.reason == "waiting for 1 workers to stop it"
    assert "p" not in state.routes().pipelines  # the route goes at once
    assert state.pipeline_status("p").state == "PipelineTerminating"
    assert [s.name for s in state.pipeline_statuses()] == ["p", "q"]
    with pytest.raises(NotFoundError):
        state.unload_pipeline("p")
    worker(state, 0, q=1)
    with pytest.raises(NotFoundError):
        state.pipeline_status("p")  # Terminated: forgotten

    # no worker running it: Terminated at once; a dead worker does not hold it up
    clock.now += 31
    assert state.unload_pipeline("q").state == "PipelineTerminated"

    load(state, pipeline_yaml("r"))
    old = state.routes().version
    restored = make_state(tmp_path, Clock())
    assert [(s.name, s.version) for s in restored.pipeline_statuses()] == [("r", 1)]
    models_loaded(restored)  # the replica is back; the topics were not looked at yet
    assert restored.wait_routes(old, 0) is None  # a worker keeps its table meanwhile
    restored.topics_synced(None, error="Kafka at x is not reachable")
    table = restored.wait_routes(old, 0)
    assert table is not None and not table.pipelines["r"].ready
    assert restored.routes().pipelines["r"].manifest == state.routes().pipelines["r"].manifest
    [again] = load(restored, pipeline_yaml("p"))
    assert again.version == 2  # versions are never reused for a name


def test_topic_plan_and_clean_topics_on_delete(tmp_path: Path, repo: Path, clock: Clock) -> None:
    state = make_state(tmp_path, clock)
    plan = state.topic_plan()
    assert plan.desired == {T.errors} and not plan.delete
    state.load([model(repo, "a", "  dataflow: {cleanTopicsOnDelete: true}\n"), model(repo, "c")])
    assert state.topic_plan().desired == {T.errors, *map(T.model_inputs, "ac"), *map(T.model_outputs, "ac")}
    load(state, pipeline_yaml(steps=("b",), spec="  dataflow: {cleanTopicsOnDelete: true}\n"))
    desired = state.topic_plan().desired
    assert {T.pipeline_inputs("p"), T.model_outputs("b")} <= desired

    models_loaded(state, "a", "c")
    state.unload("a")  # terminating: its topics are neither desired nor deleted yet
    plan = state.topic_plan()
    assert T.model_inputs("a") not in plan.desired and not plan.delete
    models_loaded(state, "c")  # the replica let go of a: now it is gone
    plan = state.topic_plan()
    assert plan.delete == {T.model_inputs("a"), T.model_outputs("a")}
    state.unload("c")  # no cleanTopicsOnDelete: left alone
    models_loaded(state)
    assert state.topic_plan().delete == plan.delete

    state.unload_pipeline("p")
    delete = state.topic_plan().delete
    assert delete == plan.delete | {T.pipeline_inputs("p"), T.pipeline_outputs("p")}
    assert T.model_inputs("b") not in delete  # the pipeline's steps' topics are their models'

    state.topics_synced({T.errors}, deleted={T.model_inputs("a"), T.model_outputs("a")})
    assert state.topic_plan().delete == {T.pipeline_inputs("p"), T.pipeline_outputs("p")}
    # loaded again before the delete happened: spared, and durable across a restart
    load(state, pipeline_yaml(steps=("b",)))
    assert not state.topic_plan().delete
    state.unload_pipeline("p")
    assert not state.topic_plan().delete  # this manifest did not ask for it
    state.load([model(repo, "d", "  dataflow: {cleanTopicsOnDelete: true}\n")])
    state.unload("d")
    restored = make_state(tmp_path, Clock())
    assert restored.topic_plan().delete == {T.model_inputs("d"), T.model_outputs("d")}


def test_wait_topic_plan_wakes_on_change(tmp_path: Path, clock: Clock) -> None:
    state = make_state(tmp_path, clock)
    seen = state.topic_plan().version
    assert state.wait_topic_plan(seen, 0.05).version == seen
    timer = threading.Timer(0.05, lambda: load(state, pipeline_yaml()))
    timer.start()
    try:
        assert state.wait_topic_plan(seen, 5).version > seen
    finally:
        timer.join()
    state.close()
    assert state.wait_topic_plan(state.topic_plan().version, 5) is state.topic_plan()


def test_a_pipeline_stays_routable_while_a_model_gateway_unit_is_handed_over(
    tmp_path: Path, repo: Path, clock: Clock
) -> None:
    state = make_state(tmp_path, clock)
    load(state, pipeline_yaml())
    state.load([model(repo, "a"), model(repo, "b")])
    models_loaded(state, "a", "b")
    all_topics_exist(state)
    for index in (0, 1, 0, 1):
        worker(state, index, p=1)
    assert state.routes().pipelines["p"].ready
    before = {u: r.owner for u, r in state.routes().units.items()}

    def report(index: int, held: dict[str, str], released: dict[str, Handover]) -> None:
        state.report_worker(
            WorkerReport(
                index=index, pid=100 + index, routes_version=state.routes().version,
                pipelines={"p": 1}, held=held, released=released,
            )
        )  # fmt: skip

    worker(state, 2)  # a third worker joins: some units move to it, announced first
    soon = [u for u, r in state.routes().units.items() if r.soon]
    assert soon and all(state.routes().units[u].owner == before[u] for u in soon)
    assert state.routes().pipelines["p"].ready
    clock.now += ANNOUNCE_S
    report(0, dict(state.workers["local/0"].held), {})  # anything that publishes after the announcement
    moved = [u for u, r in state.routes().units.items() if r.owner == "local/2" and u.startswith("modelgw:")]
    assert moved and not any(r.soon for r in state.routes().units.values())
    old = {before[u] for u in moved}

    for owner in old:  # its old owners drain the moved units ...
        index = int(owner.rsplit("/", 1)[1])
        held = {u: ("draining" if u in moved else s) for u, s in state.workers[owner].held.items()}
        report(index, held, {})
    # the model gateway is not on every owner yet, but every unit is served: calls need not wait
    assert conditions_of_model(state, moved[0]) != "True"
    assert state.routes().pipelines["p"].ready
    for owner in old:  # ... and release them; the new owner has not taken them up yet
        index = int(owner.rsplit("/", 1)[1])
        held = {u: s for u, s in state.workers[owner].held.items() if u not in moved}
        report(index, held, {u: Handover(starts=[]) for u in moved if before[u] == owner})
    assert state.routes().pipelines["p"].ready
    for owner in old:  # a unit nobody holds or hands over is not served: the pipeline waits
        index = int(owner.rsplit("/", 1)[1])
        report(index, dict(state.workers[owner].held), {})
    assert not state.routes().pipelines["p"].ready


def conditions_of_model(state: SchedulerState, unit: str) -> str:
    slot = int(unit.split(":")[1])
    [name] = [m for m in ("a", "b") if slot_of(m, 100) == slot]
    status = state.model_status(name)
    return {c.type: c.status for c in status.conditions}["ModelGw"]


def test_announced_moves_happen_when_due_without_waiting_for_a_report(tmp_path: Path, repo: Path) -> None:
    state = make_state(tmp_path, time.monotonic)
    try:
        load(state, pipeline_yaml())
        state.load([model(repo, "a"), model(repo, "b")])
        models_loaded(state, "a", "b")
        all_topics_exist(state)
        for index in (0, 0):
            worker(state, index, p=1)
        worker(state, 1)  # a second worker joins: the units of some partitions are to move to it
        soon = {u for u, r in state.routes().units.items() if r.soon}
        assert soon and all(state.routes().units[u].owner == "local/0" for u in soon)
        # nobody reports again: the scheduler publishes the move itself when its turn is due
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(r.soon for r in state.routes().units.values()):
            time.sleep(0.01)
        routes = state.routes().units
        assert not any(r.soon for r in routes.values())
        assert any(routes[u].owner == "local/1" and routes[u].waiting == ["local/0"] for u in soon)
    finally:
        state.close()
