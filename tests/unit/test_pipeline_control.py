"""Pipelines over the control API and CLI; TopicAdmin over a fake AdminClient; the topic manager's loop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaError, KafkaException

from headrace.cli import cli as main_cli
from headrace.config.manifests import ServerManifest
from headrace.config.settings import Settings
from headrace.control_cli import pipeline
from headrace.engine.kafka.admin import TopicAdmin, TopicAdminError, first_address
from headrace.engine.scheduler.api import ControlApi, ControlServer
from headrace.engine.scheduler.state import SchedulerState
from headrace.engine.scheduler.store import Store
from headrace.engine.scheduler.topic_manager import TopicManager
from headrace.engine.topics import Topics

CHAIN = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: chain
spec:
  steps:
    - name: a
    - name: b
      inputs: [a]
  output:
    steps: [b]
"""
# rolling batches are not supported yet: a pipeline the scheduler must refuse
JOIN = CHAIN.replace("name: chain", "name: join").replace(
    "inputs: [a]", "inputs: [a]\n      batch: {size: 2, rolling: true}"
)


def make_state(tmp_path: Path) -> SchedulerState:
    store = Store(tmp_path / "data" / "scheduler.db")
    return SchedulerState([ServerManifest(name="s", replicas=1)], store, lambda s, i: f"/{s}{i}", 2**30)


@pytest.fixture
def api(tmp_path: Path) -> ControlApi:
    return ControlApi(make_state(tmp_path))


def post(api: ControlApi, body: str | bytes) -> tuple[int, Any]:
    return api.dispatch("POST", "/v1/pipelines", body.encode() if isinstance(body, str) else body)


# ------------------------------------------------------------------------------------------ API


def test_api_load_get_list_delete(api: ControlApi) -> None:
    code, body = post(api, CHAIN)
    assert code == 200 and [p.name for p in body["pipelines"]] == ["chain"]
    code, status = api.dispatch("GET", "/v1/pipelines/chain", b"")
    assert code == 200 and status.state == "PipelineCreating" and status.version == 1
    code, body = api.dispatch("GET", "/v1/pipelines", b"")
    assert [p.name for p in body["pipelines"]] == ["chain"]
    code, status = api.dispatch("DELETE", "/v1/pipelines/chain", b"")
    assert code == 200 and status.state == "PipelineTerminated"
    assert api.dispatch("GET", "/v1/pipelines/chain", b"") == (404, {"error": "pipeline chain not found"})
    assert api.dispatch("DELETE", "/v1/pipelines/chain", b"")[0] == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "no Pipeline manifest in the request"),
        (b"\xff", "the body must be UTF-8 YAML"),
        ("a: [", "invalid YAML"),
        (
            CHAIN.replace("    - name: a\n", "    - name: a\n      joinWindow: 3\n"),
            "spec.steps[0].joinWindow",
        ),
        (JOIN, "Pipeline join: spec.steps[1].batch.rolling is not supported yet"),
        (CHAIN.replace("kind: Pipeline", "kind: Model"), "document 1: kind 'Model' is not a Pipeline"),
        (CHAIN.replace("inputs: [a]", "inputs: [x]"), "spec.steps[1].inputs[0] 'x' refers to 'x'"),
        (CHAIN + "---\n" + CHAIN, "Pipeline chain: defined more than once"),
    ],
)
def test_api_rejects_with_the_field(api: ControlApi, body: str | bytes, message: str) -> None:
    code, answer = post(api, body)
    assert code == 400 and message in answer["error"], answer


