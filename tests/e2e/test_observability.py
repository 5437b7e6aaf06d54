"""Operations: Prometheus metrics summed over processes (exact across workers and a worker killed with
SIGKILL), request ids on every answer, W3C trace context through Kafka, OpenTelemetry spans across the
hops (a tiny OTLP/HTTP receiver), JSON log lines with the request id."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import SAMPLES, Serve, children, free_port, http_post, read_keys
from tritonclient.grpc import service_pb2 as pb2
from tritonclient.grpc import service_pb2_grpc as pb2_grpc

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "config" / "samples" / "pipelines"
BODY = b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}'
JSON = {"Content-Type": "application/json"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
HEX32 = re.compile(r"^[0-9a-f]{32}$")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(s: Serve) -> Samples:
    with urllib.request.urlopen(s.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def rest_echo(
    s: Serve, headers: dict[str, str] | None = None, body: bytes = BODY
) -> tuple[int, dict[str, str]]:
    status, got, _ = http_post(f"{s.url}/v2/models/echo/infer", body, {**JSON, **(headers or {})})
    return status, got


def grpc_echo(stub: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    request = pb2.ModelInferRequest(model_name="echo")
    x = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    x.contents.fp32_contents.extend([1, 2])
    _, call = stub.ModelInfer.with_call(request, metadata=metadata, timeout=10)
    return call


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    s = Serve(tmp_path_factory.mktemp("obs") / "data", workers=2, extra=["--load", str(SAMPLES)])
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.mark.timeout(150)
def test_metrics_are_exact_over_two_workers_and_a_worker_killed_with_sigkill(direct: Serve) -> None:
    """Known calls over REST and gRPC, spread by the kernel over both workers: Seldon's counts are
    exact. Then worker 0 is killed with SIGKILL and restarted: the dead worker's counts stay in the
    sum, and the restart is counted."""
    before = scrape(direct)
    base_rest = total(before, "seldon_model_infer_total", model="echo", method_type="rest", code="200")
    base_grpc = total(before, "seldon_model_infer_total", model="echo", method_type="grpc", code="OK")
    for _ in range(30):  # a new connection each: SO_REUSEPORT spreads them over the workers
        assert rest_echo(direct)[0] == 200
    channel = grpc.insecure_channel(direct.grpc_url)
    stub = pb2_grpc.GRPCInferenceServiceStub(channel)
    for _ in range(12):
        grpc_echo(stub)
    for _ in range(3):
        assert http_post(f"{direct.url}/v2/models/nope/infer", BODY, JSON)[0] == 404
    for _ in range(2):
        assert rest_echo(direct, body=b'{"inputs": 3}')[0] == 400
    got = scrape(direct)
    rest = {"model": "echo", "model_internal": "echo_1", "server": "headrace", "server_replica": "0"}
    assert total(got, "seldon_model_infer_total", **rest, method_type="rest", code="200") == base_rest + 30
    assert total(got, "seldon_model_infer_total", **rest, method_type="grpc", code="OK") == base_grpc + 12
    assert total(got, "seldon_model_infer_total", model="echo", method_type="rest", code="400") == 2
    assert total(got, "seldon_model_infer_total", model="nope") == 0  # no labels for made-up names
    assert (
        total(got, "headrace_request_errors_total", kind="not_found", target="model", method_type="rest") == 3
    )
    hist = {"server": "headrace", "server_replica": "0", "code": "200", "method": "post"}
    count = total(got, "seldon_model_infer_api_seconds_count", **hist)
    assert count == base_rest + 30
    assert total(got, "seldon_model_infer_api_seconds_bucket", **hist, le="+Inf") == count
    assert 0 < total(got, "seldon_model_infer_api_seconds_sum", **hist) < 30
    assert total(got, "seldon_model_infer_api_seconds_count", method="grpc", code="OK") == base_grpc + 12
    agg = total(got, "seldon_model_aggregate_infer_total", server="headrace", method_type="rest")
    assert agg == base_rest + 32
    assert total(got, "seldon_load_model_counter", server="headrace", server_replica="0") == 2  # echo, sum
    assert total(got, "seldon_loaded_model_gauge", model_internal="echo_1") == 1
    # both workers recorded (each process has its own files)
    pids = children(direct)
    files = {p.name for p in (direct.data_dir / "run" / "metrics").iterdir()}
    assert {f"counter_{pids['worker 0']}.db", f"counter_{pids['worker 1']}.db"} <= files

    victim = pids["worker 0"]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and children(direct).get("worker 0") in (None, victim):
        time.sleep(0.1)
    assert children(direct).get("worker 0") not in (None, victim), "worker 0 was not restarted"
    direct.wait_ready("/v2/models/echo/ready")
    after_kill = scrape(direct)
    assert (
        total(after_kill, "seldon_model_infer_total", **rest, method_type="rest", code="200")
        == base_rest + 30
    )
    served = 0
    deadline = time.monotonic() + 30
    while served < 20 and time.monotonic() < deadline:  # the restarted worker takes a share again
        try:
            served += rest_echo(direct)[0] == 200
        except OSError:
            time.sleep(0.05)
    assert served == 20
    got = scrape(direct)
    assert total(got, "seldon_model_infer_total", **rest, method_type="rest", code="200") == base_rest + 50
    assert total(got, "headrace_process_restarts_total", process="worker 0") == 1
    assert total(got, "seldon_loaded_model_gauge", model_internal="echo_1") == 1  # the server lives on
    channel.close()


def test_request_ids_on_rest_and_grpc_answers(direct: Serve) -> None:
    status, headers = rest_echo(direct)
    assert status == 200 and HEX32.match(headers["x-request-id"])
    status, headers = rest_echo(direct, {"x-request-id": "mine-1"})
    assert headers["x-request-id"] == "mine-1"
    status, headers = rest_echo(direct, {"x-request-id": "mine-2"}, body=b"not json")
    assert status == 400 and headers["x-request-id"] == "mine-2"  # errors too
    status, headers, _ = http_post(f"{direct.url}/v2/models/nope/infer", BODY, JSON)
    assert status == 404 and HEX32.match(headers["x-request-id"])
    with urllib.request.urlopen(f"{direct.url}/v2/health/ready", timeout=5) as resp:
        assert HEX32.match(resp.headers["x-request-id"])
    # the client's trace context comes back unchanged (no OpenTelemetry here: nothing of ours in it)
    status, headers = rest_echo(direct, {"traceparent": TRACEPARENT, "tracestate": "k=v"})
    assert headers["traceparent"] == TRACEPARENT and headers["tracestate"] == "k=v"
    with grpc.insecure_channel(direct.grpc_url) as channel:
        stub = pb2_grpc.GRPCInferenceServiceStub(channel)
        trailing = dict(grpc_echo(stub).trailing_metadata())
        assert HEX32.match(trailing["x-request-id"])
        call = grpc_echo(stub, (("x-request-id", "grpc-7"), ("traceparent", TRACEPARENT)))
        trailing = dict(call.trailing_metadata())
        assert trailing["x-request-id"] == "grpc-7" and trailing["traceparent"] == TRACEPARENT
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(
                pb2.ModelInferRequest(model_name="nope"), metadata=(("x-request-id", "g-8"),), timeout=10
            )
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(failed.value.trailing_metadata())["x-request-id"] == "g-8"


# -- pipelines, OpenTelemetry and JSON logs ---------------------------------------------------------


class Receiver:
    """A tiny OTLP/HTTP trace receiver: keeps every span posted to /v1/traces."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans: list[Any] = []
        self.spans = spans
        self.lock = threading.Lock()
        lock = self.lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def of_trace(self, trace_id: str) -> list[Any]:
        with self.lock:
            return [s for s in self.spans if s.trace_id.hex() == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Serve]:
    extra = ["--load", str(SAMPLES), "--load", str(PIPELINES), "--otel-endpoint", receiver.url]
    extra += ["--log-format", "json", "--request-log-sample", "1.0"]
    s = Serve(tmp_path_factory.mktemp("traced") / "data", workers=2, kafka=True, extra=extra)
    try:
        s.start()
        s.wait_ready("/v2/pipelines/demo/ready", timeout=120)
        yield s
    finally:
        s.stop()


