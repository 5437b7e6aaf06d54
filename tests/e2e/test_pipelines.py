"""Pipelines through the embedded broker (Apache Kafka, or Tansu under `make test-tansu`): chains over
REST, gRPC and the async topic path."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from confluent_kafka import Consumer, Producer, TopicPartition
from support import HEADRACE, SAMPLES, Serve, http_get, http_post, read_keys
from tritonclient.grpc import service_pb2 as pb2

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "config" / "samples" / "pipelines"

BOOM = """
class Model:
    def predict(self, inputs):
        raise ValueError("boom went the model")
"""

SPLIT = '''
import numpy as np
class Model:
    """Conditional routing: output "even" or "odd" depending on the first element."""
    def predict(self, inputs):
        x = inputs["x"]
        return {"even" if int(x.reshape(-1)[0]) % 2 == 0 else "odd": x}
'''

BOTH = """
class Model:
    def predict(self, inputs):
        return dict(inputs)
"""

SLOW = """
import time
class Model:
    def predict(self, inputs):
        time.sleep(5)
        return {"y": inputs["x"]}
"""


COUNTER = """
import numpy as np
class Model:
    \"\"\"Seldon's cyclic example: add one; a `continue` or `stop` tensor says: go round again?\"\"\"
    def predict(self, inputs):
        x = next(iter(inputs.values())) + 1
        go = "continue" if int(x.reshape(-1)[0]) < 10 else "stop"
        return {"output": x, go: np.zeros(1, dtype=np.int64)}
"""

# Seldon's cyclic pipeline example: counter -> loop -> counter until 10, then done -> output
CYCLIC = """  allowCycles: true
{cap}  steps:
  - name: counter
    inputsJoinType: any
    inputs: [{name}.inputs, loop.outputs]
  - name: done
    joinWindowMs: 1
    inputs: [counter.outputs]
    triggers: [counter.outputs.stop]
  - name: loop
    joinWindowMs: 1
    inputs: [counter.outputs.output]
    triggers: [counter.outputs.continue]
  output:
    steps: [done.outputs]
