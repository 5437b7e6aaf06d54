"""Process-wide settings: defaults < TOML file < HEADRACE_* environment < command-line flags."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from headrace.config.errors import ConfigError

MiB = 1024 * 1024


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every knob of ``headrace serve``. Field name = TOML key = ``HEADRACE_<NAME>`` = ``--name``."""

    host: str = "127.0.0.1"
    http_port: int = 9000
    grpc_port: int = 9500
    control_host: str = "127.0.0.1"
    control_port: int = 9004
    workers: int = 0  # 0: the number of usable cores
    data_dir: str = ".headrace"
    grace_period_s: float = 30.0
    max_body_bytes: int = 100 * MiB
    model_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    # Shared-memory arenas, one per direction per (worker, model-server replica) connection.
    arena_bytes: int = 64 * MiB
    # Tensors smaller than this travel inline in the IPC message instead of through shm.
    shm_min_bytes: int = 1024
    # Seldon Server manifests to run (each a YAML file); empty: the built-in `headrace` server.
    server_files: tuple[str, ...] = ()
    # Replicas of the built-in `headrace` server when no server_files are given.
    server_replicas: int = 1
    # Memory capacity of each model-server replica, counted against models' `memory`.
    server_memory_bytes: int = 4096 * MiB
    # Model manifests loaded (idempotently) when the scheduler starts.
    load_files: tuple[str, ...] = ()
    log_level: str = "info"
    # Logs: "text" (one line per record) or "json" (one JSON object per line, with request_id when a
    # request is being served); a sample of requests logged one line each (0: none, 1: every one).
    log_format: Literal["text", "json"] = "text"
    request_log_sample: float = 0.0
    # Prometheus metrics of every process, summed, on http://metrics_host:metrics_port/metrics (served by
    # the `headrace: metrics` child); 0: no metrics endpoint and nothing recorded to files.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9006
    # OpenTelemetry span export over OTLP/HTTP (needs `pip install headrace[otel]`); empty: off (env
    # OTEL_EXPORTER_OTLP_ENDPOINT works too). A base URL gets /v1/traces appended. W3C traceparent is
    # propagated (and answered) whether export is on or not.
    otel_endpoint: str = ""
    otel_sample_ratio: float = 1.0
    otel_service_name: str = "headrace"
    # Kafka: an existing cluster's bootstrap servers (default: env KAFKA_BOOTSTRAP_SERVERS); empty: run
    # an embedded broker as a supervised child, Apache Kafka ("kafka", KRaft) or Tansu ("tansu", no JVM).
    kafka_bootstrap: str = ""
    embedded_broker: Literal["kafka", "tansu", "none"] = "kafka"  # none: no Kafka, no pipelines
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    # The embedded Kafka's KRaft controller listener (loopback); 0: any free port at each start.
    kafka_controller_port: int = 9093
    kafka_heap: str = "384m"  # the embedded Kafka's -Xmx
    kafka_max_message_bytes: int = 100 * MiB
    # librdkafka properties for every client (SASL/SSL, ...); "producer."/"consumer." prefixed keys
    # apply to one side only. TOML: a table; env HEADRACE_KAFKA_CONFIG: "k=v,k=v".
    kafka_config: dict[str, str] = {}
    # Pipelines: Seldon topic naming <topic_prefix>.<namespace>.model|pipeline.<name>.inputs|outputs
    topic_prefix: str = "seldon"
    namespace: str = "default"
    # Partitions of every topic (one value per installation, as in Seldon); workers own p % W.
    partitions: int = 8
    # A synchronous pipeline call not answered by then gets an error (a pipeline may set its own).
    pipeline_timeout_s: float = 60.0
    # Local hops: a pipeline step's record for a partition this worker owns is written to Kafka and
    # also handed to the next step in memory, so a hop does not wait for the broker's round trip
    # (false: every hop goes through the broker, as in Seldon).
    local_hops: bool = True
    # With local hops, a step's record at least this large (a model's inputs or outputs topic; never a
    # pipeline's) is written to Kafka as a reference to its payload parked in the worker's shared
    # memory (header headrace-shm); 0: always inline. The arena is reserved on first use.
    hop_shm_min_bytes: int = 1 * MiB
    hop_shm_arena_bytes: int = 256 * MiB
    # Model gateway (Seldon's names work as env: MODELGATEWAY_NUM_WORKERS, ...MAX_NUM_CONSUMERS,
    # ...WORKER_TIMEOUT_MS).
    modelgateway_num_workers: int = 8
    modelgateway_max_num_consumers: int = 100
    modelgateway_worker_timeout_ms: int = 120000
    # Sharding (engine/sharding.py): how many workers one pipeline or model-gateway slot is spread over
    # at most (Seldon's scalingConfig.pipelines.maxShardCountMultiplier; 0 = partitions; changed at
    # run time with `headrace scaling set`), and the bound on any worker's share of units:
    # ceil((1 + epsilon) * average).
    max_shard_count_multiplier: int = 0
    sharding_epsilon: float = 0.25
    # Cluster: this instance's id (default: made once and kept in <data_dir>/instance-id); join the
    # cluster whose scheduler is at HOST:PORT instead of running a scheduler (and a broker) here; where
    # this instance's workers take requests forwarded by other instances (port 0: any free port, else
    # internal_port + worker index).
    instance_id: str = ""
    join: str = ""
    # After a restart, the scheduler's control-plane changes wait (answered "not ready yet") until
    # the workers and server replicas it knew have reconnected, at most this long (Seldon's
    # schedulerReadyTimeoutSeconds); the data plane serves meanwhile.
    scheduler_ready_timeout_s: float = 600.0
    internal_host: str = "127.0.0.1"
    internal_port: int = 0

    @property
    def worker_count(self) -> int:
        if self.workers > 0:
            return self.workers
        return max(1, len(os.sched_getaffinity(0)))

    @property
    def run_dir(self) -> Path:
        return Path(self.data_dir) / "run"

    @property
    def metrics_dir(self) -> Path:
        """This start's metric files of every process (emptied when `headrace serve` starts)."""
        return self.run_dir / "metrics"

    @property
    def control_url(self) -> str:
        if self.join:
            return self.join if "://" in self.join else f"http://{self.join}"
        return f"http://{self.control_host}:{self.control_port}"


