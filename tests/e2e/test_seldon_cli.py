"""The real `seldon` CLI (built from SeldonIO/seldon-core) drives headrace through Seldon's gRPC scheduler
API on the control port: models, pipelines, servers, and experiments refused with the reason.

It runs when a `seldon` binary is found (env SELDON_CLI, else PATH); the README says how to build one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import HEADRACE, SAMPLES, Serve, http_post

pytestmark = pytest.mark.e2e

SELDON = os.environ.get("SELDON_CLI") or shutil.which("seldon")
NO_CLI = "no seldon CLI: build it from SeldonIO/seldon-core (see README)"

SCALER = """
class Model:
    def load(self, context):
        self.factor = float(context.parameters.get("factor", "2"))

    def predict(self, inputs):
        return {"x": inputs["x"] * self.factor}
"""


def docs(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    return path


class SeldonCli:
    """The binary against one headrace: its own HOME (no user config), the control port as scheduler."""

    def __init__(self, binary: str, serve: Serve, home: Path) -> None:
        self.binary = binary
        self.host = f"127.0.0.1:{serve.control_port}"
        home.mkdir(exist_ok=True)
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}

    def run(self, *args: str, check: bool = True, scheduler: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, *args, *(["--scheduler-host", self.host] if scheduler else [])],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=90,
        )
        if check:
            assert proc.returncode == 0, f"seldon {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)


def rows(table: str) -> list[list[str]]:
    """The rows of a `seldon ... list` table (tab-aligned), under its two header lines."""
    return [line.split() for line in table.splitlines()[2:]]


def wait_for(what: str, probe: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.2)


def infer(s: Serve, model: str, data: list[float], headers: dict[str, str] | None = None) -> Any:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [len(data)], "datatype": "FP32", "data": data}]})
    status, _, raw = http_post(
        f"{s.url}/v2/models/{model}/infer", body, {"Content-Type": "application/json", **(headers or {})}
    )
    assert status == 200, raw
    return orjson.loads(raw)


@pytest.mark.skipif(SELDON is None, reason=NO_CLI)
@pytest.mark.timeout(300)
def test_the_seldon_cli_drives_headrace(tmp_path: Path) -> None:
    assert SELDON is not None
    root = tmp_path / "files"
    (root / "scaler").mkdir(parents=True)
    (root / "scaler" / "model.py").write_text(SCALER)
    model = docs(
        root,
        "scaler.yaml",
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: scaler\n"
        f"spec:\n  storageUri: {root / 'scaler'}\n  requirements: [python]\n  memory: 20Mi\n"
        "  parameters:\n  - name: factor\n    value: '3'\n",
    )
    pipeline = docs(
        root,
        "triple.yaml",
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: triple\nspec:\n"
        "  steps:\n  - name: echo\n  - name: scaler\n    inputs: [echo]\n  output:\n    steps: [scaler]\n",
    )
    logger = docs(
        root, "logger.yaml", model.read_text().replace("  memory: 20Mi\n", "  logger: {}\n  memory: 20Mi\n")
    )
    experiment = docs(
        root,
        "exp.yaml",
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Experiment\nmetadata:\n  name: ab\nspec:\n"
        "  default: echo\n  candidates:\n  - name: echo\n    weight: 50\n  - name: scaler\n    weight: 50\n",
    )

    s = Serve(tmp_path / "data", kafka=True, extra=["--load", str(SAMPLES)])
    try:
        s.start()
        seldon = SeldonCli(SELDON, s, tmp_path / "home")

        # models: load, wait, status, list, and a real inference through headrace's REST port
        seldon.run("model", "load", "-f", str(model), "--force")
        seldon.run("model", "status", "scaler", "-w", "ModelAvailable", "-t", "60")
        status = seldon.json("model", "status", "scaler")
        [version] = status["versions"]
        assert status["modelName"] == "scaler" and version["state"]["state"] == "ModelAvailable"
        assert version["state"]["availableReplicas"] == 1 and version["serverName"] == "headrace"
        assert version["modelDefn"]["modelSpec"]["parameters"] == [{"name": "factor", "value": "3"}]
        listed = rows(seldon.run("model", "list").stdout)
        assert ["scaler", "ModelAvailable"] in listed and ["echo", "ModelAvailable"] in listed
        assert infer(s, "scaler", [1, 2])["outputs"][0]["data"] == [3.0, 6.0]

        # what headrace cannot honour is refused with the field's name
        refused = seldon.run("model", "load", "-f", str(logger), "--force", check=False)
        assert refused.returncode != 0
        assert (
            "InvalidArgument desc = Model scaler: spec.logger is not supported by headrace" in refused.stderr
        )

        # pipelines: load, wait until ready, list, infer through the pipeline
        seldon.run("pipeline", "load", "-f", str(pipeline), "--force")
        seldon.run("pipeline", "status", "triple", "-w", "PipelineReady", "-t", "90")
        pstatus = seldon.json("pipeline", "status", "triple")
        [pversion] = pstatus["versions"]
        assert pversion["state"]["status"] == "PipelineReady" and pversion["state"]["modelsReady"]
        assert [st["name"] for st in pversion["pipeline"]["steps"]] == ["echo", "scaler"]
        assert rows(seldon.run("pipeline", "list").stdout) == [["triple", "PipelineReady"]]
        out = infer(s, "triple", [1, 2], {"Seldon-Model": "triple.pipeline"})
        assert out["outputs"][0]["data"] == [3.0, 6.0]
        # the CLI's own inference and topic inspection (it asks the scheduler for the steps)
        payload = '{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[2,4]}]}'
        host = f"127.0.0.1:{s.http_port}"
        answer = seldon.run("pipeline", "infer", "triple", payload, "--inference-host", host, scheduler=False)
        assert json.loads(answer.stdout)["outputs"][0]["data"] == [6.0, 12.0]
        inspect = ("pipeline", "inspect", "triple.scaler.outputs", "--format", "json")

        def last_record() -> Any:
            printed = seldon.run(*inspect, "--kafka-broker", s.bootstrap).stdout
            [topic] = json.loads(printed.splitlines()[-1])["topics"]  # after "Using consumer config ..."
            assert topic["name"] == "seldon.default.model.scaler.outputs"
            msgs = topic["msgs"]
            return msgs[0]["value"]["outputs"][0]["contents"]["fp32Contents"] if msgs else None

        # with local hops the step's record may reach Kafka just after the reply
        wait_for("the last record on scaler's outputs topic", lambda: last_record() == [6, 12])

        # servers
        servers = rows(seldon.run("server", "list").stdout)
        assert servers == [["headrace", "1", "3"]]  # 1 replica available, with echo, sum and scaler
        sstatus = seldon.run("server", "status", "headrace").stdout
        assert "headrace" in sstatus and '"numLoadedModelReplicas":3' in sstatus.replace(" ", "")

        # experiments: not faked
        for args in (("experiment", "start", "-f", str(experiment), "--force"), ("experiment", "list")):
            proc = seldon.run(*args, check=False)
            assert proc.returncode != 0
            assert "Unimplemented desc = experiments are not supported by headrace yet" in proc.stderr

        # unloads; the JSON API on the same port sees the same state, headrace's own CLI too
        seldon.run("pipeline", "unload", "triple", "--force")
        seldon.run("model", "unload", "scaler", "--force")
        wait_for("scaler gone", lambda: "scaler" not in seldon.run("model", "list").stdout)
        wait_for("triple gone", lambda: "triple" not in seldon.run("pipeline", "list").stdout)
        missing = seldon.run("model", "status", "scaler", check=False)
        assert missing.returncode != 0 and "NotFound desc = model scaler not found" in missing.stderr
        env = {**os.environ, "HEADRACE_CONTROL_URL": s.control}
        ours = subprocess.run(
            [HEADRACE, "model", "list"], capture_output=True, text=True, env=env, timeout=60
        )
        assert ours.returncode == 0 and "echo" in ours.stdout and "scaler" not in ours.stdout
    finally:
        s.stop()
