"""Read-only views over the records: model status (Seldon states), server status and routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from headrace.engine.scheduler import status as st
from headrace.engine.scheduler.records import (
    LOAD_FAILED,
    LOADED,
    Model,
    Replica,
    Server,
    Worker,
    is_placed,
    placed_replicas,
)
from headrace.engine.scheduler.units import ACTIVE, DRAINING
from headrace.engine.sharding import MODEL_GATEWAY, slot_of
from headrace.gateway.control import LoadedModel, ModelRoute, ReplicaAddr

if TYPE_CHECKING:
    from headrace.engine.scheduler.units import UnitBook

CONNECTED_S = 5.0  # a replica or worker that reported within this is "connected"
STALE_S = 30.0  # a replica or worker silent this long no longer holds models up (workers are dropped)


class Views:
    """Computes what clients see from the shared records; the caller holds the state lock."""

    def __init__(
        self,
        models: dict[str, Model],
        servers: dict[str, Server],
        workers: dict[str, Worker],
        clock: Callable[[], float],
    ) -> None:
        self.models = models
        self.servers = servers
        self.workers = workers
        self._clock = clock
        self.units: UnitBook | None = None  # set by the state: the model gateway's units
        self.instance = ""  # this scheduler's instance
        # replicas of other instances: (instance, server, index) -> replica (set by the state)
        self.remote: dict[tuple[str, str, int], Replica] = {}

    def connected(self, last_seen: float | None) -> bool:
        return last_seen is not None and self._clock() - last_seen < CONNECTED_S

    def _loaded_here(self, model: Model, loaded: LoadedModel | None) -> bool:
        return loaded is not None and loaded.generation == model.generation and loaded.state == LOADED

    def route(self, model: Model) -> ModelRoute:
        if model.spec is None:
            return ModelRoute(name=model.name, generation=model.generation)
        reports: list[LoadedModel] = []
        addrs: list[ReplicaAddr] = []
        if model.spec.inline:
            for worker in sorted(self.workers.values(), key=lambda w: (w.instance, w.index)):
                report = worker.inline.get(model.name)
                if report is not None and self._loaded_here(model, report):
                    reports.append(report)
        else:
            for replica in placed_replicas(model, self.servers):
                report = replica.loaded.get(model.name)
                if report is not None and self._loaded_here(model, report):
                    reports.append(report)
                    addrs.append(ReplicaAddr(replica.server, replica.index, replica.socket, self.instance))
            now = self._clock()
            for (instance, server, index), replica in sorted(self.remote.items()):
                if server != model.server or index not in model.replicas:
                    continue
                report = replica.loaded.get(model.name)
                seen = replica.last_seen is not None and now - replica.last_seen < STALE_S
                if seen and report is not None and self._loaded_here(model, report):
                    addrs.append(ReplicaAddr(server, index, replica.socket, instance))
        first = reports[0] if reports else None
        _, state, reason = self._model_state(model)
        return ModelRoute(
            name=model.name,
            generation=model.generation,
            ready=bool(reports),
            state=state,
            message=reason,
            inline=model.spec.inline,
            spec=model.spec if model.spec.inline else None,
            gateway_workers=model.manifest.gateway_workers,
            replicas=addrs,
            platform=first.platform if first else "",
            inputs=list(first.inputs) if first else [],
            outputs=list(first.outputs) if first else [],
        )

    def holders(self, name: str) -> int:
        """Live replicas and workers that still report this model (terminating waits for them)."""
        now = self._clock()
        replicas = [r for s in self.servers.values() for r in s.replicas] + list(self.remote.values())
        live = [r.loaded for r in replicas if r.last_seen is not None and now - r.last_seen < STALE_S]
        live += [w.inline for w in self.workers.values() if now - w.last_seen < STALE_S]
        return sum(1 for models in live if name in models)

    def workers_behind(self, model: Model) -> int:
        """Live workers whose last routing table predates the model's being routable."""
        if not model.routable_since:
            return 0
        now = self._clock()
        return sum(
            1
            for w in self.workers.values()
            if now - w.last_seen < STALE_S and w.routes_version < model.routable_since
        )

    def model_status(self, model: Model) -> st.ModelStatus:
        placement, state, reason = self._model_state(model)
        available = sum(1 for p in placement if p.state == LOADED)
        ready = available > 0 and not model.terminating
        behind = self.workers_behind(model) if ready else 0
        if behind:  # loaded, but a worker still has a table without it: a call there would be a 404
            ready, state = False, st.PROGRESSING
            reason = f"waiting for {behind} workers to route it"
        message = reason or f"{available}/{len(placement)} replicas available"
        m = model.manifest
        return st.ModelStatus(
            name=model.name,
            state=state,
            reason=reason,
            generation=model.generation,
            replicas=len(placement) if m.inline else m.replicas,
            available_replicas=available,
            server=model.server,
            inline=m.inline,
            runtime=model.spec.runtime if model.spec else "",
            storage_uri=m.path,
            memory=m.memory,
            requirements=list(m.requirements),
            conditions=[
                st.Condition(type=st.MODEL_READY, status=str(ready), reason=state, message=message),
                self._gateway_condition(model),
            ],
            placement=placement,
            updated_at=model.updated_at,
        )

    def _slot_units(self, model: Model) -> dict[str, str]:
        """The units of the model's model-gateway slot (as text) -> their target owners."""
        if self.units is None or model.terminating:
            return {}
        slot = str(slot_of(model.name, self.units.config.max_consumers))
        owners = self.units.units_of(MODEL_GATEWAY, slot)
        return {f"{MODEL_GATEWAY}:{slot}:{partition}": owner for partition, owner in owners.items()}

    def _live(self) -> list[Worker]:
        now = self._clock()
        return [w for w in self.workers.values() if now - w.last_seen < STALE_S]

    def _gateway_condition(self, model: Model) -> st.Condition:
        """ModelGw: the model gateway serves the model's topics on every partition (its slot's units
        held by their owners). Not needed for direct calls; pipelines and the async path use it."""
        if self.units is None or model.terminating:
            return st.Condition(type=st.MODEL_GW, status="False", reason="", message="")
        units = self._slot_units(model)
        live = {w.id: w for w in self._live()}
        ready = sum(
            1 for key, owner in units.items() if owner in live and live[owner].held.get(key) == ACTIVE
        )
        ok = bool(units) and ready == len(units)
        message = f"{ready}/{len(units)} ready" if units else "no workers yet"
        return st.Condition(
            type=st.MODEL_GW, status=str(ok), reason="ModelGwReady" if ok else "", message=message
        )

    def gateway_serving(self, model: Model) -> bool:
        """Is every unit of the model's slot served or being handed over: active or draining on a live
        worker, or released by one to a next owner that is not serving it yet (the release is kept
        until it is)? What a pipeline's route needs: a handover moves a unit without stopping its
        records, so calls need not wait for it (ModelGw says True only once every owner is active)."""
        units = self._slot_units(model)
        live = self._live()
        return bool(units) and all(
            any(w.held.get(key) in (ACTIVE, DRAINING) or key in w.released for w in live) for key in units
        )

    def _model_state(self, model: Model) -> tuple[list[st.ReplicaPlacement], str, str]:
        placement: list[st.ReplicaPlacement] = []
        if model.manifest.inline:
            for worker in sorted(self.workers.values(), key=lambda w: (w.instance, w.index)):
                placement.append(
                    self._placement("inline", worker.index, model, worker.inline.get(model.name), True)
                )
        else:
            for replica in placed_replicas(model, self.servers):
                report = replica.loaded.get(model.name)
                seen = replica.last_seen is not None
                placement.append(self._placement(model.server, replica.index, model, report, seen))
        if model.terminating:
            holders = self.holders(model.name)
            state = st.TERMINATING if holders else st.TERMINATED
            return placement, state, f"waiting for {holders} replicas to unload" if holders else ""
        if model.error:
            return placement, st.FAILED, model.error
        if model.schedule_error:
            return placement, st.SCHEDULE_FAILED, model.schedule_error
        failed = [p for p in placement if p.state == LOAD_FAILED]
        loaded = sum(1 for p in placement if p.state == LOADED)
        if failed:
            first = failed[0]
            return placement, st.FAILED, f"{first.server}-{first.index}: {first.message}".rstrip(": ")
        if placement and loaded == len(placement) and not model.manifest.inline:
            return placement, st.AVAILABLE, model.schedule_reason
        if model.manifest.inline and loaded:
            return placement, st.AVAILABLE, ""
        if 0 < model.manifest.min_replicas <= loaded:
            return placement, st.AVAILABLE, model.schedule_reason
        if model.manifest.inline and not placement:
            return placement, st.PROGRESSING, "waiting for a worker to report"
        return placement, st.PROGRESSING, f"{loaded}/{len(placement)} replicas loaded"

    def _placement(
        self, server: str, index: int, model: Model, report: LoadedModel | None, seen: bool
    ) -> st.ReplicaPlacement:
        if report is None or report.generation != model.generation:
            message = "" if seen else "waiting for the replica to connect"
            return st.ReplicaPlacement(server=server, index=index, state="LoadRequested", message=message)
        return st.ReplicaPlacement(server=server, index=index, state=report.state, message=report.message)

    def server_status(self, server: Server) -> st.ServerStatus:
        now = self._clock()
        replicas = []
        for r in server.replicas:
            used = sum(
                m.manifest.memory
                for m in self.models.values()
                if is_placed(m) and m.server == r.server and r.index in m.replicas
            )
            replicas.append(
                st.ReplicaStatus(
                    index=r.index,
                    socket=r.socket,
                    connected=self.connected(r.last_seen),
                    pid=r.pid,
                    started_at=r.started_at,
                    last_report_age_s=None if r.last_seen is None else round(now - r.last_seen, 3),
                    desired_version=r.desired.version,
                    acked_version=r.acked_version,
                    models=[
                        st.ReplicaModel(
                            name=m.name, generation=m.generation, state=m.state, message=m.message
                        )
                        for m in r.loaded.values()
                    ],
                    memory_used=used,
                    memory_capacity=r.capacity,
                )
            )
        return st.ServerStatus(
            name=server.manifest.name,
            server_config=server.manifest.server_config,
            replicas=len(server.replicas),
            capabilities=list(server.manifest.capabilities),
            loaded_models=len(
                {m for r in server.replicas for m, lm in r.loaded.items() if lm.state == LOADED}
            ),
            replica_status=replicas,
        )
