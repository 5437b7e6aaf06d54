"""Pipeline status (Seldon states and conditions) and routes, from models, topics and worker reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from headrace.engine.scheduler import status as st
from headrace.engine.scheduler.pipelines import Pipeline, pipeline_topics
from headrace.engine.scheduler.records import Worker
from headrace.engine.scheduler.units import ACTIVE, DRAINING, UnitBook
from headrace.engine.scheduler.views import STALE_S, Views
from headrace.engine.sharding import PIPELINE, Unit
from headrace.engine.topics import Topics
from headrace.gateway.control import PipelineRoute

WAITING_FOR_TOPICS = "waiting for Kafka topics"


@dataclass
class TopicsView:
    """The desired topics the topic manager saw on the broker, and why it could not look (if so)."""

    ready: set[str]
    error: str = ""


@dataclass(frozen=True)
class _Facts:
    """Everything the status and the route of one pipeline are made of."""

    models: list[tuple[str, str]]  # (step model, why it is not ready); empty when all are
    topics: list[st.PipelineTopic]
    live: list[Worker]
    units: dict[int, str]  # partition -> the worker sharding gives it to
    ready: set[int]  # partitions whose owner holds them and runs this version
    moving: set[int]  # partitions still held by a worker other than their owner (a handoff)
    errors: list[tuple[str, str]]

    @property
    def models_ok(self) -> bool:
        return not self.models

    @property
    def topics_ok(self) -> bool:
        return all(t.exists for t in self.topics)

    @property
    def units_ok(self) -> bool:
        return bool(self.units) and len(self.ready) == len(self.units) and not self.errors

    def units_message(self) -> str:
        return f"{len(self.ready)}/{len(self.units)} units ready" if self.units else "no workers yet"


class PipelineViews:
    """Computes pipeline status and routes; the caller holds the state lock."""

    def __init__(
        self,
        models: Views,
        workers: dict[str, Worker],
        topics: Topics,
        topics_view: TopicsView,
        default_timeout_s: float,
        clock: Callable[[], float],
        units: UnitBook,
    ) -> None:
        self.views = models
        self.workers = workers
        self.topics = topics
        self.topics_view = topics_view
        self.default_timeout_s = default_timeout_s
        self._clock = clock
        self.units = units

    def live_workers(self) -> list[Worker]:
        now = self._clock()
        return [w for _, w in sorted(self.workers.items()) if now - w.last_seen < STALE_S]

    def holders(self, name: str) -> int:
        """Live workers still running some version of this pipeline (terminating waits for them)."""
        prefix = f"{PIPELINE}:{name}:"
        return sum(
            1
            for w in self.live_workers()
            if name in w.pipelines or any(u.startswith(prefix) and u.count(":") == 2 for u in w.held)
        )

    def timeout_s(self, pipeline: Pipeline) -> float:
        return pipeline.manifest.timeout_s or self.default_timeout_s

    def _facts(self, p: Pipeline) -> _Facts:
        models: list[tuple[str, str]] = []
        for step in p.manifest.steps:
            model = self.views.models.get(step.name)
            if model is None or model.terminating:
                models.append((step.name, "not loaded"))
                continue
            status = self.views.model_status(model)
            gateway = status.condition(st.MODEL_GW)
            if status.state != st.AVAILABLE:
                models.append((step.name, f"{status.state}: {status.reason}".rstrip(": ")))
            elif gateway is not None and gateway.status != "True" and not self.views.gateway_serving(model):
                # in a pipeline a model is ready once the model gateway serves its topics too
                # (Seldon); a unit of its slot being handed over still counts: calls do not wait
                models.append((step.name, f"model gateway {gateway.message}"))
        ready_topics = self.topics_view.ready
        names = pipeline_topics(p.manifest, self.topics)
        topics = [st.PipelineTopic(name=t, exists=t in ready_topics) for t in names]
        live = self.live_workers()
        by_id = {w.id: w for w in live}
        units = self.units.units_of(PIPELINE, p.name)
        ready: set[int] = set()
        moving: set[int] = set()
        for partition, owner in units.items():
            key = str(Unit(PIPELINE, p.name, partition))
            worker = by_id.get(owner)
            if any(w.held.get(key) for w in live if w.id != owner):
                moving.add(partition)
            elif (
                worker is not None
                and worker.held.get(key) == ACTIVE
                and worker.pipelines.get(p.name) == p.version
            ):
                ready.add(partition)
        errors = [(w.id, w.pipeline_errors[p.name]) for w in live if w.pipeline_errors.get(p.name)]
        return _Facts(models, topics, live, units, ready, moving, errors)

    def _state(self, p: Pipeline, f: _Facts) -> tuple[str, str]:
        if p.terminating:
            holders = self.holders(p.name)
            if holders:
                return st.PIPELINE_TERMINATING, f"waiting for {holders} workers to stop it"
            return st.PIPELINE_TERMINATED, ""
        if f.errors:
            worker, error = f.errors[0]
            more = f" (and {len(f.errors) - 1} more workers)" if len(f.errors) > 1 else ""
            return st.PIPELINE_FAILED, f"worker {worker}: {error}{more}"
        if not f.models_ok:
            return st.PIPELINE_CREATING, "waiting for models: " + ", ".join(m for m, _ in f.models)
        if not f.topics_ok:
            return st.PIPELINE_CREATING, self._waiting_for_topics()
        if not f.live or not f.units:
            return st.PIPELINE_CREATING, "waiting for a worker to report"
        if f.moving:
            return st.PIPELINE_REBALANCING, f"{f.units_message()}, {len(f.moving)} moving between workers"
        if not f.units_ok:
            return st.PIPELINE_CREATING, f"{f.units_message()} (version {p.version})"
        return st.PIPELINE_READY, ""

    def _waiting_for_topics(self) -> str:
        error = self.topics_view.error
        return WAITING_FOR_TOPICS + (f" ({error})" if error else "")

    def status(self, p: Pipeline) -> st.PipelineStatus:
        f = self._facts(p)
        state, reason = self._state(p, f)
        units_msg = f.units_message()
        if f.models:
            models_msg = "; ".join(f"{m}: {why}" for m, why in f.models)
        else:
            models_msg = f"{len(p.manifest.steps)}/{len(p.manifest.steps)} models available"
        dataflow_msg = self._waiting_for_topics() if not f.topics_ok else units_msg
        if f.errors:
            dataflow_msg = reason
        live = not p.terminating
        dataflow_ok = live and f.topics_ok and f.units_ok
        gateway_ok = live and f.units_ok
        ready = state == st.PIPELINE_READY
        conditions = [
            _condition(st.MODELS_READY, live and f.models_ok, state, models_msg),
            _condition(st.PIPELINE_READY, dataflow_ok, state, dataflow_msg),
            _condition(st.PIPELINE_GW_READY, gateway_ok, state, dataflow_msg if f.errors else units_msg),
            _condition(st.READY, ready, state, reason or units_msg),
        ]
        prefix = f"{PIPELINE}:{p.name}:"
        rows = []
        for w in f.live:
            held = {int(u.rsplit(":", 1)[1]): s for u, s in w.held.items() if u.startswith(prefix)}
            owned = sorted(q for q, owner in f.units.items() if owner == w.id)
            if not held and not owned and p.name not in w.pipelines and not w.pipeline_errors.get(p.name):
                continue
            rows.append(
                st.PipelineWorker(
                    index=w.index,
                    worker=w.id,
                    version=w.pipelines.get(p.name, 0),
                    error=w.pipeline_errors.get(p.name, ""),
                    partitions=owned,
                    active=sorted(q for q, s in held.items() if s == ACTIVE),
                    draining=sorted(q for q, s in held.items() if s == DRAINING),
                )
            )
        return st.PipelineStatus(
            name=p.name,
            state=state,
            reason=reason,
            version=p.version,
            steps=[s.name for s in p.manifest.steps],
            input_topic=self.topics.pipeline_inputs(p.name),
            output_topic=self.topics.pipeline_outputs(p.name),
            topics=f.topics,
            timeout_s=self.timeout_s(p),
            conditions=conditions,
            workers=rows,
            workers_used=len(set(f.units.values())),
            updated_at=p.updated_at,
        )

    def route(self, p: Pipeline) -> PipelineRoute:
        """What workers get: ready once topics exist and models are available (not waiting on workers,
        so the route changes only when that does, not with every worker that starts the pipeline)."""
        f = self._facts(p)
        state, message = self._state(p, f)
        if state in (st.PIPELINE_CREATING, st.PIPELINE_REBALANCING) and f.models_ok and f.topics_ok:
            message = f"starting version {p.version} on workers"
            state = st.PIPELINE_CREATING
        return PipelineRoute(
            name=p.name,
            version=p.version,
            manifest=p.text,
            timeout_s=self.timeout_s(p),
            ready=f.models_ok and f.topics_ok,
            state=state,
            message=message,
        )


def _condition(type_: str, ok: bool, reason: str, message: str) -> st.Condition:
    return st.Condition(type=type_, status=str(ok), reason=reason, message=message)