"""


def model_manifest(root: Path, name: str, source: str) -> Path:
    folder = root / "repo" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(source)
    path = root / f"{name}.yaml"
    path.write_text(
        f"apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\n"
        f"spec:\n  storageUri: {folder}\n  requirements: [python]\n"
    )
    return path


def pipeline_manifest(root: Path, name: str, body: str) -> Path:
    path = root / f"pipeline-{name}.yaml"
    path.write_text(
        f"apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: {name}\n{body}"
    )
    return path


def cli(s: Serve, *args: str) -> str:
    env = {**os.environ, "HEADRACE_CONTROL_URL": s.control}
    proc = subprocess.run([HEADRACE, *args], capture_output=True, text=True, env=env, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module", params=["local-hops", "broker-hops"])
def kserve(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """Every test runs with hops handed over in memory (the default) and with every hop through the
    broker (--local-hops false, Seldon's way)."""
    root = tmp_path_factory.mktemp("pipes")
    hops = ["--local-hops", "false"] if request.param == "broker-hops" else []
    # the sample models and the demo pipeline come from --load, as `make run` does
    s = Serve(root / "data", kafka=True, extra=["--load", str(SAMPLES), "--load", str(PIPELINES), *hops])
    try:
        s.start()
        s.broker_pid()  # on the broker asked for (HEADRACE_TEST_BROKER): `make test-tansu` is on Tansu
        models = [("boom", BOOM), ("split", SPLIT), ("slow", SLOW), ("both", BOTH), ("counter", COUNTER)]
        models += [("loop", BOTH), ("done", BOTH)]
        for name, source in models:
            cli(s, "model", "load", "-f", str(model_manifest(root, name, source)))
        cli(
            s,
            "pipeline",
            "load",
            "-f",
            str(
                pipeline_manifest(
                    root, "one", "spec:\n  steps:\n  - name: sum\n  output:\n    steps: [sum]\n"
                )
            ),
        )
        cli(
            s,
            "pipeline",
            "load",
            "-f",
            str(
                pipeline_manifest(
                    root,
                    "three",
                    (
                        "spec:\n  steps:\n  - name: echo\n  - name: split\n    inputs: [echo]\n"
                        "  - name: sum\n    inputs: [split.outputs.even]\n"
                        "    tensorMap:\n      split.outputs.even: x\n"
                        "  output:\n    steps: [sum]\n"
                    ),
                )
            ),
        )
        cli(
            s,
            "pipeline",
            "load",
            "-f",
            str(
                pipeline_manifest(
                    root,
                    "failing",
                    (
                        "spec:\n  steps:\n  - name: echo\n  - name: boom\n    inputs: [echo]\n"
                        "  output:\n    steps: [boom]\n"
                    ),
                )
            ),
        )
        cli(
            s,
            "pipeline",
            "load",
            "-f",
            str(
                pipeline_manifest(
                    root,
                    "sleepy",
                    (
                        '  annotations:\n    headrace.io/timeout-seconds: "1"\n'
                        "spec:\n  steps:\n  - name: slow\n  output:\n    steps: [slow]\n"
                    ),
                )
            ),
        )
        # a diamond: echo -> (split, sum) -> both, an inner join of split's and sum's outputs
        diamond = (
            "spec:\n  steps:\n  - name: echo\n  - name: split\n    inputs: [echo]\n"
            "  - name: sum\n    inputs: [echo]\n  - name: both\n    inputs: [{left}, sum]\n{extra}"
            "  output:\n    steps: [both]\n"
        )
        for name, left, extra in (
            ("diamond", "split", ""),
            # split answers `even` for the inputs used below: the `odd` branch is dropped
            ("innerjoin", "split.outputs.odd", "    joinWindowMs: 500\n"),
            ("outerjoin", "split.outputs.odd", "    joinWindowMs: 500\n    inputsJoinType: outer\n"),
            ("anyjoin", "split", "    inputsJoinType: any\n"),
        ):
            cli(
                s,
                "pipeline",
                "load",
                "-f",
                str(pipeline_manifest(root, name, diamond.format(left=left, extra=extra))),
            )
        # sum runs only when split's `even` fires its trigger; it gets echo's outputs, not the trigger's
        gated = (
            "spec:\n  steps:\n  - name: echo\n  - name: split\n    inputs: [echo]\n"
            "  - name: sum\n    inputs: [echo]\n    triggers: [split.outputs.even]\n    joinWindowMs: 500\n"
            "  output:\n    steps: [sum]\n"
        )
        cli(s, "pipeline", "load", "-f", str(pipeline_manifest(root, "gated", gated)))
        batched = "spec:\n  steps:\n  - name: sum\n    batch: {size: 3, windowMs: 1000}\n"
        batched += "  output:\n    steps: [sum]\n"
        cli(s, "pipeline", "load", "-f", str(pipeline_manifest(root, "batched", batched)))
        # chained: demo's answer (tensor `sum`) feeds this pipeline's `split` as `x`
        downstream = (
            "spec:\n  input:\n    externalInputs: [demo.outputs.sum]\n"
            "    tensorMap: {demo.outputs.sum: x}\n"
            "  steps:\n  - name: split\n  output:\n    steps: [split]\n"
        )
        cli(s, "pipeline", "load", "-f", str(pipeline_manifest(root, "downstream", downstream)))
        # three's inputs go on to this pipeline only when three's split step answered `even`
        evens = (
            "spec:\n  input:\n    externalInputs: [three.inputs]\n"
            "    externalTriggers: [three.step.split.outputs.even]\n"
            "  steps:\n  - name: echo\n  output:\n    steps: [echo]\n"
        )
        cli(s, "pipeline", "load", "-f", str(pipeline_manifest(root, "evens", evens)))
        for name, cap in (("counting", ""), ("capped", "  maxStepRevisits: 3\n")):
            cyclic = "spec:\n" + CYCLIC.format(name=name, cap=cap)
            cli(s, "pipeline", "load", "-f", str(pipeline_manifest(root, name, cyclic)))
        pipelines = (
            "demo",
            "counting",
            "capped",
            "one",
            "three",
            "failing",
            "sleepy",
            "diamond",
            "innerjoin",
            "outerjoin",
            "anyjoin",
            "gated",
            "batched",
            "downstream",
            "evens",
        )
        for name in pipelines:
            cli(s, "pipeline", "status", name, "-w", "PipelineReady", "--timeout", "60")
        yield s
    finally:
        s.stop()


def body(values: list[int], name: str = "x") -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": name, "shape": [1, len(values)], "datatype": "INT64", "data": values}]}
    )


def infer_pipeline(
    s: Serve, name: str, payload: bytes, via_header: bool = True
) -> tuple[int, dict[str, str], dict]:
    if via_header:
        status, headers, raw = http_post(
            s.url + f"/v2/models/{name}/infer",
            payload,
            {"Content-Type": "application/json", "Seldon-Model": f"{name}.pipeline"},
            30,
        )
    else:
        status, headers, raw = http_post(s.url + f"/v2/pipelines/{name}/infer", payload, None, 30)
    return status, headers, orjson.loads(raw)