def test_api_loads_nothing_when_one_document_is_bad(api: ControlApi) -> None:
    code, answer = post(api, CHAIN + "---\n" + JOIN)
    assert code == 400 and "batch.rolling is not supported yet" in answer["error"]
    assert api.dispatch("GET", "/v1/pipelines", b"")[1] == {"pipelines": []}


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def control(tmp_path: Path) -> Iterator[str]:
    state = make_state(tmp_path)
    httpd = ControlServer(("127.0.0.1", 0), ControlApi(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        state.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_cli_load_status_list_unload(control: str, tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "chain.yaml"
    path.write_text(CHAIN)
    result = runner.invoke(pipeline, ["load", "-f", str(path), "--control", control])
    assert result.exit_code == 0, result.output
    assert "chain" in result.output and "PipelineCreating" in result.output

    result = runner.invoke(pipeline, ["status", "chain", "--control", control, "-o", "json"])
    status = json.loads(result.output)
    assert status["state"] == "PipelineCreating" and status["reason"] == "waiting for models: a, b"
    assert status["version"] == 1 and status["steps"] == ["a", "b"]
    assert status["inputTopic"] == "seldon.default.pipeline.chain.inputs" and status["timeoutS"] == 60.0
    assert [c["type"] for c in status["conditions"]] == [
        "ModelsReady",
        "PipelineReady",
        "PipelineGwReady",
        "Ready",
    ]
    assert {"name": "seldon.default.errors.errors", "exists": False} in status["topics"]

    result = runner.invoke(
        pipeline, ["status", "chain", "-w", "Ready", "--timeout", "0.2", "--control", control]
    )
    assert result.exit_code == 1 and "timed out after 0.2s waiting for chain Ready" in result.output
    result = runner.invoke(pipeline, ["status", "chain", "-w", "Bogus", "--control", control])
    assert result.exit_code == 2
    result = runner.invoke(pipeline, ["status", "chain", "-w", "PipelineCreating", "--control", control])
    assert result.exit_code == 0 and "ModelsReady=False" in result.output

    result = runner.invoke(pipeline, ["list", "--control", control, "-o", "json"])
    assert [p["name"] for p in json.loads(result.output)["pipelines"]] == ["chain"]
    result = runner.invoke(pipeline, ["unload", "-f", str(path), "--control", control])
    assert result.exit_code == 0 and "PipelineTerminated" in result.output
    wait = ["status", "chain", "-w", "PipelineTerminated", "--control", control]
    result = runner.invoke(pipeline, wait)
    assert result.exit_code == 0 and "pipeline chain: PipelineTerminated" in result.output
    result = runner.invoke(pipeline, ["unload", "chain", "--control", control])
    assert result.exit_code == 1 and "pipeline chain not found" in result.output


def test_cli_load_errors_name_the_file(control: str, tmp_path: Path) -> None:
    path = tmp_path / "join.yaml"
    path.write_text(JOIN)
    result = CliRunner().invoke(pipeline, ["load", "-f", str(path), "--control", control])
    assert result.exit_code == 1 and "batch.rolling is not supported yet" in result.output
    path.write_text(CHAIN.replace("steps:\n    - name: a", "steps:\n    - nme: a"))
    result = CliRunner().invoke(pipeline, ["load", "-f", str(path), "--control", control])
    assert result.exit_code == 1 and f"{path}: Pipeline chain: spec.steps[0].nme" in result.output


def test_cli_infer_sends_the_seldon_model_header() -> None:
    seen: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["path"] = self.path
            seen["headers"] = self.headers
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = b'{"model_name": "chain", "outputs": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{httpd.server_address[1]}"
        args = ["infer", "chain", '{"inputs": []}', "--inference-host", host, "--header", "x-req=1"]
        result = CliRunner().invoke(pipeline, args)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"model_name": "chain", "outputs": []}
    assert seen["path"] == "/v2/models/chain/infer" and seen["body"] == {"inputs": []}
    assert seen["headers"]["seldon-model"] == "chain.pipeline" and seen["headers"]["x-req"] == "1"


def test_main_cli_has_the_pipeline_group() -> None:
    assert main_cli.commands["pipeline"] is pipeline


# ----------------------------------------------------------------------------------- TopicAdmin


def _future(exc: BaseException | None = None) -> Future[None]:
    future: Future[None] = Future()
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
    return future


def _kafka(code: int, message: str) -> KafkaException:
    return KafkaException(KafkaError(code, message))


class FakeClient:
    def __init__(self) -> None:
        self.created: list[Any] = []
        self.results: dict[str, BaseException | None] = {}

    def create_topics(self, new: list[Any], **kwargs: float) -> dict[str, Future[None]]:
        assert kwargs == {"operation_timeout": 3.0, "request_timeout": 3.0}
        self.created += new
        return {t.topic: _future(self.results.get(t.topic)) for t in new}

    def delete_topics(self, topics: list[str], **kwargs: float) -> dict[str, Future[None]]:
        return {t: _future(self.results.get(t)) for t in topics}

    def list_topics(self, timeout: float) -> Any:
        raise _kafka(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure")


def test_topic_admin_creates_with_partitions_and_max_message_bytes() -> None:
    fake = FakeClient()
    settings = Settings(partitions=3, kafka_max_message_bytes=5_000_000, kafka_bootstrap="127.0.0.1:1")
    admin = TopicAdmin(settings, timeout=3.0, client=fake)
    fake.results["old"] = _kafka(KafkaError.TOPIC_ALREADY_EXISTS, "Topic 'old' already exists.")
    assert admin.ensure({"new", "old"}) == {"new"}
    assert [(t.topic, t.num_partitions, t.replication_factor, t.config) for t in fake.created] == [
        ("new", 3, 1, {"max.message.bytes": "5000000"}),
        ("old", 3, 1, {"max.message.bytes": "5000000"}),
    ]
    assert admin.ensure(set()) == set()
    fake.results["bad"] = _kafka(KafkaError.POLICY_VIOLATION, "max.message.bytes too large")
    with pytest.raises(TopicAdminError) as info:
        admin.ensure({"bad", "new"})
    assert info.value.code == "POLICY_VIOLATION"
    assert info.value.message == "cannot create topic bad at 127.0.0.1:1: max.message.bytes too large"

    fake.results["gone"] = _kafka(KafkaError.UNKNOWN_TOPIC_OR_PART, "unknown")
    assert admin.delete({"gone", "x"}) == {"x"}
    with pytest.raises(
        TopicAdminError, match=r"cannot list topics at 127\.0\.0\.1:1: Failed to get metadata"
    ):
        admin.existing()
    assert not admin.reachable(0.2)  # port 1: nothing listens
    assert first_address("PLAINTEXT://[::1]:9093,b:1") == ("::1", 9093)


# -------------------------------------------------------------------------------- TopicManager


class FakeAdmin(TopicAdmin):
    def __init__(self) -> None:
        super().__init__(Settings(kafka_bootstrap="127.0.0.1:1"), client=object())
        self.up = False
        self.topics: set[str] = {"__consumer_offsets"}
        self.resets = 0

    def reachable(self, timeout: float = 1.0) -> bool:
        return self.up

    def reset(self) -> None:
        self.resets += 1

    def existing(self) -> set[str]:
        return set(self.topics)

    def ensure(self, topics: Any) -> set[str]:
        created = set(topics) - self.topics
        self.topics |= created
        return created

    def delete(self, topics: Any) -> set[str]:
        gone = set(topics) & self.topics
        self.topics -= gone
        return gone


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_topic_manager_waits_for_the_broker_then_converges(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    topics = Topics()
    yaml_text = CHAIN.replace("spec:\n", "spec:\n  dataflow: {cleanTopicsOnDelete: true}\n")
    ControlApi(state).dispatch("POST", "/v1/pipelines", yaml_text.encode())
    admin = FakeAdmin()
    manager = TopicManager(state, admin, resync_s=0.05, backoff=(0.01, 0.05)).start()
    try:

        def dataflow() -> str:
            condition = state.pipeline_status("chain").condition("PipelineReady")
            assert condition is not None
            return condition.message

        eventually(lambda: "Kafka at 127.0.0.1:1 is not reachable" in dataflow())
        assert state.pipeline_status("chain").reason == "waiting for models: a, b"
        assert admin.resets >= 1
        admin.up = True  # the broker came up after the scheduler
        eventually(lambda: all(t.exists for t in state.pipeline_status("chain").topics))
        assert topics.pipeline_inputs("chain") in admin.topics and topics.errors in admin.topics
        assert topics.model_outputs("b") in admin.topics

        admin.topics.discard(topics.errors)  # deleted behind our back: the resync puts it back
        eventually(lambda: topics.errors in admin.topics)

        state.unload_pipeline("chain")
        eventually(lambda: topics.pipeline_inputs("chain") not in admin.topics)
        assert topics.model_inputs("a") in admin.topics  # the steps' topics are their models'
        assert topics.errors in admin.topics
        eventually(lambda: not state.topic_plan().delete)
    finally:
        state.close()
        manager.join(5)
    assert not manager._thread.is_alive()
