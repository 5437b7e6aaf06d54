"""`headrace model|pipeline|server ...`: Seldon-style control commands over the control API."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import click
import msgspec
import yaml
from rich.console import Console
from rich.table import Table

from headrace.config.errors import ConfigError
from headrace.config.manifests import (
    ModelManifest,
    manifest_files,
    parse_manifests,
    resolve_storage_uri,
)
from headrace.config.pipelines import parse_pipelines
from headrace.engine.scheduler import status as st
from headrace.engine.scheduler.client import DEFAULT_CONTROL_URL, ControlClient, ControlError

__all__ = ["ControlClient", "ControlError", "model", "pipeline", "server"]

F = TypeVar("F", bound=Callable[..., Any])
WAITABLE = {st.MODEL_READY, st.AVAILABLE, st.PROGRESSING, st.FAILED, st.SCHEDULE_FAILED, st.TERMINATED}


def control_option(func: F) -> F:
    return click.option(
        "--control",
        envvar="HEADRACE_CONTROL_URL",
        default=DEFAULT_CONTROL_URL,
        show_default=True,
        help="Control API URL of the scheduler (env HEADRACE_CONTROL_URL).",
    )(func)


def output_option(func: F) -> F:
    return click.option(
        "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
    )(func)


def _console() -> Console:
    return Console(width=max(100, Console().width), highlight=False, soft_wrap=True)


def _call(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except (ControlError, ConfigError) as exc:
        raise click.ClickException(exc.message) from None


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(msgspec.to_builtins(value), indent=2))


def _size(n: int) -> str:
    for unit, scale in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)


def _ready(status: st.ModelStatus) -> str:
    cond = status.condition(st.MODEL_READY)
    return cond.status if cond else "False"


def _models_table(statuses: list[st.ModelStatus]) -> None:
    table = Table("NAME", "STATE", "READY", "REPLICAS", "SERVER", "GEN", "REASON", box=None)
    for s in statuses:
        server = "inline" if s.inline else s.server or "-"
        replicas = f"{s.available_replicas}/{s.replicas}"
        table.add_row(s.name, s.state, _ready(s), replicas, server, str(s.generation), s.reason)
    _console().print(table)


def _model_detail(s: st.ModelStatus) -> None:
    console = _console()
    _models_table([s])
    console.print(f"storageUri: {s.storage_uri}  runtime: {s.runtime or '-'}  memory: {_size(s.memory)}")
    if s.requirements:
        console.print(f"requirements: {', '.join(s.requirements)}")
    for c in s.conditions:
        console.print(f"condition {c.type}={c.status} reason={c.reason} message={c.message}")
    if s.placement:
        table = Table("SERVER", "INDEX", "STATE", "MESSAGE", box=None)
        for p in s.placement:
            table.add_row(p.server, str(p.index), p.state, p.message)
        console.print(table)


# ------------------------------------------------------------------------------------ manifests


def _absolutize(doc: Any, base_dir: str) -> Any:
    """Rewrite a relative Model storageUri to an absolute path, since the scheduler has another cwd."""
    if isinstance(doc, dict) and doc.get("kind") == "Model" and isinstance(doc.get("spec"), dict):
        uri = doc["spec"].get("storageUri")
        relative = isinstance(uri, str) and "://" not in uri and not uri.startswith("file:")
        if relative and not os.path.isabs(os.path.expanduser(uri)):
            doc["spec"]["storageUri"] = resolve_storage_uri(uri, base_dir, "Model")
    return doc


def _read_manifests(paths: tuple[str, ...]) -> tuple[str, list[ModelManifest]]:
    """The YAML to send (relative storageUri resolved per file) and the Model manifests in it."""
    docs: list[Any] = []
    models: list[ModelManifest] = []
    for path in manifest_files(paths):
        text = path.read_text(encoding="utf-8")
        base = str(path.resolve().parent)
        try:
            models.extend(m for m in parse_manifests(text, base) if isinstance(m, ModelManifest))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.message}") from None
        docs.extend(_absolutize(d, base) for d in yaml.safe_load_all(text) if d is not None)
    if not docs:
        raise ConfigError("no manifests found in " + ", ".join(paths))
    return yaml.safe_dump_all(docs, sort_keys=False), models


# ---------------------------------------------------------------------------------- model group


@click.group()
def model() -> None:
    """Load, unload, inspect and call models (Seldon Model manifests)."""


@model.command("load")
@click.option("-f", "--file", "files", multiple=True, required=True, help="Model YAML file or directory.")
@control_option
@output_option
def model_load(files: tuple[str, ...], control: str, output: str) -> None:
    """Load (or reload) the models in a Seldon Model manifest."""
    text, _ = _call(lambda: _read_manifests(files))
    statuses = _call(lambda: ControlClient(control).load_models(text))
    if output == "json":
        _echo_json({"models": statuses})
    else:
        _models_table(statuses)


@model.command("unload")
@click.argument("names", nargs=-1)
@click.option("-f", "--file", "files", multiple=True, help="Unload the models named in this manifest.")
@control_option
@output_option
def model_unload(names: tuple[str, ...], files: tuple[str, ...], control: str, output: str) -> None:
    """Unload models by name (or those in a manifest)."""
    wanted = list(names)
    if files:
        wanted += [m.name for m in _call(lambda: _read_manifests(files))[1]]
    if not wanted:
        raise click.UsageError("give a model NAME or -f FILE")
    client = ControlClient(control)
    statuses: list[st.ModelStatus] = []
    for name in wanted:
        try:
            statuses.append(client.unload_model(name))
        except ControlError as exc:
            raise click.ClickException(exc.message) from None
    if output == "json":
        _echo_json({"models": statuses})
    else:
        _models_table(statuses)


def _met(status: st.ModelStatus, condition: str) -> bool:
    cond = status.condition(condition)
    if cond is not None:
        return cond.status == "True"
    return status.state == condition


@model.command("status")
@click.argument("name")
@click.option("-w", "--wait", "condition", help="Wait until this condition is True (e.g. ModelReady).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait with -w.")
@control_option
@output_option
def model_status(name: str, condition: str | None, timeout: float, control: str, output: str) -> None:
    """Show a model's status; with -w wait for a condition (ModelReady) or state (ModelAvailable)."""
    if condition is not None and condition not in WAITABLE:
        raise click.BadParameter(f"expected one of {', '.join(sorted(WAITABLE))}", param_hint="-w")
    client = ControlClient(control)
    status = _wait_for(
        "model", name, lambda: client.model_status(name), _met, st.TERMINATED, condition, timeout,
        lambda status: _show_status(status, output),
    )  # fmt: skip
    if status is not None:
        _show_status(status, output)


