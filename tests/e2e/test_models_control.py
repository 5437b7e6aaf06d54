"""Models through the control plane, end to end: the scikit-learn runtime, replicas and balancing,
scheduling failures, rejected manifests, Server manifests, inline models and `headrace model infer`.

Every test drives a real `headrace serve` (and the real `headrace` CLI) on free loopback ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.linear_model import LogisticRegression
from support import HEADRACE, SAMPLES, Serve, children, http_post

pytestmark = pytest.mark.e2e

API = "mlops.seldon.io/v1alpha1"
ECHO_BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})

# The short sleep makes concurrent requests overlap, which is what least-in-flight balancing spreads.
PID_MODEL = """
import os
import time
import numpy as np

class Model:
    def predict(self, inputs):
        time.sleep(0.05)
        return {"pid": np.array([os.getpid()], dtype=np.int64)}
"""

DOUBLE_MODEL = """
import os
import numpy as np

class Model:
    def predict(self, inputs):
        return {"y": inputs["x"] * 2, "pid": np.array([os.getpid()], dtype=np.int64)}
"""


# ------------------------------------------------------------------------------------------ helpers


def cli(s: Serve, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEADRACE_CONTROL_URL": s.control}
    proc = subprocess.run([HEADRACE, *args], capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert proc.returncode == 0, f"headrace {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc


def cli_json(s: Serve, *args: str) -> Any:
    return json.loads(cli(s, *args, "-o", "json").stdout)


def model_yaml(name: str, folder: Path, **spec: Any) -> str:
    """A Seldon Model document; ``parameters`` is a dict, the other keys go into spec verbatim."""
    params = spec.pop("parameters", None)
    lines = [f"apiVersion: {API}", "kind: Model", f"metadata:\n  name: {name}", "spec:"]
    lines.append(f"  storageUri: {folder}")
    for key, value in spec.items():
        lines.append(f"  {key}: {json.dumps(value)}")
    if params:
        lines.append("  parameters:")
        lines += [f"  - name: {k}\n    value: {json.dumps(str(v))}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def write_manifest(root: Path, name: str, *docs: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text("---\n".join(docs))
    return path


def python_model(root: Path, name: str, source: str) -> Path:
    folder = root / "repo" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(source)
    return folder


def load_ready(s: Serve, manifest: Path, *names: str, timeout: float = 30) -> None:
    cli(s, "model", "load", "-f", str(manifest))
    for name in names:
        cli(s, "model", "status", name, "-w", "ModelReady", "--timeout", str(timeout))


def infer_json(s: Serve, model: str, body: bytes, timeout: float = 10.0) -> tuple[int, Any]:
    status, _, data = http_post(f"{s.url}/v2/models/{model}/infer", body, None, timeout)
    return status, orjson.loads(data)


def assert_prompt_error(s: Serve, model: str, body: bytes, within: float = 5.0) -> None:
    """Inference on a model that cannot serve answers an error naming it, without waiting it out."""
    started = time.monotonic()
    try:
        code, answer = infer_json(s, model, body, timeout=within + 5)
    except TimeoutError:
        took = time.monotonic() - started
        state = cli_json(s, "model", "status", model)["state"]
        pytest.fail(f"inference on {model} (state {state}) gave no answer within {took:.0f}s, not an error")
    took = time.monotonic() - started
    assert code >= 400 and model in answer["error"], (code, answer)
    assert took < within, f"{model} answered {code} {answer} only after {took:.1f}s"


# ------------------------------------------------------------------------------- scikit-learn


def test_sklearn_runtime_predict_proba_missing_file_and_cli_infer(
    tmp_path: Path, serve_factory: list[Serve]
) -> None:
    rng = np.random.default_rng(7)
    centers = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 0, 3, 3]], dtype=np.float64)
    y_train = np.repeat(np.arange(3), 20)
    x_train = centers[y_train] + rng.normal(scale=0.7, size=(60, 4))
    estimator = LogisticRegression(max_iter=500).fit(x_train, y_train)
    folder = tmp_path / "repo" / "iris"
    folder.mkdir(parents=True)
    joblib.dump(estimator, folder / "model.joblib")
    empty = tmp_path / "repo" / "iris-nofile"
    empty.mkdir(parents=True)
    (empty / "README.txt").write_text("the joblib file was forgotten\n")

    s = Serve(tmp_path / "d")
    serve_factory.append(s)
    s.start(wait_models=())
    manifest = write_manifest(
        tmp_path,
        "iris",
        model_yaml("iris", folder, requirements=["sklearn"]),
        model_yaml("iris-proba", folder, requirements=["sklearn"], parameters={"method": "predict_proba"}),
    )
    load_ready(s, manifest, "iris", "iris-proba")
    status = cli_json(s, "model", "status", "iris")
    assert status["state"] == "ModelAvailable" and status["runtime"] == "sklearn", status

    x = np.concatenate([centers, rng.normal(size=(5, 4))]).astype(np.float64)
    client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
    inp = httpclient.InferInput("input-0", list(x.shape), "FP64")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer("iris", [inp])
    np.testing.assert_array_equal(result.as_numpy("predict"), estimator.predict(x))
    inp.set_data_from_numpy(x, binary_data=False)  # JSON tensors too
    proba = client.infer("iris-proba", [inp]).as_numpy("predict_proba")
    assert proba.shape == (len(x), 3)
    np.testing.assert_allclose(proba, estimator.predict_proba(x), rtol=1e-12)

    # `headrace model infer` prints the response JSON
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": x[:2].ravel().tolist()}]}
    out = cli(s, "model", "infer", "iris", json.dumps(body), "--inference-host", f"127.0.0.1:{s.http_port}")
    printed = json.loads(out.stdout)
    assert printed["model_name"] == "iris"
    assert printed["outputs"][0]["name"] == "predict"
    assert printed["outputs"][0]["data"] == estimator.predict(x[:2]).tolist()
    missing = cli(
        s, "model", "infer", "nope", json.dumps(body), "--inference-host", f"127.0.0.1:{s.http_port}",
        check=False,
    )  # fmt: skip
    assert missing.returncode != 0
    assert "HTTP 404" in missing.stderr and "nope" in missing.stderr

    # a sklearn model whose folder has no joblib file: a visible load failure, and a prompt error
    bad = write_manifest(tmp_path, "nofile", model_yaml("iris-nofile", empty, requirements=["sklearn"]))
    cli(s, "model", "load", "-f", str(bad))
    cli(s, "model", "status", "iris-nofile", "-w", "ModelFailed", "--timeout", "30")
    shown = cli(s, "model", "status", "iris-nofile")
    assert "ModelFailed" in shown.stdout and "LoadFailed" in shown.stdout, shown.stdout
    assert "no *.joblib or *.pkl file" in shown.stdout, shown.stdout
    failed = cli_json(s, "model", "status", "iris-nofile")
    assert failed["state"] == "ModelFailed"
    assert failed["placement"][0]["state"] == "LoadFailed"
    assert "no *.joblib or *.pkl file" in failed["placement"][0]["message"]
    # the healthy models are untouched
    assert client.infer("iris", [inp]).as_numpy("predict").tolist() == estimator.predict(x).tolist()
    assert_prompt_error(s, "iris-nofile", orjson.dumps(body))


# ----------------------------------------------------------------------------------- replicas


def test_requests_are_balanced_over_the_model_replicas(tmp_path: Path, serve_factory: list[Serve]) -> None:
    s = Serve(tmp_path / "d", extra=["--server-replicas", "2"])
    serve_factory.append(s)
    s.start(wait_models=())
    folder = python_model(tmp_path, "whoami", PID_MODEL)
    manifest = write_manifest(
        tmp_path, "whoami", model_yaml("whoami", folder, requirements=["python"], replicas=2)
    )
    load_ready(s, manifest, "whoami")
    status = cli_json(s, "model", "status", "whoami")
    assert status["state"] == "ModelAvailable"
    assert (status["replicas"], status["availableReplicas"]) == (2, 2), status
    assert sorted(p["index"] for p in status["placement"]) == [0, 1]

    server_pids = {children(s)["server headrace-0"], children(s)["server headrace-1"]}

    def one(_: int) -> int:
        code, answer = infer_json(s, "whoami", ECHO_BODY)
        assert code == 200, answer
        return int(answer["outputs"][0]["data"][0])

    with ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(one, range(40)))
    assert set(seen) == server_pids, (seen, server_pids)
    assert min(seen.count(pid) for pid in server_pids) >= 4, seen

    server = cli_json(s, "server", "status", "headrace")
    assert server["replicas"] == 2 and len(server["replicaStatus"]) == 2, server
    for replica in server["replicaStatus"]:
        assert replica["connected"] and replica["pid"] in server_pids, replica
        loaded = {m["name"]: m["state"] for m in replica["models"]}
        assert loaded.get("whoami") == "Loaded", replica
    assert {r["pid"] for r in server["replicaStatus"]} == server_pids


# -------------------------------------------------------------------- scheduling and manifests


def test_schedule_failures_are_explained_and_bad_manifests_rejected(
    tmp_path: Path, serve_factory: list[Serve]
) -> None:
    s = Serve(tmp_path / "d", extra=["--load", str(SAMPLES), "--server-memory-bytes", str(64 * 2**20)])
    serve_factory.append(s)
    s.start()
    folder = python_model(tmp_path, "plain", PID_MODEL)
    manifest = write_manifest(
        tmp_path,
        "unschedulable",
        model_yaml("three", folder, requirements=["python"], replicas=3),
        model_yaml("xgb", folder, requirements=["xgboost"]),
        model_yaml("big", folder, requirements=["python"], memory="1Gi"),
    )
    loaded = cli(s, "model", "load", "-f", str(manifest))
    assert "ScheduleFailed" in loaded.stdout, loaded.stdout

    three = cli_json(s, "model", "status", "three")
    assert three["state"] == "ScheduleFailed", three
    assert "3 replicas" in three["reason"] and "has 1" in three["reason"], three["reason"]
    assert three["conditions"][0]["status"] == "False"
    assert three["conditions"][0]["message"] == three["reason"]
    table = cli(s, "model", "status", "three").stdout
    assert "ScheduleFailed" in table and "3 replicas" in table, table

    xgb = cli_json(s, "model", "status", "xgb")
    assert xgb["state"] == "ScheduleFailed" and "xgboost" in xgb["reason"], xgb

    big = cli_json(s, "model", "status", "big")
    assert big["state"] == "ScheduleFailed" and "memory" in big["reason"], big
    assert "1GiB" in big["reason"], big["reason"]

    # waiting for a model that cannot be scheduled gives up with the state shown, never hangs
    waited = cli(s, "model", "status", "three", "-w", "ModelReady", "--timeout", "1", check=False)
    assert waited.returncode != 0 and "timed out" in waited.stderr, waited.stderr
    assert "ScheduleFailed" in waited.stdout
    # the models that fit keep serving
    for name in ("echo", "sum"):
        assert http_post(f"{s.url}/v2/models/{name}/infer", ECHO_BODY)[0] == 200

    # manifests headrace cannot honour are rejected whole, with the field named
    good = model_yaml("ok-first", folder, requirements=["python"])
    cases = [
        (
            "explained",
            model_yaml("explained", folder, requirements=["python"])
            + "  explainer:\n    type: anchor_tabular\n",
            ["spec.explainer"],
        ),
        ("foo", model_yaml("foo-model", folder, requirements=["python"]) + "  foo: 1\n", ["spec.foo"]),
        (
            "old-api",
            model_yaml("old-api", folder).replace(API, "mlops.seldon.io/v1"),
            ["apiVersion", "'mlops.seldon.io/v1'"],
        ),
    ]
    for label, doc, words in cases:
        path = write_manifest(tmp_path, f"bad-{label}", good, doc)
        rejected = cli(s, "model", "load", "-f", str(path), check=False)
        assert rejected.returncode != 0, rejected.stdout
        for word in words:
            assert word in rejected.stderr, rejected.stderr
        # the control API itself rejects them too (a client that skips the CLI's checks)
        code, _, data = http_post(f"{s.control}/v1/models", (good + "---\n" + doc).encode())
        assert 400 <= code < 500, (code, data)
        for word in words:
            assert word in orjson.loads(data)["error"], data
    names = [m["name"] for m in cli_json(s, "model", "list")["models"]]
    assert sorted(names) == ["big", "echo", "sum", "three", "xgb"], names
    listed = cli(s, "model", "list").stdout
    for name in ("ok-first", "explained", "foo-model", "old-api"):
        assert name not in listed, listed

    # inference on a model that could not be scheduled answers an error at once
    assert_prompt_error(s, "three", ECHO_BODY)


# ----------------------------------------------------------------------------- server manifests


def test_server_manifest_runs_a_custom_server_with_two_replicas(
    tmp_path: Path, serve_factory: list[Serve]
) -> None:
    server_file = tmp_path / "custom-server.yaml"
    server_file.write_text(
        f"apiVersion: {API}\nkind: Server\nmetadata:\n  name: custom\n"
        "spec:\n  serverConfig: headrace\n  replicas: 2\n"
    )
    s = Serve(tmp_path / "d", extra=["--server-file", str(server_file)])
    serve_factory.append(s)
    s.start(wait_models=())
    kids = children(s)
    assert "server custom-0" in kids and "server custom-1" in kids, kids
    assert not any(k.startswith("server headrace") for k in kids), kids

    table = cli(s, "server", "list").stdout
    row = next((line.split() for line in table.splitlines() if line.split()[:1] == ["custom"]), None)
    assert row is not None and row[1:3] == ["headrace", "2"], table
    servers = cli_json(s, "server", "list")["servers"]
    assert [(x["name"], x["replicas"]) for x in servers] == [("custom", 2)], servers

    folder = python_model(tmp_path, "pinned", PID_MODEL)
    manifest = write_manifest(
        tmp_path,
        "pinned",
        model_yaml("pinned", folder, requirements=["python"], server="custom", replicas=2),
        model_yaml("elsewhere", folder, requirements=["python"], server="headrace"),
    )
    cli(s, "model", "load", "-f", str(manifest))
    cli(s, "model", "status", "pinned", "-w", "ModelReady", "--timeout", "30")
    status = cli_json(s, "model", "status", "pinned")
    assert status["server"] == "custom" and status["availableReplicas"] == 2, status
    pids = {kids["server custom-0"], kids["server custom-1"]}
    code, answer = infer_json(s, "pinned", ECHO_BODY)
    assert code == 200 and answer["outputs"][0]["data"][0] in pids, answer
    elsewhere = cli_json(s, "model", "status", "elsewhere")
    assert elsewhere["state"] == "ScheduleFailed", elsewhere
    assert "headrace" in elsewhere["reason"] and "does not exist" in elsewhere["reason"], elsewhere
    detail = cli_json(s, "server", "status", "custom")
    assert [r["connected"] for r in detail["replicaStatus"]] == [True, True], detail
    assert detail["loadedModels"] == 1


# ---------------------------------------------------------------------------------- inline mode


def test_inline_model_answers_while_the_model_server_is_stopped(
    tmp_path: Path, serve_factory: list[Serve]
) -> None:
    s = Serve(tmp_path / "d", extra=["--load", str(SAMPLES)])
    serve_factory.append(s)
    s.start()
    folder = python_model(tmp_path, "double", DOUBLE_MODEL)
    manifest = write_manifest(
        tmp_path,
        "double",
        model_yaml("double", folder, requirements=["python"], parameters={"inline": "true"}),
    )
    load_ready(s, manifest, "double")
    status = cli_json(s, "model", "status", "double")
    assert status["inline"] is True and status["state"] == "ModelAvailable", status
    assert {p["server"] for p in status["placement"]} == {"inline"}, status
    assert "inline" in cli(s, "model", "list").stdout
    server = cli_json(s, "server", "status", "headrace")
    assert all("double" not in {m["name"] for m in r["models"]} for r in server["replicaStatus"]), server
    assert http_post(f"{s.url}/v2/models/echo/infer", ECHO_BODY)[0] == 200

    kids = children(s)
    workers = {pid for name, pid in kids.items() if name.startswith("worker ")}
    x = np.array([[1.5, -2.0, 4.0]], dtype=np.float32)
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": x.ravel().tolist()}]}
    )
    grpc = grpcclient.InferenceServerClient(s.grpc_url)
    victim = kids["server headrace-0"]
    os.kill(victim, signal.SIGSTOP)  # frozen: no model server can take part in what follows
    try:
        for _ in range(20):
            code, answer = infer_json(s, "double", body, timeout=5)
            assert code == 200, answer
            outputs = {o["name"]: o["data"] for o in answer["outputs"]}
            assert outputs["y"] == (x * 2).ravel().tolist()
            assert outputs["pid"][0] in workers, (outputs, kids)
        for _ in range(5):
            inp = grpcclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = grpc.infer("double", [inp], client_timeout=5)
            np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
            assert int(result.as_numpy("pid")[0]) in workers
    finally:
        os.kill(victim, signal.SIGCONT)
        grpc.close()
    assert children(s)["server headrace-0"] == victim  # it was never restarted
    assert http_post(f"{s.url}/v2/models/echo/infer", ECHO_BODY, None, 30)[0] == 200