@pytest.mark.timeout(150)
def test_trace_context_travels_on_every_record_and_spans_chain_across_the_hops(
    traced: Serve, receiver: Receiver
) -> None:
    rid = f"trace-{uuid.uuid4().hex[:8]}"
    headers = {**JSON, "Seldon-Model": "demo.pipeline", "x-request-id": rid, "traceparent": TRACEPARENT}
    status, answer, body = http_post(f"{traced.url}/v2/models/demo/infer", BODY, headers)
    assert status == 200, body
    assert answer["x-request-id"].endswith(f".demo.{rid}")  # Seldon's composite key
    # the answer names our span of the call, in the client's trace
    _, trace_id, our_span, _ = answer["traceparent"].split("-")
    assert trace_id == TRACE_ID and our_span != CLIENT_SPAN
    ns = "seldon.default"
    topics = [f"{ns}.pipeline.demo.inputs", f"{ns}.pipeline.demo.outputs"]
    topics += [f"{ns}.model.{m}.{d}" for m in ("echo", "sum") for d in ("inputs", "outputs")]
    records = read_keys(traced.bootstrap, topics, rid, want=len(topics), settle_s=0)
    assert sorted(m.topic() for m in records) == sorted(topics)
    for m in records:
        h = dict(m.headers())
        assert h["traceparent"].decode().split("-")[1] == TRACE_ID, m.topic()
        assert int(h["headrace-written"]) > 0
        assert h["x-request-id"] == rid.encode()
    # the spans: call -> step echo -> step sum -> reply, one trace
    deadline = time.monotonic() + 20
    names = {"infer demo", "step echo", "step sum", "reply demo"}
    while time.monotonic() < deadline and not names <= {s.name for s in receiver.of_trace(TRACE_ID)}:
        time.sleep(0.2)
    spans = {s.name: s for s in receiver.of_trace(TRACE_ID)}
    assert names <= set(spans), sorted(spans)
    assert spans["infer demo"].parent_span_id.hex() == CLIENT_SPAN
    assert spans["infer demo"].span_id.hex() == our_span
    assert spans["step echo"].parent_span_id == spans["infer demo"].span_id
    assert spans["step sum"].parent_span_id == spans["step echo"].span_id
    assert spans["reply demo"].parent_span_id == spans["step sum"].span_id
    # the hop metrics of this pipeline
    got = scrape(traced)
    for step in ("echo", "sum", "reply"):
        assert total(got, "headrace_pipeline_hop_seconds_count", pipeline="demo", step=step) >= 1, step
    assert total(got, "seldon_pipeline_infer_total", pipeline="demo", method_type="rest", code="200") >= 1
    assert total(got, "seldon_model_infer_total", model="sum", method_type="grpc", code="OK") >= 1
    assert total(got, "headrace_kafka_produce_delivery_seconds_count", producer="fast") >= 1
    # sampled gauges (every second) and the consumer's lag (librdkafka statistics, every 5 s)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = scrape(traced)
        names = {n for n, _ in got}
        workers = {dict(ls).get("worker") for n, ls in got if n == "headrace_pipeline_gateway_pending_calls"}
        wanted = {"headrace_modelgateway_inflight_records", "headrace_kafka_consumer_lag_records"}
        if wanted <= names and workers == {"0", "1"}:
            break
        time.sleep(0.5)
    assert wanted <= names and workers == {"0", "1"}, sorted(names)