S = TypeVar("S")


def _wait_for(
    kind: str,
    name: str,
    fetch: Callable[[], S],
    met: Callable[[S, str], bool],
    terminated: str,
    condition: str | None,
    timeout: float,
    show: Callable[[S], None],
) -> S | None:
    """The current status, or with ``condition`` the first one meeting it (None: the resource is gone
    and that was the wait). Keeps trying through a scheduler restart until the timeout."""
    deadline = time.monotonic() + timeout
    status: S | None = None
    error = ""
    while True:
        try:
            status = fetch()
        except ControlError as exc:
            if exc.status == 404 and condition == terminated:
                click.echo(f"{kind} {name}: {terminated}")
                return None
            if condition is None or exc.status != 0:
                raise click.ClickException(exc.message) from None
            error = exc.message  # the scheduler may be restarting: keep trying until the timeout
        else:
            if condition is None or met(status, condition):
                return status
        if time.monotonic() >= deadline:
            if status is not None:
                show(status)
            suffix = f" ({error})" if error else ""
            raise click.ClickException(f"timed out after {timeout:g}s waiting for {name} {condition}{suffix}")
        time.sleep(0.1)


def _show_status(status: st.ModelStatus, output: str) -> None:
    if output == "json":
        _echo_json(status)
    else:
        _model_detail(status)


@model.command("list")
@control_option
@output_option
def model_list(control: str, output: str) -> None:
    """List models and their states."""
    statuses = _call(lambda: ControlClient(control).list_models())
    if output == "json":
        _echo_json({"models": statuses})
    else:
        _models_table(statuses)


