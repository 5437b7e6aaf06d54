"""The real scheduler process driven by the real CLI over HTTP; a replica simulated by POSTing reports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from headrace.control_cli import ControlClient, ControlError, model, server
from headrace.gateway.control import LoadedModel, RoutingTable, ServerReport

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

MODEL_YAML = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: echo
spec:
  storageUri: ./repo/echo
  requirements: [python]
  memory: 10Mi
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scheduler:
    def __init__(self, data_dir: Path, load_files: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.load_files = load_files
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = ControlClient(self.url, timeout=5)

    def start(self) -> Scheduler:
        overrides = {
            "control_port": self.port,
            "data_dir": str(self.data_dir),
            "server_replicas": 1,
            "load_files": self.load_files,
        }
        code = (
            "from headrace.engine.scheduler.main import run\n"
            "from headrace.config.settings import load_settings\n"
            f"run(load_settings(overrides={overrides!r}))\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
        log = open(self.data_dir / "scheduler.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log, env=env)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(ControlError):
                self.client.health()
                return self
            time.sleep(0.05)
        raise AssertionError(f"scheduler did not start:\n{self.log()}")

    def log(self) -> str:
        return (self.data_dir / "scheduler.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "repo" / "echo").mkdir(parents=True)
    (tmp_path / "repo" / "echo" / "model.py").write_text("")
    (tmp_path / "echo.yaml").write_text(MODEL_YAML)
    (tmp_path / "data").mkdir()
    return tmp_path


@pytest.fixture
def scheduler(workdir: Path) -> Iterator[Scheduler]:
    running = Scheduler(workdir / "data").start()
    yield running
    running.stop(signal.SIGKILL)


def cli(group: Any, *args: str) -> Result:
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def report(sched: Scheduler, *models: tuple[str, int, str], started: float = 1.0) -> None:
    loaded = [LoadedModel(name=n, generation=g, state=s, platform="python") for n, g, s in models]
    desired = sched.client.desired("headrace", 0).version
    sched.client.report_server(
        ServerReport(
            server="headrace", index=0, pid=4242, started_at=started, desired_version=desired, models=loaded
        )
    )


def test_load_report_ready_routes_and_restart(workdir: Path, scheduler: Scheduler) -> None:
    url = scheduler.url
    result = cli(model, "load", "-f", str(workdir / "echo.yaml"), "--control", url)
    assert result.exit_code == 0, result.output
    assert "echo" in result.output and "ModelProgressing" in result.output

    status = json.loads(cli(model, "status", "echo", "-o", "json", "--control", url).output)
    assert status["state"] == "ModelProgressing"
    assert status["storageUri"] == str(workdir / "repo" / "echo")  # resolved by the CLI
    assert status["placement"] == [
        {
            "server": "headrace",
            "index": 0,
            "state": "LoadRequested",
            "message": "waiting for the replica to connect",
        }
    ]
    desired = scheduler.client.desired("headrace", 0, after=0, wait=0)
    assert [(m.name, m.runtime, m.generation) for m in desired.models] == [("echo", "python", 1)]

    # A worker long-polls routes; the replica's "Loaded" report wakes it.
    first = scheduler.client.routes()
    assert not first.models["echo"].ready
    polled: list[RoutingTable] = []
    waiter = threading.Thread(target=lambda: polled.append(scheduler.client.routes(first.version, wait=10)))
    waiter.start()
    time.sleep(0.2)
    assert not polled
    report(scheduler, ("echo", 1, "Loaded"))
    waiter.join(10)
    assert polled and polled[0].version > first.version and polled[0].models["echo"].ready
    assert polled[0].models["echo"].replicas[0].socket.endswith("run/headrace-0.sock")

    result = cli(model, "status", "echo", "-w", "ModelReady", "--timeout", "5", "--control", url)
    assert result.exit_code == 0, result.output
    assert "ModelAvailable" in result.output
    listed = json.loads(cli(model, "list", "-o", "json", "--control", url).output)
    assert [(m["name"], m["availableReplicas"]) for m in listed["models"]] == [("echo", 1)]
    servers = json.loads(cli(server, "list", "-o", "json", "--control", url).output)["servers"]
    assert servers[0]["replicaStatus"][0]["connected"] and servers[0]["loadedModels"] == 1
    assert cli(server, "status", "headrace", "--control", url).exit_code == 0

    # kill -9: the state is durable; after a restart the model is back at the same generation.
    old_version = polled[0].version
    scheduler.stop(signal.SIGKILL)
    scheduler.start()
    back = scheduler.client.model_status("echo")
    assert back.generation == 1 and back.placement[0].server == "headrace"
    with pytest.raises(ControlError) as info:  # a worker's old table stays until replicas report
        scheduler.client.routes(old_version, wait=0)
    assert info.value.status == 503
    report(scheduler, ("echo", 1, "Loaded"), started=1.0)
    table = scheduler.client.routes(old_version, wait=0)
    assert table.version > old_version and table.models["echo"].ready
    assert cli(model, "status", "echo", "-w", "ModelReady", "--timeout", "5", "--control", url).exit_code == 0

    # Unload: terminating until the replica drops it, then gone.
    result = cli(model, "unload", "echo", "--control", url)
    assert result.exit_code == 0 and "ModelTerminating" in result.output
    assert scheduler.client.desired("headrace", 0).models == []
    report(scheduler)
    result = cli(model, "status", "echo", "--control", url)
    assert result.exit_code != 0 and "model echo not found" in result.output
    assert scheduler.stop() == 0


def test_cli_errors_are_plain(workdir: Path, scheduler: Scheduler) -> None:
    url = scheduler.url
    bad = workdir / "bad.yaml"
    bad.write_text(MODEL_YAML.replace("  memory: 10Mi\n", "  memory: 10Mi\n  explainer: {type: anchor}\n"))
    result = cli(model, "load", "-f", str(bad), "--control", url)
    assert result.exit_code != 0 and "spec.explainer is not supported by headrace" in result.output
    assert "Traceback" not in result.output

    # The API itself rejects what the CLI would: the error names the field.
    with pytest.raises(ControlError, match=r"spec\.storageUri gs://x/y: only local paths") as info:
        scheduler.client.load_models(MODEL_YAML.replace("./repo/echo", "gs://x/y"))
    assert info.value.status == 400

    many = workdir / "many.yaml"
    many.write_text(MODEL_YAML.replace("  memory: 10Mi\n", "  replicas: 3\n"))
    assert cli(model, "load", "-f", str(many), "--control", url).exit_code == 0
    status = json.loads(cli(model, "status", "echo", "-o", "json", "--control", url).output)
    assert status["state"] == "ScheduleFailed"
    assert status["reason"] == "model needs 3 replicas but server headrace has 1 (capabilities ok)"
    result = cli(model, "status", "echo", "-w", "ModelReady", "--timeout", "0.3", "--control", url)
    assert result.exit_code != 0 and "timed out" in result.output and "ScheduleFailed" in result.output

    assert "not found" in cli(model, "unload", "nope", "--control", url).output
    unreachable = f"http://127.0.0.1:{free_port()}"
    result = cli(model, "list", "--control", unreachable)
    assert result.exit_code != 0 and "cannot reach the scheduler" in result.output


def test_load_files_are_idempotent_across_restarts(workdir: Path) -> None:
    sched = Scheduler(workdir / "data", load_files=(str(workdir / "echo.yaml"),)).start()
    try:
        assert sched.client.model_status("echo").generation == 1
        sched.stop()
        sched.start()
        assert [(m.name, m.generation) for m in sched.client.list_models()] == [("echo", 1)]
    finally:
        sched.stop(signal.SIGKILL)


class _Infer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        data = json.dumps({"model_name": self.path.split("/")[3], "echo": json.loads(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_infer_posts_to_the_data_plane() -> None:
    httpd = HTTPServer(("127.0.0.1", 0), _Infer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{httpd.server_address[1]}"
        payload = '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}'
        result = cli(model, "infer", "echo", payload, "--inference-host", host, "-i", "2")
        assert result.exit_code == 0, result.output
        assert '"model_name": "echo"' in result.output
    finally:
        httpd.shutdown()
        httpd.server_close()
