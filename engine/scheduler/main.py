"""The scheduler child: restore state, load settings.load_files, manage Kafka topics, serve until SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import yaml

from headrace.config.errors import ConfigError
from headrace.config.manifests import (
    ModelManifest,
    load_manifest_paths,
    manifest_files,
    replica_socket,
    servers_from_settings,
)
from headrace.config.pipelines import PipelineManifest
from headrace.config.settings import Settings
from headrace.engine.kafka.admin import TopicAdmin
from headrace.engine.scheduler.api import ControlApi
from headrace.engine.scheduler.pipelines import parse_pipeline_docs
from headrace.engine.scheduler.port_mux import MuxControlServer
from headrace.engine.scheduler.seldon_api import SeldonApiServer
from headrace.engine.scheduler.state import SchedulerState
from headrace.engine.scheduler.store import Store
from headrace.engine.scheduler.topic_manager import TopicManager
from headrace.engine.sharding import ShardingConfig
from headrace.engine.topics import Topics

log = logging.getLogger("headrace.scheduler")


def _to_load(settings: Settings) -> tuple[list[ModelManifest], list[tuple[PipelineManifest, str]]]:
    """Models and pipelines from settings.load_files (files, or folders of *.yaml); a file holding only
    Pipeline documents is read as pipelines, any other as models (Servers come from server_files)."""
    model_files: list[Path] = []
    pipelines: list[tuple[PipelineManifest, str]] = []
    for path in manifest_files(settings.load_files):
        try:
            text = path.read_text(encoding="utf-8")
            kinds = {d.get("kind") for d in yaml.safe_load_all(text) if isinstance(d, dict)}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if kinds == {"Pipeline"}:
            try:
                pipelines.extend(parse_pipeline_docs(text))
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc.message}") from None
        else:
            model_files.append(path)
    models = []
    for manifest in load_manifest_paths(model_files) if model_files else []:
        if isinstance(manifest, ModelManifest):
            models.append(manifest)
        else:
            log.warning("load files: Server %s ignored (servers come from server_files)", manifest.name)
    return models, pipelines


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Serve the control API on settings.control_host:control_port until SIGTERM/SIGINT (or ``stop``)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s scheduler %(levelname)s %(message)s"
        )
    try:
        servers = servers_from_settings(settings)
        to_load, pipelines_to_load = _to_load(settings)
        topics = Topics(settings.topic_prefix, settings.namespace)
    except ConfigError as exc:
        log.error("%s", exc.message)
        sys.exit(2)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            assert stop is not None
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    store = Store(Path(settings.data_dir) / "scheduler.db")
    state = SchedulerState(
        servers,
        store,
        lambda server, index: replica_socket(settings, server, index),
        settings.server_memory_bytes,
        topics=topics,
        pipeline_timeout_s=settings.pipeline_timeout_s,
        sharding=ShardingConfig(
            partitions=settings.partitions,
            multiplier=settings.max_shard_count_multiplier,
            epsilon=settings.sharding_epsilon,
            max_consumers=settings.modelgateway_max_num_consumers,
        ),
        instance=settings.instance_id or "local",
        local_workers=0 if settings.join else settings.worker_count,
        ready_timeout_s=settings.scheduler_ready_timeout_s,
    )
    topic_manager = TopicManager(state, TopicAdmin(settings), stop)
    seldon_api: SeldonApiServer | None = None
    try:
        if to_load:
            state.load(to_load, at_start=True)
        if pipelines_to_load:
            state.load_pipelines(pipelines_to_load, at_start=True)
        # Seldon's gRPC scheduler API shares the control port: HTTP/2 connections are pumped to it
        seldon_api = SeldonApiServer(state, str(settings.run_dir / "scheduler-grpc.sock"))
        try:
            settings.run_dir.mkdir(parents=True, exist_ok=True)
            seldon_api.start()
            httpd = MuxControlServer(
                (settings.control_host, settings.control_port), ControlApi(state), seldon_api.path
            )
        except (OSError, RuntimeError) as exc:
            log.error("cannot listen on %s: %s", settings.control_url, exc)
            sys.exit(1)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()
        topic_manager.start()
        log.info(
            "scheduler listening on %s (JSON and Seldon gRPC; state in %s)", settings.control_url, store.path
        )
        while not stop.wait(0.5):
            pass
        log.info("scheduler stopping")
        state.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    finally:
        state.close()
        if seldon_api is not None:
            seldon_api.stop()
        topic_manager.join(5)
        store.close()
