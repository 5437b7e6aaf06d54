"""The scheduler child: restore state, load settings.load_files, manage Kafka topics, serve until SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from headrace.config.errors import ConfigError
from headrace.config.manifests import (
    ModelManifest,
    load_manifest_paths,
    replica_socket,
    servers_from_settings,
)
from headrace.config.settings import Settings
from headrace.engine.kafka.admin import TopicAdmin
from headrace.engine.scheduler.api import ControlApi, ControlServer
from headrace.engine.scheduler.state import SchedulerState
from headrace.engine.scheduler.store import Store
from headrace.engine.scheduler.topic_manager import TopicManager
from headrace.engine.topics import Topics

log = logging.getLogger("headrace.scheduler")


def _models_to_load(settings: Settings) -> list[ModelManifest]:
    manifests = load_manifest_paths(settings.load_files) if settings.load_files else []
    for manifest in manifests:
        if not isinstance(manifest, ModelManifest):
            log.warning("load files: Server %s ignored (servers come from server_files)", manifest.name)
    return [m for m in manifests if isinstance(m, ModelManifest)]


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Serve the control API on settings.control_host:control_port until SIGTERM/SIGINT (or ``stop``)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s scheduler %(levelname)s %(message)s"
        )
    try:
        servers = servers_from_settings(settings)
        to_load = _models_to_load(settings)
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
    )
    topic_manager = TopicManager(state, TopicAdmin(settings), stop)
    try:
        if to_load:
            state.load(to_load)
        try:
            httpd = ControlServer((settings.control_host, settings.control_port), ControlApi(state))
        except OSError as exc:
            log.error("cannot listen on %s: %s", settings.control_url, exc)
            sys.exit(1)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()
        topic_manager.start()
        log.info("scheduler listening on %s (state in %s)", settings.control_url, store.path)
        while not stop.wait(0.5):
            pass
        log.info("scheduler stopping")
        state.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    finally:
        state.close()
        topic_manager.join(5)
        store.close()
