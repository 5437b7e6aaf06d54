"""The service recipes (systemd unit and env file, Containerfile) agree with the code: signals, settings."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import msgspec

from headrace.config.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "config" / "systemd"
SETTING_NAMES = {f"HEADRACE_{f.name.upper()}" for f in msgspec.structs.fields(Settings)}


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(SYSTEMD / "headrace.service")
    return parser


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value.strip())
    assert m is not None, value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_unit_is_a_notify_service_signalled_by_its_supervisor() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"  # the supervisor sends, not its children
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # the supervisor alone gets SIGTERM and drains in order
    assert service["Restart"] == "on-failure"
    assert seconds(service["WatchdogSec"]) >= 2
    assert service["EnvironmentFile"].lstrip("-") == "/etc/headrace/headrace.env"


def test_unit_gives_the_drain_more_than_the_grace_period() -> None:
    service = unit()["Service"]
    assert seconds(service["TimeoutStopSec"]) > Settings().grace_period_s + 10


def test_env_file_names_only_real_settings() -> None:
    text = (SYSTEMD / "headrace.env").read_text()
    named = set(re.findall(r"^#?(HEADRACE_[A-Z0-9_]+)=", text, re.M))
    assert named, "the example names no settings"
    assert named <= SETTING_NAMES, named - SETTING_NAMES
    environment = unit()["Service"]["Environment"]
    assert environment.split("=", 1)[0] in SETTING_NAMES


def containerfile() -> dict[str, list[str]]:
    """Instructions of the final stage: name -> arguments (continuation lines joined)."""
    text = (REPO / "Containerfile").read_text().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    out: dict[str, list[str]] = {}
    for line in final.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, rest = line.strip().partition(" ")
            out.setdefault(name.upper(), []).append(rest.strip())
    return out


def test_container_runs_unprivileged_and_stops_with_sigterm() -> None:
    c = containerfile()
    assert c["STOPSIGNAL"] == ["SIGTERM"]
    assert c["USER"] and c["USER"][-1] not in ("root", "0")
    assert set(" ".join(c["EXPOSE"]).split()) == {str(Settings().http_port), str(Settings().grpc_port)}


def test_container_env_binds_every_interface_and_keeps_data_on_the_volume() -> None:
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(c for c in containerfile()["ENV"])))
    assert env["HEADRACE_HOST"] == "0.0.0.0"
    assert containerfile()["VOLUME"] == [env["HEADRACE_DATA_DIR"]]
    named = {k for k in env if k.startswith("HEADRACE_")}
    assert named <= SETTING_NAMES, named - SETTING_NAMES