def infer_options(func: Any) -> Any:
    """The arguments and options shared by `model infer` and `pipeline infer`."""
    decorators = [
        click.argument("name"),
        click.argument("payload", required=False),
        click.option(
            "-f", "--file", "payload_file", type=click.File("rb"), help="Read the request JSON from a file."
        ),
        click.option("--inference-host", default="127.0.0.1:9000", show_default=True, help="REST host:port."),
        click.option(
            "-i", "--iterations", type=int, default=1, show_default=True, help="Send the request N times."
        ),
        click.option("--header", "headers", multiple=True, help="Extra request header k=v."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@model.command("infer")
@infer_options
def model_infer(
    name: str,
    payload: str | None,
    payload_file: Any,
    inference_host: str,
    iterations: int,
    headers: tuple[str, ...],
) -> None:
    """POST an Open Inference Protocol request to /v2/models/NAME/infer and print the response."""
    _infer(name, payload, payload_file, inference_host, iterations, headers, {})


def _infer(
    name: str,
    payload: str | None,
    payload_file: Any,
    inference_host: str,
    iterations: int,
    headers: tuple[str, ...],
    fixed: dict[str, str],
) -> None:
    body = payload_file.read() if payload_file is not None else (payload or "").encode()
    if not body:
        raise click.UsageError("give the request JSON as an argument or with -f FILE")
    try:
        json.loads(body)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="PAYLOAD") from None
    host = inference_host if "://" in inference_host else f"http://{inference_host}"
    url = f"{host.rstrip('/')}/v2/models/{name}/infer"
    extra = {**dict(h.split("=", 1) for h in headers if "=" in h), **fixed}
    start = time.perf_counter()
    for _ in range(max(1, iterations)):
        code, data = _post(url, body, {"Content-Type": "application/json", **extra})
        if code >= 400:
            raise click.ClickException(f"HTTP {code}: {data.decode(errors='replace')}")
    elapsed = time.perf_counter() - start
    try:
        click.echo(json.dumps(json.loads(data), indent=2))
    except ValueError:
        click.echo(data.decode(errors="replace"))
    if iterations > 1:
        click.echo(f"{iterations} requests in {elapsed:.3f}s ({iterations / elapsed:.1f}/s)", err=True)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


# ------------------------------------------------------------------------------- pipeline group

PIPELINE_STATES = {
    st.PIPELINE_CREATING,
    st.PIPELINE_READY,
    st.PIPELINE_FAILED,
    st.PIPELINE_TERMINATING,
    st.PIPELINE_TERMINATED,
}
PIPELINE_WAITABLE = PIPELINE_STATES | {st.MODELS_READY, st.PIPELINE_GW_READY, st.READY}


@click.group()
def pipeline() -> None:
    """Load, unload, inspect and call pipelines (Seldon Pipeline manifests)."""


def _read_pipelines(paths: tuple[str, ...]) -> tuple[str, list[str]]:
    """The YAML to send (every file's documents) and the pipeline names in it; errors name the file."""
    texts: list[str] = []
    names: list[str] = []
    for path in manifest_files(paths):
        text = path.read_text(encoding="utf-8")
        try:
            names.extend(p.name for p in parse_pipelines(text))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.message}") from None
        texts.append(text)
    if not names:
        raise ConfigError("no Pipeline manifests found in " + ", ".join(paths))
    return "\n---\n".join(texts), names


def _pipeline_ready(status: st.PipelineStatus) -> str:
    cond = status.condition(st.READY)
    return cond.status if cond else "False"


def _pipelines_table(statuses: list[st.PipelineStatus]) -> None:
    table = Table("NAME", "STATE", "READY", "VERSION", "STEPS", "REASON", box=None)
    for s in statuses:
        steps = ", ".join(s.steps)
        table.add_row(s.name, s.state, _pipeline_ready(s), str(s.version), steps, s.reason)
    _console().print(table)


def _pipeline_detail(s: st.PipelineStatus) -> None:
    console = _console()
    _pipelines_table([s])
    console.print(f"inputs: {s.input_topic}  outputs: {s.output_topic}  timeout: {s.timeout_s:g}s")
    for c in s.conditions:
        console.print(f"condition {c.type}={c.status} reason={c.reason} message={c.message}")
    missing = [t.name for t in s.topics if not t.exists]
    if missing:
        console.print(f"missing topics: {', '.join(missing)}")
    console.print(
        f"runs on {s.workers_used} workers; the cluster's replicas by Seldon's formulas: dataflow "
        f"{s.dataflow_replicas}, pipeline gateway {s.pipeline_gateway_replicas}"
    )
    if s.workers:
        table = Table("WORKER", "VERSION", "PARTITIONS", "SERVING", "HANDING OVER", "ERROR", box=None)
        for w in s.workers:
            table.add_row(
                w.worker or str(w.index),
                str(w.version or "-"),
                _partitions(w.partitions),
                _partitions(w.active),
                _partitions(w.draining),
                w.error,
            )
        console.print(table)