def test_one_two_three_step_chains_over_rest(kserve: Serve) -> None:
    status, headers, out = infer_pipeline(kserve, "one", body([1, 2, 3]))
    assert status == 200, out
    assert out["outputs"][0]["data"] == [6]
    status, headers, out = infer_pipeline(kserve, "demo", body([4, 5]), via_header=False)
    assert status == 200, out
    assert out["model_name"] == "sum" and out["outputs"][0]["data"] == [9]
    assert headers["x-request-id"].split(".")[1] == "demo"  # Seldon's composite key
    status, _, out = infer_pipeline(kserve, "three", body([2, 10]))
    assert status == 200, out
    assert out["outputs"][0]["data"] == [12]


def test_pipeline_readiness_endpoints(kserve: Serve) -> None:
    assert http_get(kserve.url + "/v2/pipelines/demo/ready")[0] == 200
    assert http_get(kserve.url + "/v2/pipelines/nope/ready")[0] == 404


def test_request_timeout_answers_instead_of_hanging(kserve: Serve) -> None:
    # the step takes 5 s, the pipeline's timeout is 1 s: Seldon would wait; the caller gets a 504
    status, _, out = infer_pipeline(kserve, "sleepy", body([1]))
    assert status == 504, out
    assert "did not answer within 1 s" in out["error"]


def test_a_step_past_the_model_gateway_worker_timeout_is_a_400_not_a_hang(tmp_path: Path) -> None:
    """MODELGATEWAY_WORKER_TIMEOUT_MS: a step's model call that takes longer fails the step, as
    Seldon's model gateway does; the caller hears of it as of any model error (the pipeline's own
    timeout, 60 s by default, is far off)."""
    s = Serve(
        tmp_path / "data", kafka=True, env={"MODELGATEWAY_WORKER_TIMEOUT_MS": "500"},
        extra=["--load", str(SAMPLES), "--load", str(PIPELINES)],
    )  # fmt: skip
    try:
        s.start()
        cli(s, "model", "load", "-f", str(model_manifest(tmp_path, "slow", SLOW)))
        slow = "spec:\n  steps:\n  - name: slow\n  output:\n    steps: [slow]\n"
        cli(s, "pipeline", "load", "-f", str(pipeline_manifest(tmp_path, "slowpoke", slow)))
        cli(s, "pipeline", "status", "slowpoke", "-w", "PipelineReady", "--timeout", "60")
        status, _, out = infer_pipeline(s, "slowpoke", body([1]))
        assert status == 400, out
        assert out["error"] == "slow : model gateway worker timed out"
        # the gateway goes on; the model server is still busy with the 5 s call, so calls of the
        # models it shares with slow time out too until that call is over
        for _ in range(40):
            status, _, out = infer_pipeline(s, "demo", body([1, 2]))
            if status == 200:
                break
            assert out["error"] == "echo : model gateway worker timed out"
            time.sleep(0.25)
        assert status == 200 and out["outputs"][0]["data"] == [3], out
    finally:
        s.stop()


def test_model_error_reaches_the_caller_as_400(kserve: Serve) -> None:
    status, _, out = infer_pipeline(kserve, "failing", body([1]))
    assert status == 400, out
    assert out["error"].startswith("boom : ") and "boom went the model" in out["error"]


def test_unknown_pipeline_is_404(kserve: Serve) -> None:
    status, _, out = infer_pipeline(kserve, "nope", body([1]))
    assert status == 404 and "nope" in out["error"]


def test_grpc_and_tritonclient_with_seldon_model_header(kserve: Serve) -> None:
    client = grpcclient.InferenceServerClient(kserve.grpc_url)
    x = grpcclient.InferInput("x", [1, 3], "INT64")
    x.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int64))
    result = client.infer("demo", [x], headers={"seldon-model": "demo.pipeline"})
    assert result.as_numpy("sum").tolist() == [6]
    with pytest.raises(Exception, match="boom"):
        client.infer("failing", [x], headers={"seldon-model": "failing.pipeline"})
    with grpc.insecure_channel(kserve.grpc_url) as channel:
        from tritonclient.grpc import service_pb2_grpc as pb2_grpc

        stub = pb2_grpc.GRPCInferenceServiceStub(channel)
        ready = stub.ModelReady(
            pb2.ModelReadyRequest(name="demo"), metadata=(("seldon-model", "demo.pipeline"),)
        )
        assert ready.ready


