"""Scheduler state: models, pipelines, servers and reports in memory, made into status and routes."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable

import msgspec

from headrace.config.errors import ConfigError, ErrorKind, HeadraceError, NotFoundError
from headrace.config.manifests import ModelManifest, ServerManifest
from headrace.config.pipelines import PipelineManifest, external_sources, find_pipeline_cycle
from headrace.engine.scheduler import status as st
from headrace.engine.scheduler.pipeline_views import PipelineViews
from headrace.engine.scheduler.pipelines import Pipeline, model_owner, parse_stored, pipeline_owner
from headrace.engine.scheduler.placement import ModelRequest, ReplicaView, ServerView, place
from headrace.engine.scheduler.records import Model, Replica, Server, Worker, is_placed, make_spec
from headrace.engine.scheduler.store import ModelRow, PipelineRow, Store, StoredPlacement
from headrace.engine.scheduler.topic_plan import TopicBook, TopicPlan
from headrace.engine.scheduler.units import UnitBook
from headrace.engine.scheduler.views import STALE_S, Views
from headrace.engine.sharding import (
    MODEL_GATEWAY,
    PIPELINE,
    ShardingConfig,
    dataflow_replicas,
    load_cap,
    model_gateway_replicas,
    pipeline_gateway_replicas,
    slot_of,
)
from headrace.engine.topics import Topics
from headrace.gateway.control import (
    ModelRoute,
    ModelSpec,
    RoutingTable,
    ServerDesired,
    ServerReport,
    ShardingInfo,
    UnitRoute,
    WorkerAddr,
    WorkerReport,
)

log = logging.getLogger("headrace.scheduler")

SYNC_TIMEOUT_S = 5.0  # at a first start, wait this long at most for this instance's workers to report
# after a restart, control-plane changes wait this long at most for the known workers and server
# replicas to reconnect (Seldon's schedulerReadyTimeoutSeconds default is 600)
READY_TIMEOUT_S = 600.0
SYNC_WAIT_S = 30.0  # a control-plane call made meanwhile waits this long before "not ready yet"
DEFAULT_PIPELINE_TIMEOUT_S = 60.0
# A worker silent this long is gone: its units are placed on the others (a worker restarted by its
# supervisor comes back within a second under the same id and keeps them).
WORKER_GONE_S = 10.0
MULTIPLIER_SETTING = "maxShardCountMultiplier"


class SchedulerState:
    """All scheduler decisions, under one lock; long-polls wait on its condition."""

    def __init__(
        self,
        servers: Iterable[ServerManifest],
        store: Store,
        socket_for: Callable[[str, int], str],
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        topics: Topics | None = None,
        pipeline_timeout_s: float = DEFAULT_PIPELINE_TIMEOUT_S,
        sharding: ShardingConfig | None = None,
        instance: str = "local",
        local_workers: int = 0,
        ready_timeout_s: float = READY_TIMEOUT_S,
        sync_wait_s: float = SYNC_WAIT_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cond = threading.Condition()
        self._closed = False
        self._version = int(time.time() * 1000)  # increases across restarts: stale clients see a change
        self.servers: dict[str, Server] = {}
        for manifest in servers:
            replicas = [
                Replica(manifest.name, i, socket_for(manifest.name, i), capacity)
                for i in range(manifest.replicas)
            ]
            self.servers[manifest.name] = Server(manifest, replicas)
        self.models: dict[str, Model] = {}
        self.workers: dict[str, Worker] = {}
        # replicas of other instances' servers: (instance, server, index) -> the replica
        self.remote_replicas: dict[tuple[str, str, int], Replica] = {}
        self.instance = instance  # workers reporting no instance are this scheduler's own
        # this instance's workers: units are first placed once they have all reported (or after
        # SYNC_TIMEOUT_S), not on the first to report and then moved
        self.local_workers = local_workers
        config = sharding or ShardingConfig(partitions=8)
        stored = store.setting(MULTIPLIER_SETTING)
        if isinstance(stored, int):
            config = ShardingConfig(
                config.partitions, stored, config.epsilon, config.max_consumers, config.vnodes
            )
        self.units = UnitBook(store, config)
        self._turn: tuple[float, threading.Timer] | None = None  # publishes when an announced move is due
        self._fired: float | None = None  # the due time it last published at
        self.views = Views(self.models, self.servers, self.workers, clock)
        self.views.units = self.units
        self.views.instance = instance
        self.views.remote = self.remote_replicas
        self.pipelines: dict[str, Pipeline] = {}
        self.topic_book = TopicBook(topics or Topics(), store)
        self.pipeline_views = PipelineViews(
            self.views,
            self.workers,
            self.topic_book.topics,
            self.topic_book.view,
            pipeline_timeout_s,
            clock,
            self.units,
        )
        self._routes = RoutingTable(version=self._bump())
        self._started = clock()
        for row in store.models():
            spec, error = make_spec(row.manifest, row.generation)
            model = Model(row.manifest, row.generation, row.updated_at, spec, error)
            model.server, model.replicas = row.placement.server, tuple(row.placement.replicas)
            self.models[model.name] = model
        for prow in store.pipelines():
            try:
                pmanifest = parse_stored(prow.manifest)
            except HeadraceError as exc:
                log.error("stored pipeline %s cannot be read, skipping it: %s", prow.name, exc.message)
                continue
            self.pipelines[prow.name] = Pipeline(pmanifest, prow.manifest, prow.version, prow.updated_at)
        self.ready_timeout_s = ready_timeout_s
        self.sync_wait_s = sync_wait_s
        # the workers of the cluster when the scheduler last ran: after a restart, control-plane
        # changes wait for them to come back (and for the server replicas) before going on
        self._known = store.known_workers()
        self._synced = not self.models and not self.pipelines and not self._known
        with self._cond:
            self._schedule()
            self._publish()

    # ----------------------------------------------------------------------------------- helpers

    def _bump(self) -> int:
        self._version += 1
        return self._version

    def _replicas(self) -> Iterable[Replica]:
        for server in self.servers.values():
            yield from server.replicas

    def _replica(self, server: str, index: int) -> Replica:
        srv = self.servers.get(server)
        if srv is None or not 0 <= index < len(srv.replicas):
            raise NotFoundError(f"server replica {server}-{index} does not exist")
        return srv.replicas[index]

    def _check_open(self) -> None:
        if self._closed:
            raise HeadraceError("the scheduler is shutting down", ErrorKind.UNAVAILABLE)

    @property
    def synced(self) -> bool:
        """False after a restart until every server replica and every worker known before it reported
        and the topic manager looked at the broker once — so restored routes do not flap to not-ready
        and no unit moves for want of a worker that is only reconnecting — or until ready_timeout_s."""
        if not self._synced and (
            not self._missing() or self._clock() - self._started >= self.ready_timeout_s
        ):
            self._synced = True
            log.info("scheduler synced: control-plane changes go ahead")
        return self._synced

    def _missing(self) -> list[str]:
        """What a restarted scheduler still waits for."""
        missing = [f"server replica {r.server}-{r.index}" for r in self._replicas() if r.last_seen is None]
        missing += [f"worker {w}" for w in sorted(self._known) if w not in self.workers]
        if self.pipelines and not self.topic_book.looked:
            missing.append("a look at the Kafka topics")
        return missing

    def _check_synced(self) -> None:
        """Control-plane changes wait until a restarted scheduler has its data plane back: a call waits
        up to sync_wait_s for it (a restart usually syncs in a second or two), then is answered "not
        ready yet". The caller holds the lock (waiting releases it)."""
        deadline = time.monotonic() + self.sync_wait_s
        while not self.synced and not self._closed and time.monotonic() < deadline:
            self._cond.wait(min(0.25, max(0.0, deadline - time.monotonic())))
        if self.synced:
            return
        left = max(0.0, self._started + self.ready_timeout_s - self._clock())
        missing = self._missing()
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise HeadraceError(
            f"the scheduler is not ready yet: it restarted and waits for {shown} to reconnect "
            f"(at most {left:.0f} s more); try again then",
            ErrorKind.UNAVAILABLE,
        )

    def _remember_workers(self, now: float) -> None:
        """Keep the set of workers a restart should wait for: those serving and not leaving."""
        live = {w.id for w in self.workers.values() if now - w.last_seen < WORKER_GONE_S and not w.leaving}
        if live != self._known:
            self._known = live
            self._store.set_known_workers(live)

    # -------------------------------------------------------------------------------- scheduling

    def _server_views(self, exclude: str) -> list[ServerView]:
        used: dict[tuple[str, int], int] = {}
        for other in self.models.values():
            if other.name != exclude and is_placed(other):
                for index in other.replicas:
                    key = (other.server, index)
                    used[key] = used.get(key, 0) + other.manifest.memory
        model = self.models.get(exclude)
        views = []
        for server in self.servers.values():
            replicas = tuple(
                ReplicaView(
                    r.index,
                    r.capacity,
                    used.get((server.manifest.name, r.index), 0),
                    model is not None and model.server == server.manifest.name and r.index in model.replicas,
                )
                for r in server.replicas
            )
            views.append(ServerView(server.manifest.name, tuple(server.manifest.capabilities), replicas))
        return views

    def _set_placement(self, model: Model, server: str, replicas: tuple[int, ...]) -> None:
        if (model.server, model.replicas) != (server, replicas):
            model.server, model.replicas = server, replicas
            if not model.terminating:
                self._store.set_placement(model.name, StoredPlacement(server, list(replicas)))

    def _schedule(self) -> None:
        """(Re)place every model; existing placements stay while still valid (sticky)."""
        for model in self.models.values():
            if not is_placed(model):
                model.schedule_error = model.schedule_reason = ""
                self._set_placement(model, "", ())
        order = sorted(
            (m for m in self.models.values() if is_placed(m)), key=lambda m: (not m.replicas, m.name)
        )
        for model in order:
            m = model.manifest
            request = ModelRequest(
                m.name, tuple(m.requirements), m.memory, m.replicas, m.min_replicas, m.server
            )
            result = place(request, self._server_views(m.name))
            if result.error and result.error != model.schedule_error:
                log.warning("model %s: ScheduleFailed: %s", m.name, result.error)
            model.schedule_error, model.schedule_reason = result.error, result.reason
            self._set_placement(model, result.server, result.replicas)

    # -------------------------------------------------------------------------------- publishing

    def _publish(self) -> None:
        """Recompute desired sets and routes; bump versions that changed; wake long-polls."""
        now = self._clock()
        for wid in [i for i, w in self.workers.items() if now - w.last_seen >= STALE_S]:
            del self.workers[wid]  # gone (fewer workers after a restart): stop counting it
        for name in [n for n, m in self.models.items() if m.terminating and not self.views.holders(n)]:
            del self.models[name]
        for name in [
            n for n, p in self.pipelines.items() if p.terminating and not self.pipeline_views.holders(n)
        ]:
            del self.pipelines[name]
            log.info("pipeline %s: %s", name, st.PIPELINE_TERMINATED)
        wanted: dict[tuple[str, int], list[ModelSpec]] = {}
        for model in sorted(self.models.values(), key=lambda m: m.name):
            if is_placed(model) and model.spec is not None:
                for index in model.replicas:
                    wanted.setdefault((model.server, index), []).append(model.spec)
        for replica in self._replicas():
            specs = wanted.get((replica.server, replica.index), [])
            if specs != replica.desired.models:
                replica.desired = ServerDesired(version=self._bump(), models=specs)
        routes = {m.name: self.views.route(m) for m in sorted(self.models.values(), key=lambda m: m.name)}
        routes = {name: route for name, route in routes.items() if not self.models[name].terminating}
        pipelines = {
            name: self.pipeline_views.route(p)
            for name, p in sorted(self.pipelines.items())
            if not p.terminating
        }
        units, addrs = self._units_routes(now)
        sharding = ShardingInfo(
            partitions=self.units.config.partitions,
            shards=self.units.config.shards,
            max_consumers=self.units.config.max_consumers,
        )
        table = self._routes
        if (
            routes != table.models
            or pipelines != table.pipelines
            or units != table.units
            or addrs != table.workers
            or sharding != table.sharding
        ):
            self._routes = RoutingTable(
                version=self._bump(),
                models=routes,
                pipelines=pipelines,
                units=units,
                workers=addrs,
                sharding=sharding,
            )
        self._mark_routable(routes)
        self.topic_book.replan(self.models, self.pipelines)
        self._cond.notify_all()
        if self.units.due is not None:
            self._publish_at(self.units.due, now)

    def _publish_at(self, due: float, now: float) -> None:
        """Publish again at ``due`` (on the state's clock), when units whose move was announced move:
        nothing else may happen by then (reports come every couple of seconds). Once per ``due``: a
        clock that does not move (tests) would otherwise have it publish again and again."""
        if due == self._fired or (self._turn is not None and self._turn[0] <= due):
            return

        def publish() -> None:
            with self._cond:
                if self._turn is None or self._turn[1] is not timer:
                    return  # replaced by an earlier one
                self._turn, self._fired = None, due
                if not self._closed:
                    self._publish()

        if self._turn is not None:
            self._turn[1].cancel()
        timer = threading.Timer(max(0.0, due - now) + 0.001, publish)
        timer.daemon = True
        self._turn = (due, timer)
        timer.start()

    def _mark_routable(self, routes: dict[str, ModelRoute]) -> None:
        """Remember the first table in which each model (at its generation) is routable."""
        for name, model in self.models.items():
            route = routes.get(name)
            if route is None or not route.ready:
                model.routable_since, model.routable_generation = 0, -1
            elif model.routable_generation != model.generation or not model.routable_since:
                model.routable_since, model.routable_generation = self._routes.version, model.generation

    def placement_workers(self, now: float | None = None) -> list[str]:
        """Workers units may be placed on: reporting, and not leaving."""
        now = self._clock() if now is None else now
        return sorted(
            w.id for w in self.workers.values() if now - w.last_seen < WORKER_GONE_S and not w.leaving
        )

    def _units_routes(self, now: float) -> tuple[dict[str, UnitRoute], dict[str, WorkerAddr]]:
        """Replan the units (once the scheduler is synced after a restart), then every unit's route
        given what the live workers hold, and where each live worker takes forwarded requests."""
        live = {w.id: w for w in self.workers.values() if now - w.last_seen < WORKER_GONE_S}
        own = sum(1 for w in live.values() if w.instance == self.instance)
        starting = own < self.local_workers and now - self._started < SYNC_TIMEOUT_S and not self.units.target
        if self.synced:
            self._remember_workers(now)
        if self.synced and not starting:
            pipelines = [n for n, p in self.pipelines.items() if not p.terminating]
            slots = {
                slot_of(n, self.units.config.max_consumers)
                for n, m in self.models.items()
                if not m.terminating
            }
            if self.units.replan(self.placement_workers(now), pipelines, slots):
                log.info("units placed: %d units on %d workers", len(self.units.target), len(live))
        units = self.units.routes(
            {wid: w.held for wid, w in live.items()},
            {wid: w.released for wid, w in live.items()},
            frozenset(wid for wid, w in live.items() if w.leaving),
            now,
        )
        addrs = {
            wid: msgspec.structs.replace(w.forward, leaving=w.leaving)
            for wid, w in sorted(live.items())
            if w.forward is not None
        }
        return units, addrs

    def sharding_status(self) -> st.ShardingStatus:
        """Where the units are: per worker, and the replicas each role uses against Seldon's formulas."""
        with self._cond:
            now = self._clock()
            config = self.units.config
            live = {w.id: w for w in self.workers.values() if now - w.last_seen < WORKER_GONE_S}
            placed: dict[str, int] = {}
            for worker in self.units.target.values():
                placed[worker] = placed.get(worker, 0) + 1
            pipelines = [n for n, p in self.pipelines.items() if not p.terminating]
            models = [n for n, m in self.models.items() if not m.terminating]
            routes = self._routes.units
            moving = sum(1 for r in routes.values() if r.waiting) + self.units.deferred
            replicas = len(self.placement_workers(now))
            shards = min(config.shards, max(1, replicas))
            used = {
                kind: len({w for u, w in self.units.target.items() if u.kind == kind})
                for kind in (PIPELINE, MODEL_GATEWAY)
            }
            rows = [
                st.ShardWorker(
                    worker=wid,
                    instance=w.instance,
                    index=w.index,
                    units=placed.get(wid, 0),
                    active=sum(1 for s in w.held.values() if s == "active"),
                    draining=sum(1 for s in w.held.values() if s == "draining"),
                    leaving=w.leaving,
                )
                for wid, w in sorted(live.items())
            ]
            return st.ShardingStatus(
                partitions=config.partitions,
                max_shard_count_multiplier=config.multiplier,
                shards=config.shards,
                epsilon=config.epsilon,
                max_num_consumers=config.max_consumers,
                load_cap=load_cap(
                    config,
                    max(1, replicas),
                    len(pipelines) + len({slot_of(m, config.max_consumers) for m in models}),
                ),
                units=len(self.units.target),
                moving=moving,
                moves=self.units.moves,
                pipelines=len(pipelines),
                models=len(models),
                dataflow=st.RoleReplicas(
                    formula=dataflow_replicas(replicas, len(pipelines), shards), used=used[PIPELINE]
                ),
                model_gateway=st.RoleReplicas(
                    formula=model_gateway_replicas(replicas, len(models), config.max_consumers, shards),
                    used=used[MODEL_GATEWAY],
                ),
                pipeline_gateway=st.RoleReplicas(
                    formula=pipeline_gateway_replicas(replicas, len(pipelines), config.max_consumers, shards),
                    used=used[PIPELINE],
                ),
                workers=rows,
            )

    def set_multiplier(self, multiplier: int) -> ShardingConfig:
        """Change maxShardCountMultiplier at run time (0: the partitions); units move at once."""
        if multiplier < 0:
            raise ConfigError(f"maxShardCountMultiplier must be 0 or more, not {multiplier}")
        with self._cond:
            self._check_open()
            self._check_synced()
            c = self.units.config
            self.units.set_config(
                ShardingConfig(c.partitions, multiplier, c.epsilon, c.max_consumers, c.vnodes)
            )
            self._store.put_setting(MULTIPLIER_SETTING, multiplier)
            log.info(
                "maxShardCountMultiplier %d (%d workers per resource)", multiplier, self.units.config.shards
            )
            self._publish()
            return self.units.config

    # --------------------------------------------------------------------------------- commands

    def load(self, manifests: Iterable[ModelManifest], at_start: bool = False) -> list[st.ModelStatus]:
        """Load or reload models; an identical manifest is a no-op, a changed one bumps the generation."""
        manifests = list(manifests)
        with self._cond:
            self._check_open()
            if not at_start:  # the manifests of `serve --load` go in at once
                self._check_synced()
            rows: list[ModelRow] = []
            for manifest in manifests:
                current = self.models.get(manifest.name)
                same = current is not None and not current.terminating
                if same and current is not None and current.manifest.spec_key() == manifest.spec_key():
                    if current.manifest != manifest:  # labels or annotations only: same generation
                        rows.append(self._row(manifest, current.generation, current))
                    continue
                rows.append(self._row(manifest, self._store.next_generation(manifest.name), current))
            self._store.put_models(rows)
            for row in rows:
                current = self.models.get(row.manifest.name)
                if current is not None and current.generation == row.generation:
                    current.manifest, current.updated_at = row.manifest, row.updated_at
                    continue
                spec, error = make_spec(row.manifest, row.generation)
                model = Model(row.manifest, row.generation, row.updated_at, spec, error)
                model.server, model.replicas = row.placement.server, tuple(row.placement.replicas)
                self.models[model.name] = model
                self.topic_book.spare(model_owner(model.name))
                log.info(
                    "model %s: generation %d%s", model.name, model.generation, f": {error}" * bool(error)
                )
            if rows:
                self._schedule()
                self._publish()
            return [self.views.model_status(self.models[m.name]) for m in manifests]

    def _row(self, manifest: ModelManifest, generation: int, current: Model | None) -> ModelRow:
        placement = StoredPlacement()
        if current is not None and current.server:
            placement = StoredPlacement(current.server, list(current.replicas))
        return ModelRow(manifest=manifest, generation=generation, updated_at=time.time(), placement=placement)

    def unload(self, name: str) -> st.ModelStatus:
        with self._cond:
            self._check_open()
            self._check_synced()
            model = self.models.get(name)
            if model is None or model.terminating:
                raise NotFoundError(f"model {name} not found")
            self._store.delete_model(name)
            model.terminating = True
            if model.manifest.clean_topics_on_delete:
                self.topic_book.doom(model_owner(name))
            log.info("model %s: unloading", name)
            self._schedule()
            status = self.views.model_status(model)
            self._publish()
            return status

    def report_server(self, report: ServerReport) -> None:
        """A replica's full state; a new started_at is a restart with only what it reports. A replica
        of another instance mirrors this instance's replica of the same name and index: it is given
        the same models, and workers of its instance call it."""
        with self._cond:
            self._check_open()
            replica = self._replica(report.server, report.index)
            if report.instance and report.instance != self.instance:
                key = (report.instance, report.server, report.index)
                replica = self.remote_replicas.get(key) or Replica(
                    report.server, report.index, report.socket, replica.capacity
                )
                replica.socket = report.socket or replica.socket
                self.remote_replicas[key] = replica
            if replica.started_at and report.started_at != replica.started_at:
                log.info("server replica %s-%d restarted (pid %d)", report.server, report.index, report.pid)
            replica.started_at, replica.pid = report.started_at, report.pid
            replica.loaded = {m.name: m for m in report.models}
            replica.acked_version = report.desired_version
            replica.last_seen = self._clock()
            self._publish()

    def report_worker(self, report: WorkerReport) -> None:
        with self._cond:
            self._check_open()
            if report.index < 0:
                raise HeadraceError(f"worker index {report.index} is negative", ErrorKind.INVALID_ARGUMENT)
            instance = report.instance or self.instance
            wid = f"{instance}/{report.index}"
            worker = self.workers.setdefault(wid, Worker(wid, instance, report.index))
            worker.pid, worker.routes_version = report.pid, report.routes_version
            worker.held = dict(report.held)
            worker.leaving = report.leaving
            worker.forward = report.forward
            worker.released = dict(report.released)
            worker.inline = {m.name: m for m in report.inline}
            worker.pipelines = dict(report.pipelines)
            worker.pipeline_errors = {n: e for n, e in report.pipeline_errors.items() if e}
            worker.last_seen = self._clock()
            self._publish()

    def load_pipelines(
        self, docs: Iterable[tuple[PipelineManifest, str]], at_start: bool = False
    ) -> list[st.PipelineStatus]:
        """Load or reload pipelines (manifest, its YAML document); identical ones are a no-op, a changed
        spec bumps the version, labels or annotations alone keep it."""
        docs = list(docs)
        with self._cond:
            self._check_open()
            if not at_start:
                self._check_synced()
            reads = {
                name: external_sources(p.manifest) for name, p in self.pipelines.items() if not p.terminating
            }
            reads.update({m.name: external_sources(m) for m, _ in docs})
            if cycle := find_pipeline_cycle(reads):
                chain = ", ".join(f"{a} reads {b}" for a, b in itertools.pairwise(cycle))
                raise ConfigError(f"pipelines would form a cycle through externalInputs ({chain})")
            rows: list[PipelineRow] = []
            for manifest, text in docs:
                current = self.pipelines.get(manifest.name)
                same = current is not None and not current.terminating
                if same and current is not None and current.manifest.spec_key() == manifest.spec_key():
                    if current.text != text:  # labels or annotations only: same version
                        rows.append(_pipeline_row(manifest, text, current.version))
                    continue
                version = self._store.next_pipeline_version(manifest.name)
                rows.append(_pipeline_row(manifest, text, version))
            self._store.put_pipelines(rows)
            manifests = {m.name: m for m, _ in docs}
            for row in rows:
                current = self.pipelines.get(row.name)
                if current is not None and current.version == row.version:
                    current.manifest, current.text = manifests[row.name], row.manifest
                    current.updated_at = row.updated_at
                    continue
                self.pipelines[row.name] = Pipeline(
                    manifests[row.name], row.manifest, row.version, row.updated_at
                )
                self.topic_book.spare(pipeline_owner(row.name))
                log.info("pipeline %s: version %d", row.name, row.version)
            if rows:
                self._publish()
            return [self.pipeline_views.status(self.pipelines[m.name]) for m, _ in docs]

    def unload_pipeline(self, name: str) -> st.PipelineStatus:
        """The route goes at once; Terminating until no live worker runs it, then Terminated (gone)."""
        with self._cond:
            self._check_open()
            self._check_synced()
            pipeline = self.pipelines.get(name)
            if pipeline is None or pipeline.terminating:
                raise NotFoundError(f"pipeline {name} not found")
            self._store.delete_pipeline(name)
            pipeline.terminating = True
            if pipeline.manifest.clean_topics_on_delete:
                self.topic_book.doom(pipeline_owner(name))
            log.info("pipeline %s: unloading", name)
            status = self.pipeline_views.status(pipeline)
            self._publish()
            return status

    def pipeline_status(self, name: str) -> st.PipelineStatus:
        with self._cond:
            pipeline = self.pipelines.get(name)
            if pipeline is None:
                raise NotFoundError(f"pipeline {name} not found")
            return self._with_replicas(self.pipeline_views.status(pipeline))

    def pipeline_statuses(self) -> list[st.PipelineStatus]:
        with self._cond:
            return [
                self._with_replicas(self.pipeline_views.status(p)) for _, p in sorted(self.pipelines.items())
            ]

    def _with_replicas(self, status: st.PipelineStatus) -> st.PipelineStatus:
        """The cluster's dataflow and pipeline-gateway replicas by Seldon's formulas."""
        config = self.units.config
        replicas = len(self.placement_workers())
        shards = min(config.shards, max(1, replicas))
        pipelines = sum(1 for p in self.pipelines.values() if not p.terminating)
        return msgspec.structs.replace(
            status,
            dataflow_replicas=dataflow_replicas(replicas, pipelines, shards),
            pipeline_gateway_replicas=pipeline_gateway_replicas(
                replicas, pipelines, config.max_consumers, shards
            ),
        )

    # ----------------------------------------------------------------------------- topic manager

    def topic_plan(self) -> TopicPlan:
        with self._cond:
            return self.topic_book.plan

    def wait_topic_plan(self, after: int, timeout: float) -> TopicPlan:
        """The plan once its version differs from ``after``, or at the timeout (or on close)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                remaining = deadline - time.monotonic()
                if self._closed or self.topic_book.plan.version != after or remaining <= 0:
                    return self.topic_book.plan
                self._cond.wait(remaining)

    def topics_synced(
        self, existing: Iterable[str] | None, deleted: Iterable[str] = (), error: str = ""
    ) -> None:
        """The topic manager's findings: desired topics that exist (None: unknown), deleted ones, an error."""
        with self._cond:
            if self._closed:  # the store may be closing: the next start looks again
                return
            first = not self.topic_book.looked
            if self.topic_book.synced(existing, deleted, error) or first:
                self._publish()  # the first look also ends the restart sync (wakes route polls)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            if self._turn is not None:
                self._turn[1].cancel()
            self._cond.notify_all()

    # ---------------------------------------------------------------------------------- queries

    def routes(self) -> RoutingTable:
        with self._cond:
            return self._routes

    def wait_routes(self, after: int, timeout: float) -> RoutingTable | None:
        """The table once its version differs from ``after``, or at the timeout. None: still syncing
        after a restart, so a worker holding an older table should keep it."""
        deadline = self._clock() + max(0.0, timeout)
        with self._cond:
            while True:
                answer = after <= 0 or self.synced or self._closed
                if self._closed or (answer and self._routes.version != after):
                    return self._routes
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return self._routes if answer else None
                if not answer:
                    remaining = min(
                        remaining, max(0.05, self._started + self.ready_timeout_s - self._clock())
                    )
                self._cond.wait(remaining)

    def desired(self, server: str, index: int) -> ServerDesired:
        with self._cond:
            return self._replica(server, index).desired

    def wait_desired(self, server: str, index: int, after: int, timeout: float) -> ServerDesired:
        deadline = self._clock() + max(0.0, timeout)
        with self._cond:
            replica = self._replica(server, index)
            while True:
                remaining = deadline - self._clock()
                if self._closed or replica.desired.version != after or remaining <= 0:
                    return replica.desired
                self._cond.wait(remaining)

    def model_status(self, name: str) -> st.ModelStatus:
        with self._cond:
            model = self.models.get(name)
            if model is None:
                raise NotFoundError(f"model {name} not found")
            return self.views.model_status(model)

    def model_statuses(self) -> list[st.ModelStatus]:
        with self._cond:
            return [self.views.model_status(m) for m in sorted(self.models.values(), key=lambda m: m.name)]

    def model_snapshot(self, name: str | None = None) -> list[tuple[ModelManifest, st.ModelStatus]]:
        """Each model (or the one named) with the manifest it was loaded with, taken under one lock."""
        with self._cond:
            if name is None:
                models = sorted(self.models.values(), key=lambda m: m.name)
            elif (model := self.models.get(name)) is not None:
                models = [model]
            else:
                raise NotFoundError(f"model {name} not found")
            return [(m.manifest, self.views.model_status(m)) for m in models]

    def pipeline_snapshot(self, name: str | None = None) -> list[tuple[PipelineManifest, st.PipelineStatus]]:
        """Each pipeline (or the one named) with its manifest, taken under one lock."""
        with self._cond:
            if name is None:
                pipelines = [p for _, p in sorted(self.pipelines.items())]
            elif (pipeline := self.pipelines.get(name)) is not None:
                pipelines = [pipeline]
            else:
                raise NotFoundError(f"pipeline {name} not found")
            return [(p.manifest, self.pipeline_views.status(p)) for p in pipelines]

    def server_status(self, name: str) -> st.ServerStatus:
        with self._cond:
            server = self.servers.get(name)
            if server is None:
                raise NotFoundError(f"server {name} not found")
            return self.views.server_status(server)

    def server_statuses(self) -> list[st.ServerStatus]:
        with self._cond:
            return [self.views.server_status(s) for s in self.servers.values()]


def _pipeline_row(manifest: PipelineManifest, text: str, version: int) -> PipelineRow:
    return PipelineRow(name=manifest.name, manifest=text, version=version, updated_at=time.time())