def _partitions(partitions: list[int]) -> str:
    return ",".join(str(p) for p in partitions) or "-"


def _show_pipelines(statuses: list[st.PipelineStatus], output: str) -> None:
    if output == "json":
        _echo_json({"pipelines": statuses})
    else:
        _pipelines_table(statuses)


@pipeline.command("load")
@click.option("-f", "--file", "files", multiple=True, required=True, help="Pipeline YAML file or directory.")
@control_option
@output_option
def pipeline_load(files: tuple[str, ...], control: str, output: str) -> None:
    """Load (or reload) the pipelines in Seldon Pipeline manifests: all of them, or none."""
    text, _ = _call(lambda: _read_pipelines(files))
    _show_pipelines(_call(lambda: ControlClient(control).load_pipelines(text)), output)


@pipeline.command("unload")
@click.argument("names", nargs=-1)
@click.option("-f", "--file", "files", multiple=True, help="Unload the pipelines named in this manifest.")
@control_option
@output_option
def pipeline_unload(names: tuple[str, ...], files: tuple[str, ...], control: str, output: str) -> None:
    """Unload pipelines by name (or those in a manifest)."""
    wanted = list(names)
    if files:
        wanted += _call(lambda: _read_pipelines(files))[1]
    if not wanted:
        raise click.UsageError("give a pipeline NAME or -f FILE")
    client = ControlClient(control)
    statuses: list[st.PipelineStatus] = []
    for name in wanted:
        try:
            statuses.append(client.unload_pipeline(name))
        except ControlError as exc:
            raise click.ClickException(exc.message) from None
    _show_pipelines(statuses, output)


def _pipeline_met(status: st.PipelineStatus, wanted: str) -> bool:
    if wanted in PIPELINE_STATES:  # PipelineReady is a state (as `seldon pipeline status -w`) first
        return status.state == wanted
    cond = status.condition(wanted)
    return cond is not None and cond.status == "True"


@pipeline.command("status")
@click.argument("name")
@click.option("-w", "--wait", "condition", help="Wait for a state (PipelineReady) or condition (Ready).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait with -w.")
@control_option
@output_option
def pipeline_status(name: str, condition: str | None, timeout: float, control: str, output: str) -> None:
    """Show a pipeline's status; with -w wait for a state or condition to hold."""
    if condition is not None and condition not in PIPELINE_WAITABLE:
        raise click.BadParameter(f"expected one of {', '.join(sorted(PIPELINE_WAITABLE))}", param_hint="-w")
    client = ControlClient(control)
    status = _wait_for(
        "pipeline", name, lambda: client.pipeline_status(name), _pipeline_met, st.PIPELINE_TERMINATED,
        condition, timeout, lambda status: _show_pipeline(status, output),
    )  # fmt: skip
    if status is not None:
        _show_pipeline(status, output)


def _show_pipeline(status: st.PipelineStatus, output: str) -> None:
    if output == "json":
        _echo_json(status)
    else:
        _pipeline_detail(status)


@pipeline.command("list")
@control_option
@output_option
def pipeline_list(control: str, output: str) -> None:
    """List pipelines and their states."""
    _show_pipelines(_call(lambda: ControlClient(control).list_pipelines()), output)


@pipeline.command("infer")
@infer_options
def pipeline_infer(
    name: str,
    payload: str | None,
    payload_file: Any,
    inference_host: str,
    iterations: int,
    headers: tuple[str, ...],
) -> None:
    """POST a request to /v2/models/NAME/infer with Seldon-Model: NAME.pipeline and print the response."""
    fixed = {"Seldon-Model": f"{name}.pipeline"}
    _infer(name, payload, payload_file, inference_host, iterations, headers, fixed)


# --------------------------------------------------------------------------------- server group


@click.group()
def server() -> None:
    """Inspect model servers and their replicas."""


