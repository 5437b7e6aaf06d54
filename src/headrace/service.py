"""Composition of `headrace serve`: which children exist, in which order they stop."""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import socket
from pathlib import Path

import msgspec

from headrace.config.errors import ConfigError
from headrace.config.logs import setup_logging
from headrace.config.manifests import servers_from_settings
from headrace.config.settings import Settings
from headrace.notify import Notifier
from headrace.supervisor import Child, ProcessSpec, Supervisor, cleanup_child_shm, cleanup_orphaned_shm

log = logging.getLogger("headrace.service")

STOP_WORKERS, STOP_SERVERS, STOP_SCHEDULER, STOP_BROKER = 0, 1, 2, 3


def _run_worker(settings: Settings, index: int) -> None:
    from headrace.worker import run

    run(settings, index)


def _run_server(settings: Settings, name: str, index: int) -> None:
    from headrace.gateway.runtime.server import run

    run(settings, name, index)


def _run_scheduler(settings: Settings) -> None:
    from headrace.engine.scheduler.main import run

    setup_logging(settings.log_level, "scheduler", settings.log_format)
    run(settings)


def _run_broker(settings: Settings) -> None:
    from headrace.engine.kafka.broker import run_embedded_broker

    setup_logging(settings.log_level, "kafka", settings.log_format)
    run_embedded_broker(settings)


def _run_metrics(settings: Settings) -> None:
    from headrace.gateway.telemetry.exporter import run

    run(settings)


def build_specs(settings: Settings) -> list[ProcessSpec]:
    """The children: a scheduler (unless this instance joins another's), an embedded broker (unless a
    cluster is given), the model servers and the workers."""
    specs = []
    if not settings.join:
        specs.append(ProcessSpec("scheduler", functools.partial(_run_scheduler, settings), STOP_SCHEDULER))
    if not settings.kafka_bootstrap and settings.embedded_broker != "none":
        # the broker stops last: workers drain pipeline requests through it
        specs.append(ProcessSpec("broker", functools.partial(_run_broker, settings), STOP_BROKER))
    for server in servers_from_settings(settings):
        for i in range(server.replicas):
            specs.append(
                ProcessSpec(
                    f"server {server.name}-{i}",
                    functools.partial(_run_server, settings, server.name, i),
                    STOP_SERVERS,
                )
            )
    specs += [worker_spec(settings, i) for i in range(settings.worker_count)]
    if settings.metrics_port:
        # serves the sum of every process's metric files; stops after the workers' last requests
        specs.append(ProcessSpec("metrics", functools.partial(_run_metrics, settings), STOP_SCHEDULER))
    return specs


def worker_spec(settings: Settings, index: int) -> ProcessSpec:
    worker = functools.partial(_run_worker, settings, index)
    return ProcessSpec(f"worker {index}", worker, STOP_WORKERS, reports_ready=True, worker=index)


def instance_id(settings: Settings) -> str:
    """This instance's id in a cluster: the setting, else one made on the first start and kept in the
    data dir (so a restarted instance is the same instance, and keeps its units)."""
    if settings.instance_id:
        return settings.instance_id
    path = Path(settings.data_dir) / "instance-id"
    try:
        return path.read_text().strip() or _new_id(path)
    except FileNotFoundError:
        return _new_id(path)


def _new_id(path: Path) -> str:
    made = f"{socket.gethostname().split('.')[0] or 'headrace'}-{secrets.token_hex(3)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(made + "\n")
    return made


def check_cluster(settings: Settings) -> None:
    """An instance joining another's scheduler runs no scheduler and no broker: it needs the cluster's
    Kafka, and loads nothing itself."""
    if not settings.join:
        return
    if not settings.kafka_bootstrap:
        raise ConfigError(
            "--join needs the cluster's Kafka: give --kafka-bootstrap (a joining instance runs no broker)"
        )
    if settings.load_files:
        raise ConfigError(
            "--load goes to the instance that runs the scheduler; with --join, load through it "
            "(`headrace model load --control http://HOST:PORT -f ...`)"
        )


def prepare_metrics(settings: Settings) -> str | None:
    """This start's metrics folder, emptied (every process records into its own files there; the
    metrics child serves their sum); None with metrics off."""
    from headrace.gateway.telemetry import metrics

    if not settings.metrics_port:
        metrics.configure(None)
        return None
    folder = settings.metrics_dir
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    metrics.configure(str(folder))
    return str(folder)


def run_service(settings: Settings) -> int:
    check_cluster(settings)
    settings = msgspec.structs.replace(settings, instance_id=instance_id(settings))
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(settings.log_level, "supervisor", settings.log_format)
    cleanup_orphaned_shm()
    me = os.getpid()
    metrics_dir = prepare_metrics(settings)
    from headrace.gateway.telemetry.metrics import PROCESS_RESTARTS

    def on_exit(child: Child, pid: int) -> None:
        cleanup_child_shm(me, pid)
        if metrics_dir is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]  # its gauges go
        if not supervisor.stopping and not child.retiring:
            PROCESS_RESTARTS.labels(child.spec.name).inc()

    children_file = settings.run_dir / "children.json"

    def on_spawn(children: list[Child]) -> None:
        # who is who, for operators and tests: {"worker 0": pid, ...}
        table = {c.spec.name: c.pid for c in children if c.pid}
        tmp = children_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(table))
        os.replace(tmp, children_file)

    # under systemd (Type=notify): READY=1 once every worker serves, STATUS, WATCHDOG, STOPPING
    notifier = Notifier.from_environ()
    supervisor = Supervisor(
        build_specs(settings),
        settings.grace_period_s,
        on_exit,
        on_spawn,
        notifier,
        make_worker=functools.partial(worker_spec, settings),
    )
    log.info(
        "headrace serving REST on %s:%d, gRPC on %s:%d, control on %s",
        settings.host,
        settings.http_port,
        settings.host,
        settings.grpc_port,
        settings.control_url,
    )
    return supervisor.run()