def test_model_through_kafka_with_dot_model_target(kserve: Serve) -> None:
    status, _, raw = http_post(
        kserve.url + "/v2/models/sum/infer",
        body([1, 1]),
        {"Content-Type": "application/json", "Seldon-Model": "sum.model"},
        30,
    )
    assert status == 200 and orjson.loads(raw)["outputs"][0]["data"] == [2]


def test_async_path_through_the_pipeline_topics(kserve: Serve) -> None:
    bootstrap = kserve.bootstrap
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    outputs = "seldon.default.pipeline.demo.outputs"
    consumer.assign([TopicPartition(outputs, p, -1) for p in range(8)])  # from the end
    try:
        time.sleep(1.0)
        producer = Producer({"bootstrap.servers": bootstrap})
        req = pb2.ModelInferRequest(model_name="demo", id="async-1")
        t = req.inputs.add(name="x", datatype="INT64", shape=[1, 2])
        t.contents.int64_contents.extend([20, 22])
        key = f"3.demo.{uuid.uuid4().hex}"
        producer.produce(
            "seldon.default.pipeline.demo.inputs",
            req.SerializeToString(),
            key=key,
            partition=3,
            headers=[("pipeline", b"demo")],
        )
        producer.flush(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() or msg.key().decode() != key:
                continue
            resp = pb2.ModelInferResponse.FromString(msg.value())
            assert np.frombuffer(resp.raw_output_contents[0], dtype=np.int64).tolist() == [42]
            assert msg.partition() == 3
            return
        raise AssertionError("no answer on the pipeline's outputs topic")
    finally:
        consumer.close()


def test_garbage_on_an_inputs_topic_goes_to_the_errors_topic(kserve: Serve) -> None:
    bootstrap = kserve.bootstrap
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition("seldon.default.errors.errors", p, -1) for p in range(8)])
    try:
        time.sleep(1.0)
        producer = Producer({"bootstrap.servers": bootstrap})
        key = f"1.echo.{uuid.uuid4().hex}"
        producer.produce("seldon.default.model.echo.inputs", b"\xff\x00 not protobuf", key=key, partition=1)
        producer.flush(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() or msg.key().decode() != key:
                continue
            assert dict(msg.headers())["seldon-pipeline-errors"] == b"echo"
            break
        else:
            raise AssertionError("no record on the errors topic")
    finally:
        consumer.close()
    status, _, _ = infer_pipeline(kserve, "demo", body([1, 2]))  # the worker is still up
    assert status == 200


def test_500_concurrent_requests_each_answered_once_with_its_own_body(kserve: Serve) -> None:
    def one(i: int) -> tuple[int, int]:
        status, _, out = infer_pipeline(kserve, "one", body([i, 1000]))
        return status, out["outputs"][0]["data"][0] if status == 200 else -1

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(500)))
    assert all(status == 200 for status, _ in results)
    assert [value for _, value in results] == [i + 1000 for i in range(500)]


def test_diamond_inner_join_concatenates_in_declared_order(kserve: Serve) -> None:
    status, _, out = infer_pipeline(kserve, "diamond", body([4, 5]))
    assert status == 200, out
    assert [(o["name"], o["data"]) for o in out["outputs"]] == [("even", [4, 5]), ("sum", [9])]


def test_an_inner_join_that_cannot_complete_answers_an_error_naming_what_is_missing(kserve: Serve) -> None:
    started = time.monotonic()
    status, _, out = infer_pipeline(kserve, "innerjoin", body([4, 5]))
    assert status == 400, out
    assert "both" in out["error"] and "split.outputs" in out["error"] and "500 ms" in out["error"]
    assert 0.5 <= time.monotonic() - started < 10


def test_an_outer_join_with_a_dropped_branch_answers_what_arrived_when_the_window_closes(
    kserve: Serve,
) -> None:
    started = time.monotonic()
    status, _, out = infer_pipeline(kserve, "outerjoin", body([4, 5]))
    assert status == 200, out
    assert [(o["name"], o["data"]) for o in out["outputs"]] == [("sum", [9])]
    assert 0.5 <= time.monotonic() - started < 10
    # and with both branches there, at once, in declared order
    status, _, out = infer_pipeline(kserve, "outerjoin", body([5, 4]))
    assert status == 200, out
    assert [(o["name"], o["data"]) for o in out["outputs"]] == [("odd", [5, 4]), ("sum", [9])]