def _servers_table(statuses: list[st.ServerStatus]) -> None:
    table = Table("NAME", "CONFIG", "REPLICAS", "CONNECTED", "LOADED MODELS", "CAPABILITIES", box=None)
    for s in statuses:
        connected = sum(1 for r in s.replica_status if r.connected)
        caps = ", ".join(s.capabilities)
        table.add_row(s.name, s.server_config, str(s.replicas), str(connected), str(s.loaded_models), caps)
    _console().print(table)


@server.command("list")
@control_option
@output_option
def server_list(control: str, output: str) -> None:
    """List servers."""
    statuses = _call(lambda: ControlClient(control).list_servers())
    if output == "json":
        _echo_json({"servers": statuses})
    else:
        _servers_table(statuses)


@server.command("status")
@click.argument("name")
@control_option
@output_option
def server_status(name: str, control: str, output: str) -> None:
    """Show a server's replicas: connection, pid, models, memory."""
    status = _call(lambda: ControlClient(control).server_status(name))
    if output == "json":
        _echo_json(status)
        return
    _servers_table([status])
    table = Table("REPLICA", "CONNECTED", "PID", "MEMORY USED", "CAPACITY", "MODELS", box=None)
    for r in status.replica_status:
        models = ", ".join(f"{m.name}:{m.generation}:{m.state}" for m in r.models) or "-"
        table.add_row(
            f"{status.name}-{r.index}",
            "yes" if r.connected else "no",
            str(r.pid or "-"),
            _size(r.memory_used),
            _size(r.memory_capacity),
            models,
        )
    _console().print(table)


if __name__ == "__main__":  # python -m headrace.control_cli model ...
    cli = click.Group(commands={"model": model, "pipeline": pipeline, "server": server})
    sys.exit(cli.main())


@pipeline.command("inspect")
@click.argument("expr")
@click.option(
    "--offset", type=int, default=1, show_default=True, help="How many of the last records to show."
)
@click.option("--request-id", help="Only the records of this request.")
@click.option("--format", "fmt", type=click.Choice(["json", "raw"]), default="json", show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Show the records' headers.")
@click.option("-t", "--truncate", is_flag=True, help="Show at most a few elements of each tensor.")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings (Kafka, topics)"
)
@control_option
def pipeline_inspect(
    expr: str,
    offset: int,
    request_id: str | None,
    fmt: str,
    verbose: bool,
    truncate: bool,
    config_file: str | None,
    control: str,
) -> None:
    """The last records on a pipeline's topics: EXPR is p, p.inputs, p.outputs, p.STEP, p.STEP.inputs,
    p.STEP.outputs or p.STEP.outputs.TENSOR. Kafka and topic names come from the settings (flags'
    HEADRACE_* variables, KAFKA_BOOTSTRAP_SERVERS, --config)."""
    from headrace.config.settings import load_settings
    from headrace.engine import topics as t
    from headrace.pipeline_inspect import read_last, render, resolve

    if offset < 1:
        raise click.UsageError("--offset must be at least 1")
    settings = _call(lambda: load_settings(config_file))
    name = expr.split(".", 1)[0]
    status = _call(lambda: ControlClient(control).pipeline_status(name))
    targets = _call(
        lambda: resolve(expr, list(status.steps), t.Topics(settings.topic_prefix, settings.namespace))
    )
    for target in targets:
        records = _call(functools.partial(read_last, settings, target, offset, request_id))
        if not records:
            click.echo(f"{target.topic}: no records" + (f" of request {request_id}" if request_id else ""))
        for msg in records:
            click.echo(render(msg, target, fmt=fmt, verbose=verbose, truncate=truncate))


