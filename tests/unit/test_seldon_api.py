"""Seldon's gRPC scheduler API and the JSON control API on one port: a real MuxControlServer in-process."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from headrace.config.manifests import MAX_REPLICAS, ServerManifest
from headrace.engine.scheduler.api import ControlApi
from headrace.engine.scheduler.port_mux import HTTP2_PREFACE, MuxControlServer, is_http2
from headrace.engine.scheduler.seldon import scheduler_pb2 as pb
from headrace.engine.scheduler.seldon import scheduler_pb2_grpc as pb_grpc
from headrace.engine.scheduler.seldon_api import EXPERIMENTS_UNSUPPORTED, SeldonApiServer
from headrace.engine.scheduler.state import SchedulerState
from headrace.engine.scheduler.store import Store

pytestmark = pytest.mark.timeout(60)


@dataclass
class Control:
    port: int
    state: SchedulerState
    stub: pb_grpc.SchedulerStub

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    store = Store(tmp_path / "scheduler.db")
    state = SchedulerState([ServerManifest(name="s", replicas=2)], store, lambda s, i: f"/{s}{i}", 2**30)
    seldon = SeldonApiServer(state, str(tmp_path / "g.sock"))
    seldon.start()
    httpd = MuxControlServer(("127.0.0.1", 0), ControlApi(state), seldon.path)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Control(port, state, pb_grpc.SchedulerStub(channel))  # type: ignore[no-untyped-call]
    finally:
        channel.close()
        state.close()
        httpd.shutdown()
        httpd.server_close()
        seldon.stop()
        thread.join(5)
        store.close()


def model(folder: Path, name: str = "iris") -> pb.Model:
    folder.mkdir(exist_ok=True)
    (folder / "model.py").write_text("class Model:\n    def predict(self, inputs):\n        return inputs\n")
    return pb.Model(
        meta=pb.MetaData(name=name, kubernetesMeta=pb.KubernetesMeta()),
        modelSpec=pb.ModelSpec(uri=str(folder), requirements=["python"], memoryBytes=2**20),
        deploymentSpec=pb.DeploymentSpec(replicas=2, maxReplicas=MAX_REPLICAS),
    )


def get_json(url: str, timeout: float = 10.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def test_models_over_grpc_and_json_on_one_port(control: Control, tmp_path: Path) -> None:
    stub = control.stub
    assert (
        stub.LoadModel(pb.LoadModelRequest(model=model(tmp_path / "iris")), timeout=10)
        == pb.LoadModelResponse()
    )

    [res] = list(stub.ModelStatus(pb.ModelStatusRequest(model=pb.ModelReference(name="iris")), timeout=10))
    [v] = res.versions
    assert res.modelName == "iris" and pb.ModelStatus.ModelState.Name(v.state.state) == "ModelProgressing"
    assert v.serverName == "s" and sorted(v.modelReplicaState) == [0, 1]
    assert v.modelDefn.deploymentSpec.replicas == 2

    # the same model through the JSON API on the same port
    status = get_json(f"{control.url}/v1/models/iris")
    assert isinstance(status, dict) and status["state"] == "ModelProgressing" and status["replicas"] == 2

    assert [r.modelName for r in stub.ModelStatus(pb.ModelStatusRequest(), timeout=10)] == ["iris"]
    stub.UnloadModel(pb.UnloadModelRequest(model=pb.ModelReference(name="iris")), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        stub.UnloadModel(pb.UnloadModelRequest(model=pb.ModelReference(name="iris")), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and info.value.details() == "model iris not found"


def test_errors_are_grpc_statuses_naming_the_field(control: Control, tmp_path: Path) -> None:
    bad = model(tmp_path / "iris")
    bad.deploymentSpec.logPayloads = True
    with pytest.raises(grpc.RpcError) as info:
        control.stub.LoadModel(pb.LoadModelRequest(model=bad), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Model iris: spec.logger is not supported by headrace"

    with pytest.raises(grpc.RpcError) as info:
        list(
            control.stub.ModelStatus(pb.ModelStatusRequest(model=pb.ModelReference(name="nope")), timeout=10)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and info.value.details() == "model nope not found"

    req = pb.PipelineStatusRequest(name="nope")
    with pytest.raises(grpc.RpcError) as info:
        list(control.stub.PipelineStatus(req, timeout=10))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_pipelines(control: Control) -> None:
    p = pb.Pipeline(
        name="chain",
        steps=[pb.PipelineStep(name="a"), pb.PipelineStep(name="b", inputs=["a"])],
        output=pb.PipelineOutput(steps=["b"]),
    )
    control.stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=p), timeout=10)
    [res] = list(control.stub.PipelineStatus(pb.PipelineStatusRequest(name="chain"), timeout=10))
    [v] = res.versions
    assert pb.PipelineVersionState.PipelineStatus.Name(v.state.status) == "PipelineCreating"
    assert v.state.reason == "waiting for models: a, b" and not v.state.modelsReady
    assert [s.name for s in v.pipeline.steps] == ["a", "b"] and v.state.pipelineVersion == 1
    status = get_json(f"{control.url}/v1/pipelines/chain")
    assert isinstance(status, dict) and status["version"] == 1 and status["steps"] == ["a", "b"]

    bad = pb.Pipeline(name="bad", steps=[pb.PipelineStep(name="a", inputs=["x"])])
    with pytest.raises(grpc.RpcError) as info:
        control.stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=bad), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Pipeline bad: spec.steps[0].inputs[0] 'x' refers to 'x', which is not a step" in (
        info.value.details() or ""
    )
    assert [r.pipelineName for r in control.stub.PipelineStatus(pb.PipelineStatusRequest(), timeout=10)] == [
        "chain"
    ]
    control.stub.UnloadPipeline(pb.UnloadPipelineRequest(name="chain"), timeout=10)
    assert list(control.stub.PipelineStatus(pb.PipelineStatusRequest(), timeout=10)) == []


def test_servers_and_scheduler_status(control: Control) -> None:
    [res] = list(control.stub.ServerStatus(pb.ServerStatusRequest(), timeout=10))
    assert (res.serverName, res.expectedReplicas, res.availableReplicas) == ("s", 2, 0)
    assert [r.totalMemoryBytes for r in res.resources] == [2**30, 2**30]
    [one] = list(control.stub.ServerStatus(pb.ServerStatusRequest(name="s"), timeout=10))
    assert one == res
    with pytest.raises(grpc.RpcError) as info:
        list(control.stub.ServerStatus(pb.ServerStatusRequest(name="nope"), timeout=10))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and info.value.details() == "server nope not found"
    version = control.stub.SchedulerStatus(pb.SchedulerStatusRequest(), timeout=10).applicationVersion
    assert version.startswith("headrace")


def test_experiments_are_unimplemented_with_the_reason(control: Control) -> None:
    calls = [
        lambda: control.stub.StartExperiment(pb.StartExperimentRequest(experiment=pb.Experiment(name="e"))),
        lambda: control.stub.StopExperiment(pb.StopExperimentRequest(name="e")),
        lambda: list(control.stub.ExperimentStatus(pb.ExperimentStatusRequest())),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert info.value.details() == EXPERIMENTS_UNSUPPORTED


def test_long_polls_and_grpc_calls_share_the_port(control: Control, tmp_path: Path) -> None:
    """Many held HTTP long-polls (as workers hold them) do not stop gRPC calls, nor the reverse."""
    version = control.state.routes().version

    def poll() -> object:
        return get_json(f"{control.url}/v1/internal/routes?after={version}&wait=5", timeout=15)

    with ThreadPoolExecutor(16) as pool:
        polls = [pool.submit(poll) for _ in range(12)]
        time.sleep(0.3)  # the polls are waiting now
        started = time.monotonic()
        for _ in range(100):
            list(control.stub.ServerStatus(pb.ServerStatusRequest(), timeout=5))
        # about 1 ms a call; Nagle on the pumped socket would make it ~40 ms (the client's delayed ACK)
        assert time.monotonic() - started < 1.5
        assert not any(p.done() for p in polls)
        # a change answers every poll at once
        control.stub.LoadModel(pb.LoadModelRequest(model=model(tmp_path / "m")), timeout=10)
        tables = [p.result(timeout=10) for p in polls]
    assert all(isinstance(t, dict) and "iris" in t["models"] for t in tables), tables[:1]


def test_a_client_that_half_closes_gets_its_answer(control: Control) -> None:
    """HTTP/2 preface then shutdown(SHUT_WR): the server's SETTINGS still come back, then EOF."""
    with socket.create_connection(("127.0.0.1", control.port), timeout=10) as sock:
        sock.sendall(HTTP2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an empty SETTINGS frame
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert len(received) >= 9 and received[3] == 0x04  # the server's first frame: SETTINGS


def test_http1_split_into_one_byte_segments_is_still_http(control: Control) -> None:
    with socket.create_connection(("127.0.0.1", control.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in b"PO":
            sock.sendall(bytes([byte]))
            time.sleep(0.05)
        sock.sendall(b"ST /v1/nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404") and b"no such endpoint: POST /v1/nothing" in answer


def test_is_http2_decides_on_the_first_four_bytes() -> None:
    for data, expected in [(b"PRI * HTTP/2.0", True), (b"PRI ", True), (b"GET /", False), (b"PUT", False)]:
        a, b = socket.socketpair()
        with a, b:
            a.sendall(data)
            assert is_http2(b, timeout=1) is expected
            assert b.recv(64) == data  # nothing consumed
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"PR")  # a stalled prefix: undecided until the timeout, then HTTP
        assert is_http2(b, timeout=0.2) is False
        a.close()
    a, b = socket.socketpair()
    with a, b:
        a.close()
        assert is_http2(b, timeout=1) is False