_FIELDS = {f.name: f for f in msgspec.structs.fields(Settings)}


def _coerce_env(name: str, raw: str) -> Any:
    field = _FIELDS[name]
    default = field.default
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(p for p in raw.split(",") if p)
        if field.default_factory is dict:
            pairs = [p.split("=", 1) for p in raw.split(",") if p.strip()]
            return {k.strip(): v.strip() for k, v in pairs}
    except ValueError:
        raise ConfigError(f"HEADRACE_{name.upper()}={raw!r} is not a valid {field.type}") from None
    return raw


# Seldon Core 2's environment names, honoured below our own HEADRACE_* names.
_SELDON_ENV = {
    "MODELGATEWAY_NUM_WORKERS": "modelgateway_num_workers",
    "MODELGATEWAY_MAX_NUM_CONSUMERS": "modelgateway_max_num_consumers",
    "MODELGATEWAY_WORKER_TIMEOUT_MS": "modelgateway_worker_timeout_ms",
    "KAFKA_DEFAULT_NUM_PARTITIONS": "partitions",
    "SCHEDULER_READY_TIMEOUT_SECONDS": "scheduler_ready_timeout_s",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "otel_endpoint",
    "OTEL_SERVICE_NAME": "otel_service_name",
}


def load_settings(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Merge the layers and validate once; errors name the field and where it came from."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):  # Seldon's name, the weakest layer above the default
        merged["kafka_bootstrap"] = env["KAFKA_BOOTSTRAP_SERVERS"]
    for seldon_name, field in _SELDON_ENV.items():
        if env.get(seldon_name):
            merged[field] = _coerce_env(field, env[seldon_name])
    path = config_file or env.get("HEADRACE_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                from_file = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        unknown = sorted(set(from_file) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
        merged.update(from_file)
    for name in _FIELDS:
        raw = env.get(f"HEADRACE_{name.upper()}")
        if raw is not None:
            merged[name] = _coerce_env(name, raw)
    for name, value in (overrides or {}).items():
        if value is not None:
            merged[name] = value
    try:
        return msgspec.convert(merged, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None


def to_dict(settings: Settings) -> dict[str, Any]:
    return msgspec.structs.asdict(settings)
