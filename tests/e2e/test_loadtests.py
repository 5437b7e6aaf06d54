"""Each locust scenario for a few seconds, as `python -m loadtests.locust` runs it, against a real server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import HEADRACE, SAMPLES, Serve

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]  # the first test also waits for the server

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "config" / "samples" / "pipelines"
REST_ECHO = ("POST", "/v2/models/echo/infer")
GRPC_ECHO = ("gRPC", "ModelInfer echo")
PIPELINE_DEMO = ("POST", "/v2/models/demo/infer [demo.pipeline]")
# the request types each scenario must report, every one with requests and without failures
EXPECTED = {
    "rest_model": {REST_ECHO},
    "grpc_model": {GRPC_ECHO},
    "pipeline": {PIPELINE_DEMO},
    "mixed": {REST_ECHO, GRPC_ECHO, PIPELINE_DEMO},
    "load_unload": {
        REST_ECHO,
        ("control", "load loadtest-churn"),
        ("POST", "/v2/models/loadtest-churn/infer"),
        ("control", "unload loadtest-churn"),
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """The sample models and the demo pipeline, as `make run` serves them (embedded Kafka)."""
    s = Serve(
        tmp_path_factory.mktemp("loadtests") / "data",
        kafka=True,
        extra=["--load", str(SAMPLES), "--load", str(PIPELINES)],
    )
    try:
        s.start()
        env = {**os.environ, "HEADRACE_CONTROL_URL": s.control}
        cmd = [HEADRACE, "pipeline", "status", "demo", "-w", "PipelineReady", "--timeout", "60"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=90)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        s.wait_ready("/v2/pipelines/demo/ready")
        yield s
    finally:
        s.stop()


def run_loadtest(
    s: Serve, scenario: str, *args: str, run_time: str = "4s", timeout: float = 60
) -> tuple[int, str, dict[str, Any]]:
    """The runner's exit code, what it printed and its JSON summary; it (and locust under it) is
    stopped if it outlives ``timeout``."""
    summary = s.data_dir.parent / f"{scenario}-summary.json"
    summary.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "loadtests.locust", scenario,
        "--target", f"127.0.0.1:{s.http_port}",
        "--grpc-host", s.grpc_url,
        "--control-url", s.control,
        "--users", "3",
        "--run-time", run_time,
        "--json", str(summary),
        *args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # locust too, if anything is left
        proc.wait()
    assert summary.exists(), output
    return proc.returncode, output, json.loads(summary.read_text())


@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_scenario_runs_with_no_failures_and_prints_each_request_type(server: Serve, scenario: str) -> None:
    # load_unload: time for several load, call, unload cycles (about 0.1 s each here) on a busy machine
    code, output, summary = run_loadtest(
        server, scenario, run_time="6s" if scenario == "load_unload" else "4s"
    )
    assert code == 0, output
    rows = {(r["type"], r["name"]): r for r in summary["rows"]}
    assert set(rows) == EXPECTED[scenario], output
    for key, row in rows.items():
        assert row["requests"] > 0 and row["failures"] == 0, (key, output)
        assert row["rps"] > 0 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"], row
        assert key[1] in output  # the table shows it
    assert summary["ok"] and not summary["failures"] and not summary["exceptions"], output
    assert f"{scenario} against http://127.0.0.1:{server.http_port}" in output
    assert "p50 ms" in output and "p99 ms" in output and "OK:" in output


def test_failed_requests_fail_the_run_and_are_shown(server: Serve) -> None:
    code, output, summary = run_loadtest(server, "rest_model", "--model", "nosuch", run_time="2s")
    assert code == 1, output
    (row,) = summary["rows"]
    assert row["name"] == "/v2/models/nosuch/infer" and row["requests"] == row["failures"] > 0, row
    (failure,) = summary["failures"]
    assert "HTTP 404" in failure["error"] and failure["occurrences"] == row["failures"], failure
    assert "HTTP 404" in output and "FAILED:" in output


NO_OUTPUTS = """
class Model:
    def predict(self, inputs):
        return {}
"""


def test_an_answer_without_outputs_is_a_failure(server: Serve, tmp_path: Path) -> None:
    """A 200 (or gRPC OK) that carries no outputs is not a success; the pipeline calls still are."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.py").write_text(NO_OUTPUTS)
    manifest = tmp_path / "empty.yaml"
    manifest.write_text(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: empty\n"
        f"spec:\n  storageUri: {tmp_path / 'empty'}\n  requirements: [python]\n"
    )
    env = {**os.environ, "HEADRACE_CONTROL_URL": server.control}
    for cmd in (["model", "load", "-f", str(manifest)], ["model", "status", "empty", "-w", "ModelReady"]):
        proc = subprocess.run([HEADRACE, *cmd], capture_output=True, text=True, env=env, timeout=90)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    code, output, summary = run_loadtest(server, "mixed", "--model", "empty", run_time="2s")
    assert code == 1, output
    rows = {(r["type"], r["name"]): r for r in summary["rows"]}
    for key in (("POST", "/v2/models/empty/infer"), ("gRPC", "ModelInfer empty")):
        assert rows[key]["requests"] == rows[key]["failures"] > 0, (key, output)
    assert rows[PIPELINE_DEMO]["requests"] > 0 and rows[PIPELINE_DEMO]["failures"] == 0, output
    assert {f["name"] for f in summary["failures"]} == {"/v2/models/empty/infer", "ModelInfer empty"}
    assert all("no outputs in the answer" in f["error"] for f in summary["failures"]), summary["failures"]
    assert "no outputs in the answer" in output and "FAILED:" in output
