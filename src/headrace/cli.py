"""The `headrace` command: `serve` (the supervisor and its children) plus control-plane commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from headrace.config.errors import ConfigError
from headrace.config.logs import setup_logging
from headrace.config.settings import Settings, load_settings


def _settings_options(func: Any) -> Any:
    """One `--flag` per Settings field, so flags, TOML keys and HEADRACE_* names never drift apart."""
    for f in reversed(msgspec.structs.fields(Settings)):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, tuple) or f.default_factory is not msgspec.NODEFAULT:
            continue  # list and table settings have dedicated options below
        kind: Any = type(default) if default is not None else str
        func = click.option(flag, f.name, type=kind, default=None, help=f"[env HEADRACE_{f.name.upper()}]")(
            func
        )
    return func


@click.group()
@click.version_option(package_name="headrace")
def cli() -> None:
    """headrace: a fast Open Inference Protocol data plane for models and pipelines."""


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file")
@click.option("--load", "load_files", multiple=True, help="Model manifest file or folder to load at start")
@click.option("--server-file", "server_files", multiple=True, help="Seldon Server manifest to run")
@click.option(
    "--kafka-config",
    "kafka_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="librdkafka property for every Kafka client (repeat; producer./consumer./admin. prefixes)",
)
@_settings_options
def serve(
    config_file: str | None,
    load_files: tuple[str, ...],
    server_files: tuple[str, ...],
    kafka_config: tuple[str, ...],
    **flags: Any,
) -> None:
    """Run the supervisor: workers, model servers and the scheduler."""
    if load_files:
        flags["load_files"] = tuple(str(Path(p).resolve()) for p in load_files)
    if server_files:
        flags["server_files"] = tuple(str(Path(p).resolve()) for p in server_files)
    if kafka_config:
        pairs = [item.partition("=") for item in kafka_config]
        if any(not key or not sep for key, sep, _ in pairs):
            raise click.BadParameter("expected KEY=VALUE", param_hint="--kafka-config")
        flags["kafka_config"] = {key.strip(): value for key, _, value in pairs}
    try:
        settings = load_settings(config_file, flags)
        settings = msgspec.structs.replace(settings, data_dir=str(Path(settings.data_dir).resolve()))
        from headrace.service import run_service

        code = run_service(settings)
    except ConfigError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    sys.exit(code)


def _register_control_commands() -> None:
    try:
        from headrace.control_cli import model, pipeline, server, sharding
    except ImportError:  # pragma: no cover - during development only
        return
    cli.add_command(model)
    cli.add_command(pipeline)
    cli.add_command(server)
    cli.add_command(sharding)


_register_control_commands()


def main() -> None:
    setup_logging(os.environ.get("HEADRACE_LOG_LEVEL", "info"), "supervisor")
    cli()