@pipeline.command("replay")
@click.argument("name")
@click.option("--request-id", "request_ids", multiple=True, help="Replay this request (repeatable).")
@click.option("--offset", type=int, help="Replay the last N recorded inputs.")
@click.option("--partition", type=int, help="With --from-offset/--to-offset: the inputs topic's partition.")
@click.option("--from-offset", type=int, default=0, show_default=True, help="First offset of the range.")
@click.option("--to-offset", type=int, help="Offset after the range's last (default: the end).")
@click.option("--to", "to", help="Send to this pipeline instead (e.g. a new version loaded beside it).")
@click.option(
    "--inference-grpc-host", help="The gRPC gateway host:port (default: the settings' host and grpc port)."
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings (Kafka, topics)"
)
def pipeline_replay(
    name: str,
    request_ids: tuple[str, ...],
    offset: int | None,
    partition: int | None,
    from_offset: int,
    to_offset: int | None,
    to: str | None,
    inference_grpc_host: str | None,
    fmt: str,
    config_file: str | None,
) -> None:
    """Re-submit NAME's recorded inputs (from its inputs topic) through the pipeline, or through --to,
    and show each new answer beside the recorded one. Exits 1 when any answer differs."""
    from headrace.config.settings import load_settings
    from headrace.pipeline_replay import Selection, replay

    chosen = [bool(request_ids), offset is not None, partition is not None]
    if sum(chosen) > 1:
        raise click.UsageError("give one of --request-id, --offset or --partition (with a range)")
    if offset is not None and offset < 1:
        raise click.UsageError("--offset must be at least 1")
    sel = Selection(request_ids, offset, partition, from_offset, to_offset)
    settings = _call(lambda: load_settings(config_file))
    target = inference_grpc_host or f"{settings.host}:{settings.grpc_port}"
    results = _call(functools.partial(replay, settings, name, sel, target, to))
    if fmt == "json":
        _echo_json([{**msgspec.to_builtins(r), "same": r.same} for r in results])
    else:
        for r in results:
            click.echo(f"request {r.request_id} ({r.source}) replayed as {r.replay_id}: "
                       + ("same" if r.same else "differs"))  # fmt: skip
            recorded = r.recorded_error or (json.dumps(r.recorded) if r.recorded else "(no recorded answer)")
            click.echo(f"  recorded: {recorded}")
            click.echo(f"  replayed: {r.replayed_error or json.dumps(r.replayed)}")
        differ = sum(not r.same for r in results)
        click.echo(f"{len(results)} replayed: {len(results) - differ} same, {differ} differ")
    if any(not r.same for r in results):
        sys.exit(1)


@click.group()
def sharding() -> None:
    """Where pipelines and the model gateway's slots run: units on workers, and the multiplier."""


def _sharding_detail(s: st.ShardingStatus) -> None:
    console = _console()
    multiplier = s.max_shard_count_multiplier or f"{s.partitions} (the partitions)"
    console.print(
        f"partitions {s.partitions}, maxShardCountMultiplier {multiplier}: each pipeline or model slot on at "
        f"most {s.shards} workers; no worker above {s.load_cap} units (epsilon {s.epsilon:g})"
    )
    console.print(
        f"{s.units} units ({s.pipelines} pipelines, {s.models} models), {s.moving} moving, "
        f"{s.moves} moved since the scheduler started"
    )
    roles = Table("ROLE", "REPLICAS (SELDON'S FORMULA)", "WORKERS USED", box=None)
    roles.add_row("dataflow", str(s.dataflow.formula), str(s.dataflow.used))
    roles.add_row("pipeline gateway", str(s.pipeline_gateway.formula), str(s.pipeline_gateway.used))
    roles.add_row("model gateway", str(s.model_gateway.formula), str(s.model_gateway.used))
    console.print(roles)
    table = Table("WORKER", "UNITS", "SERVING", "HANDING OVER", "LEAVING", box=None)
    for w in s.workers:
        table.add_row(w.worker, str(w.units), str(w.active), str(w.draining), "yes" if w.leaving else "")
    console.print(table)


@sharding.command("status")
@control_option
@output_option
def sharding_status(control: str, output: str) -> None:
    """The placement: workers, their units, and the replicas each role uses."""
    status = _call(lambda: ControlClient(control).sharding())
    if output == "json":
        _echo_json(status)
    else:
        _sharding_detail(status)


@sharding.command("set")
@click.option(
    "--max-shard-count-multiplier",
    "multiplier",
    type=click.IntRange(min=0),
    required=True,
    help="Workers one pipeline or model slot is spread over at most (0: the partitions).",
)
@control_option
@output_option
def sharding_set(multiplier: int, control: str, output: str) -> None:
    """Change maxShardCountMultiplier at run time: units move to their new workers at once, each
    handed over without losing a request."""
    status = _call(lambda: ControlClient(control).set_multiplier(multiplier))
    if output == "json":
        _echo_json(status)
    else:
        _sharding_detail(status)