@pytest.mark.timeout(120)
def test_pipeline_counts_exact_and_json_logs_carry_the_request_id(traced: Serve) -> None:
    before = scrape(traced)
    key = {"pipeline": "demo", "server": "pipeline-gateway"}
    rest0 = total(before, "seldon_pipeline_infer_total", **key, method_type="rest", code="200")
    for _ in range(10):
        status, _, _ = http_post(f"{traced.url}/v2/pipelines/demo/infer", BODY, JSON)
        assert status == 200
    with grpc.insecure_channel(traced.grpc_url) as channel:
        stub = pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb2.ModelInferRequest(model_name="demo")
        x = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
        x.contents.fp32_contents.extend([1, 2])
        _, call = stub.ModelInfer.with_call(
            request, metadata=(("seldon-model", "demo.pipeline"), ("x-request-id", "g-pipe")), timeout=20
        )
        assert dict(call.initial_metadata())["x-request-id"].endswith(".demo.g-pipe")
    failing = f"bad-{uuid.uuid4().hex[:8]}"
    status, answer, _ = http_post(
        f"{traced.url}/v2/pipelines/demo/infer", b'{"inputs": 1}', {**JSON, "x-request-id": failing}
    )
    assert status == 400 and answer["x-request-id"] == failing
    got = scrape(traced)
    assert total(got, "seldon_pipeline_infer_total", **key, method_type="rest", code="200") == rest0 + 10
    assert total(got, "seldon_pipeline_infer_total", **key, method_type="grpc", code="OK") >= 1
    assert (
        total(got, "seldon_pipeline_infer_api_seconds_count", **key, method="rest", code="200") == rest0 + 10
    )
    assert total(got, "headrace_request_errors_total", kind="invalid_argument", target="pipeline") >= 1
    # one JSON line for the error, with its request id; sampled request lines (sample 1.0) too
    deadline = time.monotonic() + 10
    errors: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not errors:
        lines = [orjson.loads(line) for line in traced.log.read_text().splitlines() if line.startswith("{")]
        errors = [r for r in lines if r.get("request_id") == failing and r["level"] == "warning"]
        time.sleep(0.2)
    assert len(errors) == 1, errors
    assert errors[0]["status"] == "400" and errors[0]["kind"] == "invalid_argument"
    assert errors[0]["role"].startswith("worker ")
    sampled = [r for r in lines if r.get("logger") == "headrace.requests" and r["level"] == "info"]
    assert any(r.get("path") == "/v2/pipelines/demo/infer" and r["status"] == "200" for r in sampled)
    assert all({"request_id", "duration_ms", "status"} <= set(r) for r in sampled)
