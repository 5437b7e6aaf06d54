"""The scenarios' options (model, pipeline, gRPC and control addresses) and each run's set-up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from locust import events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import StatsError

from loadtests.locust import CONTROL_PORT, GRPC_PORT, REPO_DIR, buckets

SAMPLE_ECHO = REPO_DIR / "config" / "samples" / "model-repo" / "echo"


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def add_options(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--model", env_var="LOCUST_MODEL", default="echo", help="Model to call (default echo)."
    )
    parser.add_argument(
        "--pipeline", env_var="LOCUST_PIPELINE", default="demo", help="Pipeline to call (default demo)."
    )
    parser.add_argument(
        "--grpc-host",
        env_var="LOCUST_GRPC_HOST",
        default="",
        help=f"gRPC HOST:PORT (default: --host's host, port {GRPC_PORT}).",
    )
    parser.add_argument(
        "--control-url",
        env_var="LOCUST_CONTROL_URL",
        default="",
        help=f"Control API URL (default: http://<--host's host>:{CONTROL_PORT}).",
    )
    parser.add_argument(
        "--churn-model",
        env_var="LOCUST_CHURN_MODEL",
        default="loadtest-churn",
        help="load_unload: name of the model loaded and unloaded (default loadtest-churn).",
    )
    parser.add_argument(
        "--churn-storage-uri",
        env_var="LOCUST_CHURN_STORAGE_URI",
        default=str(SAMPLE_ECHO),
        help="load_unload: its storageUri, a folder on the server's host (default: the sample echo model).",
    )
    parser.add_argument(
        "--errors-file",
        env_var="LOCUST_ERRORS_FILE",
        default="",
        include_in_web_ui=False,
        help="At exit, write the failures and locustfile errors as JSON to this file.",
    )


@events.init.add_listener  # type: ignore[untyped-decorator]
def on_init(environment: Environment, **_: Any) -> None:
    buckets.install()
    path = _option(environment.parsed_options, "errors_file", "")
    if path and not isinstance(environment.runner, WorkerRunner):
        environment.events.quit.add_listener(  # type: ignore[no-untyped-call]
            lambda **_: write_errors(environment, Path(path))
        )


def write_errors(environment: Environment, path: Path) -> None:
    """The final failures (by request type, name and error) and exceptions raised in the locustfile;
    locust's own --csv files are rewritten once a second, so they may miss the last second."""
    runner = environment.runner
    failures = [
        {
            "type": e.method,
            "name": e.name,
            "error": StatsError.parse_error(e.error),
            "occurrences": e.occurrences,
        }
        for e in environment.stats.errors.values()
    ]
    exceptions = [
        {"count": x["count"], "message": x["msg"], "traceback": x["traceback"]}
        for x in (runner.exceptions.values() if runner is not None else [])
    ]
    path.write_text(json.dumps({"failures": failures, "exceptions": exceptions}, indent=2))


@dataclass(frozen=True)
class Settings:
    """Where and what the users call."""

    grpc_target: str  # host:port
    control_url: str  # http://host:port
    model: str
    pipeline: str
    churn_model: str
    churn_storage_uri: str


def settings(environment: Environment) -> Settings:
    """The options, with the gRPC and control addresses derived from --host where not given."""
    if not environment.host:
        raise ValueError("give the server's REST address with --host http://HOST:PORT")
    opts = environment.parsed_options
    host = urlsplit(environment.host).hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return Settings(
        grpc_target=_option(opts, "grpc_host", "") or f"{host}:{GRPC_PORT}",
        control_url=(_option(opts, "control_url", "") or f"http://{host}:{CONTROL_PORT}").rstrip("/"),
        model=_option(opts, "model", "echo"),
        pipeline=_option(opts, "pipeline", "demo"),
        churn_model=_option(opts, "churn_model", "loadtest-churn"),
        churn_storage_uri=_option(opts, "churn_storage_uri", str(SAMPLE_ECHO)),
    )


def _option(opts: Any, name: str, default: str) -> str:
    """An option's value; the default when locust runs without our parser (e.g. as a library)."""
    value = getattr(opts, name, None) if opts is not None else None
    return str(value) if value else default