def test_an_any_join_passes_the_first_branch_on_once_and_drops_the_other(kserve: Serve) -> None:
    request_id = f"any-{uuid.uuid4().hex}"
    payload = orjson.dumps(
        {"id": request_id, "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [4, 5]}]}
    )
    status, _, out = infer_pipeline(kserve, "anyjoin", payload)
    assert status == 200, out
    # whichever branch came first: split's `even` (the input) or sum's `sum`, alone
    assert [(o["name"], o["data"]) for o in out["outputs"]] in ([("even", [4, 5])], [("sum", [9])])
    ns = "seldon.default"
    branches = read_keys(
        kserve.bootstrap, [f"{ns}.model.split.outputs", f"{ns}.model.sum.outputs"], request_id, 2
    )
    assert len([m for m in branches if dict(m.headers())["pipeline"] == b"anyjoin"]) == 2  # both arrived
    joined = read_keys(
        kserve.bootstrap, [f"{ns}.model.both.inputs", f"{ns}.pipeline.anyjoin.outputs"], request_id, 2
    )
    assert sorted(m.topic() for m in joined) == [f"{ns}.model.both.inputs", f"{ns}.pipeline.anyjoin.outputs"]


def test_a_trigger_runs_the_step_only_when_its_tensor_is_there(kserve: Serve) -> None:
    status, _, out = infer_pipeline(kserve, "gated", body([4, 5]))  # split answers `even`: fires
    assert status == 200, out
    assert [(o["name"], o["data"]) for o in out["outputs"]] == [("sum", [9])]  # echo's x, summed
    started = time.monotonic()
    status, _, out = infer_pipeline(kserve, "gated", body([5, 4]))  # `odd`: no trigger
    assert status == 400, out
    assert "sum" in out["error"] and "triggers (split.outputs.even)" in out["error"]
    assert 0.5 <= time.monotonic() - started < 10


def test_a_batched_step_calls_the_model_once_for_several_callers_each_getting_its_own_rows(
    kserve: Serve,
) -> None:
    def one(i: int) -> tuple[int, Any]:
        status, _, out = infer_pipeline(kserve, "batched", body([i, 100]))
        return status, out

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, range(3)))
    assert [status for status, _ in results] == [200, 200, 200], results
    assert [out["outputs"][0]["data"] for _, out in results] == [[100], [101], [102]]
    batches = read_keys(kserve.bootstrap, ["seldon.default.model.sum.inputs"], ".batched.batch-", want=2)
    members = [orjson.loads(dict(m.headers())["headrace-batch"]) for m in batches]
    assert sum(len(m) for m in members) == 3  # every request went through a batch
    assert max(len(m) for m in members) >= 2  # two workers: at least one batch held two requests
    # a lone caller: its partial batch goes when the 1 s window closes, it does not wait for company
    started = time.monotonic()
    status, _, out = infer_pipeline(kserve, "batched", body([5, 6]))
    assert status == 200 and out["outputs"][0]["data"] == [11]
    assert 0.9 <= time.monotonic() - started < 10


def test_a_chained_pipeline_gets_the_other_pipelines_answers_under_the_same_key(kserve: Serve) -> None:
    request_id = f"chain-{uuid.uuid4().hex}"
    payload = orjson.dumps(
        {"id": request_id, "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}
    )
    status, _, out = infer_pipeline(kserve, "demo", payload)
    assert status == 200 and out["outputs"][0]["data"] == [3], out
    [msg] = read_keys(kserve.bootstrap, ["seldon.default.pipeline.downstream.outputs"], request_id, want=1)
    resp = pb2.ModelInferResponse.FromString(msg.value())
    assert [o.name for o in resp.outputs] == ["odd"]  # demo's `sum` (3), renamed x, through split
    assert np.frombuffer(resp.raw_output_contents[0], dtype=np.int64).tolist() == [3]
    assert dict(msg.headers())["pipeline"] == b"downstream"


def test_an_external_trigger_passes_the_other_pipelines_inputs_on_when_it_fires(
    kserve: Serve,
) -> None:
    fired = f"evens-{uuid.uuid4().hex}"
    payload = orjson.dumps(
        {"id": fired, "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [4, 5]}]}
    )
    status, _, out = infer_pipeline(kserve, "three", payload)  # split answers `even`: the trigger fires
    assert status == 200, out
    [msg] = read_keys(kserve.bootstrap, ["seldon.default.pipeline.evens.outputs"], fired, want=1)
    resp = pb2.ModelInferResponse.FromString(msg.value())
    assert [o.name for o in resp.outputs] == ["x"]  # three's inputs, not the trigger's tensor
    assert np.frombuffer(resp.raw_output_contents[0], dtype=np.int64).tolist() == [4, 5]
    assert "seldon-pipeline-errors" not in dict(msg.headers())


def test_pipelines_reading_each_other_are_refused_naming_the_cycle(kserve: Serve, tmp_path: Path) -> None:
    env = {**os.environ, "HEADRACE_CONTROL_URL": kserve.control}
    loop = "spec:\n  input:\n    externalInputs: [{other}]\n  steps:\n  - name: echo\n"
    cli(
        kserve,
        "pipeline",
        "load",
        "-f",
        str(pipeline_manifest(tmp_path, "cyc-a", loop.format(other="cyc-b"))),
    )
    try:
        second = pipeline_manifest(tmp_path, "cyc-b", loop.format(other="cyc-a"))
        proc = subprocess.run(
            [HEADRACE, "pipeline", "load", "-f", str(second)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stdout
        assert (
            "cycle through externalInputs (cyc-a reads cyc-b, cyc-b reads cyc-a)" in proc.stdout + proc.stderr
        )
        assert "cyc-b" not in cli(kserve, "pipeline", "list")  # nothing half-loaded
    finally:
        cli(kserve, "pipeline", "unload", "cyc-a")


def test_a_cyclic_pipeline_goes_round_until_its_model_says_stop(kserve: Serve) -> None:
    request_id = f"loop-{uuid.uuid4().hex}"
    payload = orjson.dumps(
        {"id": request_id, "inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [0]}]}
    )
    status, _, out = infer_pipeline(kserve, "counting", payload)
    assert status == 200, out
    assert {o["name"]: o["data"] for o in out["outputs"]} == {"output": [10], "stop": [0]}
    entries = read_keys(kserve.bootstrap, ["seldon.default.model.counter.inputs"], request_id, want=10)
    assert len(entries) == 10  # 0 -> 1 -> ... -> 10: the counter ran ten times, each round once
    assert dict(entries[-1].headers())["headrace-visits"].startswith(b"counter=")
    # already past the limit: one round, straight out
    status, _, out = infer_pipeline(kserve, "counting", body([12]))
    assert status == 200 and out["outputs"][0]["data"] == [13], out


def test_a_cycle_past_max_step_revisits_answers_an_error_and_writes_the_errors_topic(kserve: Serve) -> None:
    request_id = f"cap-{uuid.uuid4().hex}"
    payload = orjson.dumps(
        {"id": request_id, "inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [0]}]}
    )
    started = time.monotonic()
    status, _, out = infer_pipeline(kserve, "capped", payload)
    assert status == 400, out
    assert out["error"].startswith("counter : ") and "maxStepRevisits 3" in out["error"], out
    assert time.monotonic() - started < 10  # at once, not at the pipeline's timeout
    (error,) = read_keys(kserve.bootstrap, ["seldon.default.errors.errors"], request_id, want=1)
    assert dict(error.headers())["seldon-pipeline-errors"] == b"counter"
    entries = read_keys(kserve.bootstrap, ["seldon.default.model.counter.inputs"], request_id, want=3)
    assert len(entries) == 3  # the fourth entry was refused


def test_inspect_shows_a_requests_records_on_every_topic_of_the_pipeline(kserve: Serve) -> None:
    request_id = f"inspect-{uuid.uuid4().hex}"
    payload = orjson.dumps(
        {"id": request_id, "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [4, 5]}]}
    )
    status, _, out = infer_pipeline(kserve, "three", payload)
    assert status == 200, out
    env = {**os.environ, "HEADRACE_CONTROL_URL": kserve.control, "KAFKA_BOOTSTRAP_SERVERS": kserve.bootstrap}

    def inspect(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [HEADRACE, "pipeline", "inspect", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

    proc = inspect("three.split.outputs", "--request-id", request_id)
    assert proc.returncode == 0, proc.stderr
    head, body_line = proc.stdout.strip().splitlines()
    assert head.startswith("seldon.default.model.split.outputs [") and request_id in head
    assert orjson.loads(body_line)["outputs"] == [
        {"name": "even", "datatype": "INT64", "shape": [1, 2], "data": [4, 5]}
    ]
    proc = inspect("three", "--request-id", request_id, "-v")
    assert proc.returncode == 0, proc.stderr
    for topic in (
        "pipeline.three.inputs",
        "model.echo.inputs",
        "model.sum.outputs",
        "pipeline.three.outputs",
    ):
        assert f"seldon.default.{topic} [" in proc.stdout
    assert f'"x-request-id":"{request_id}"' in proc.stdout and '"pipeline":"three"' in proc.stdout
    proc = inspect("three.sum.outputs.sum", "--request-id", request_id, "--format", "raw")
    assert proc.returncode == 0 and "raw_output_contents" in proc.stdout
    proc = inspect("three.nosuchstep")
    assert proc.returncode == 1 and "pipeline three has no step 'nosuchstep'" in proc.stderr


def test_replay_resubmits_recorded_inputs_and_shows_new_answers_beside_the_recorded(
    kserve: Serve, tmp_path: Path
) -> None:
    summing = "spec:\n  steps:\n  - name: sum\n  output:\n    steps: [sum]\n"
    cli(kserve, "pipeline", "load", "-f", str(pipeline_manifest(tmp_path, "versioned", summing)))
    cli(kserve, "pipeline", "status", "versioned", "-w", "PipelineReady", "--timeout", "60")
    request_id = f"replay-{uuid.uuid4().hex}"
    payload = orjson.dumps(
        {"id": request_id, "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [4, 5]}]}
    )
    status, _, out = infer_pipeline(kserve, "versioned", payload)
    assert status == 200 and out["outputs"][0]["data"] == [9], out
    env = {**os.environ, "HEADRACE_CONTROL_URL": kserve.control, "KAFKA_BOOTSTRAP_SERVERS": kserve.bootstrap}

    def replay(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [HEADRACE, "pipeline", "replay", "versioned", "--inference-grpc-host", kserve.grpc_url, *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=90)

    proc = replay("--request-id", request_id, "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = orjson.loads(proc.stdout)
    summed = {"outputs": [{"name": "sum", "datatype": "INT64", "shape": [1], "data": [9]}]}
    assert result["request_id"] == request_id and result["same"]
    assert result["recorded"] == result["replayed"] == summed
    # the same input, picked by its place in the inputs topic, sent to another pipeline
    partition, offset = result["source"].rpartition("[")[2].rstrip("]").split(":")
    proc = replay("--partition", partition, "--from-offset", offset, "--to-offset", str(int(offset) + 1),
                  "--to", "one", "--format", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(r["request_id"], r["replayed"]) for r in orjson.loads(proc.stdout)] == [(request_id, summed)]
    # a new version of the pipeline: echo instead of sum; the replay shows what changed, and exits 1
    echoing = "spec:\n  steps:\n  - name: echo\n  output:\n    steps: [echo]\n"
    cli(kserve, "pipeline", "load", "-f", str(pipeline_manifest(tmp_path, "versioned", echoing)))
    cli(kserve, "pipeline", "status", "versioned", "-w", "PipelineReady", "--timeout", "60")
    deadline = time.monotonic() + 30
    while True:  # the new version is ready when every worker has it
        proc = replay("--request-id", request_id)
        if proc.returncode == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"request {request_id} (seldon.default.pipeline.versioned.inputs [")
    assert lines[0].endswith("differs")
    assert '"name": "sum"' in lines[1] and '"data": [9]' in lines[1]  # recorded
    assert '"name": "x"' in lines[2] and '"data": [4, 5]' in lines[2]  # replayed through echo
    assert lines[-1] == "1 replayed: 0 same, 1 differ"
    proc = replay("--request-id", "no-such-request")
    assert proc.returncode == 1 and "no recorded inputs of pipeline versioned match" in proc.stderr


def test_every_hop_is_written_to_its_topic_exactly_once(kserve: Serve) -> None:
    """Local hops skip the broker's round trip, not the log: each step's input and output is on its
    Seldon topic, once (the copy coming back from the broker is not handled a second time)."""
    request_id = f"hops-{uuid.uuid4().hex}"
    payload = orjson.dumps(
        {"id": request_id, "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [4, 5]}]}
    )
    status, _, out = infer_pipeline(kserve, "three", payload)
    assert status == 200, out
    assert out["outputs"][0]["data"] == [9]
    ns = "seldon.default"
    topics = [f"{ns}.pipeline.three.inputs", f"{ns}.pipeline.three.outputs"]
    topics += [f"{ns}.model.{m}.{d}" for m in ("echo", "split", "sum") for d in ("inputs", "outputs")]
    records = read_keys(kserve.bootstrap, topics, request_id, want=len(topics))
    # `evens` reads three's inputs and has an `echo` step too: its records share the key, not the header
    records = [m for m in records if dict(m.headers())["pipeline"] == b"three"]
    assert sorted(m.topic() for m in records) == sorted(topics)
    partitions = {m.partition() for m in records}
    assert len(partitions) == 1  # the request stayed on one partition end to end
    for m in records:
        assert dict(m.headers())["x-request-id"] == request_id.encode()


@pytest.mark.parametrize("elements", [1, 300_000], ids=["small", "parked-in-shm"])
def test_a_worker_killed_mid_step_resumes_the_request_from_kafka(kserve: Serve, elements: int) -> None:
    """Async path through the 5 s `slow` step: the worker owning the partition is killed while the model
    runs; the restarted worker finds the uncommitted step input in Kafka and finishes the request. A
    2.4 MB input travels between steps as a reference to the worker's shared memory (with local hops):
    the successor fetches it from the dead worker's arena."""
    partition = 1
    key = f"{partition}.sleepy.{uuid.uuid4().hex}"
    req = pb2.ModelInferRequest(model_name="sleepy", id="resume-1")
    req.inputs.add(name="x", datatype="INT64", shape=[1, elements])
    sent = np.arange(elements, dtype=np.int64) + 7
    req.raw_input_contents.append(sent.tobytes())
    producer = Producer({"bootstrap.servers": kserve.bootstrap, "message.max.bytes": 10_000_000})
    producer.produce(
        "seldon.default.pipeline.sleepy.inputs",
        req.SerializeToString(),
        key=key,
        partition=partition,
        headers=[("pipeline", b"sleepy")],
    )
    producer.flush(10)
    started = read_keys(kserve.bootstrap, ["seldon.default.model.slow.inputs"], key, want=1, settle_s=0)
    assert len(started) == 1  # the step has begun
    parked = dict(started[0].headers()).get("headrace-shm")
    if elements > 1 and "--local-hops" not in kserve.extra:
        assert parked is not None and started[0].value() in (b"", None)  # a reference, not 2.4 MB
    else:
        assert parked is None and len(started[0].value()) >= sent.nbytes  # inline
    workers = json.loads((kserve.data_dir / "run" / "children.json").read_text())
    os.kill(workers[f"worker {partition % kserve.workers}"], signal.SIGKILL)
    answers = read_keys(kserve.bootstrap, ["seldon.default.pipeline.sleepy.outputs"], key, want=1, settle_s=0)
    assert len(answers) == 1
    resp = pb2.ModelInferResponse.FromString(answers[0].value())
    assert "headrace-shm" not in dict(answers[0].headers())  # a pipeline's outputs carry full payloads
    assert np.array_equal(np.frombuffer(resp.raw_output_contents[0], dtype=np.int64), sent)
    kserve.wait_ready("/v2/health/ready")


GROW = '''
import numpy as np
class Model:
    """Answers with 2 MiB whatever it gets: more than the topics accept in this test."""
    def predict(self, inputs):
        return {"big": np.zeros(512 * 1024, dtype=np.float32)}
'''


def test_oversize_records_become_error_answers_not_hangs(tmp_path: Path, serve_factory: list[Serve]) -> None:
    limit = 1024 * 1024
    s = Serve(
        tmp_path / "data", kafka=True, extra=["--load", str(SAMPLES), "--kafka-max-message-bytes", str(limit)]
    )
    serve_factory.append(s)
    s.start()
    cli(s, "model", "load", "-f", str(model_manifest(tmp_path, "grow", GROW)))
    cli(
        s,
        "pipeline",
        "load",
        "-f",
        str(
            pipeline_manifest(
                tmp_path, "big", "spec:\n  steps:\n  - name: sum\n  output:\n    steps: [sum]\n"
            )
        ),
    )
    cli(
        s,
        "pipeline",
        "load",
        "-f",
        str(
            pipeline_manifest(
                tmp_path, "grows", "spec:\n  steps:\n  - name: grow\n  output:\n    steps: [grow]\n"
            )
        ),
    )
    for name in ("big", "grows"):
        cli(s, "pipeline", "status", name, "-w", "PipelineReady", "--timeout", "60")
    # the request itself is larger than the pipeline's inputs topic accepts
    values = np.ones((1, 512 * 1024), dtype=np.float32)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 512 * 1024],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ]
        }
    )
    status, _, raw = http_post(
        s.url + "/v2/pipelines/big/infer",
        header + values.tobytes(),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        30,
    )
    assert status == 413, raw
    assert "too large" in orjson.loads(raw)["error"].lower()
    # a step's output is larger than the pipeline's outputs topic accepts (between steps it travels
    # as a shared-memory reference): the write fails and the caller hears of it at once (not a 504)
    started = time.monotonic()
    status, _, out = infer_pipeline(s, "grows", body([1]))
    assert status == 400, out
    assert "seldon.default.pipeline.grows.outputs" in out["error"] and "too large" in out["error"].lower()
    assert time.monotonic() - started < 10
