"""The real scheduler process against a real broker: topics made with our partitions and max.message.bytes,
and deleted on unload when the manifest asks (cleanTopicsOnDelete)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from headrace.engine.scheduler.client import ControlClient, ControlError
from headrace.engine.topics import Topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PARTITIONS = 3
MAX_MESSAGE_BYTES = 3_000_000

PIPELINE = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: chain
spec:
  dataflow:
    cleanTopicsOnDelete: true
  steps:
    - name: first
    - name: second
      inputs: [first]
"""
KEPT = PIPELINE.replace("name: chain", "name: kept").replace(
    "cleanTopicsOnDelete: true", "cleanTopicsOnDelete: false"
)


def model_yaml(name: str, folder: Path, clean: bool) -> str:
    return (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\n"
        f"metadata:\n  name: {name}\nspec:\n  storageUri: {folder}\n"
        f"  dataflow:\n    cleanTopicsOnDelete: {str(clean).lower()}\n"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def scheduler(tmp_path: Path, kafka_bootstrap: str) -> Iterator[tuple[ControlClient, Topics]]:
    prefix = f"it{uuid.uuid4().hex[:8]}"  # this test's own topics on the shared broker
    overrides = {
        "control_port": free_port(),
        "data_dir": str(tmp_path / "data"),
        "server_replicas": 1,
        "kafka_bootstrap": kafka_bootstrap,
        "topic_prefix": prefix,
        "partitions": PARTITIONS,
        "kafka_max_message_bytes": MAX_MESSAGE_BYTES,
    }
    code = (
        "from headrace.engine.scheduler.main import run\n"
        "from headrace.config.settings import load_settings\n"
        f"run(load_settings(overrides={overrides!r}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEADRACE_", "KAFKA_"))}
    log_path = tmp_path / "scheduler.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log, env=env)
    client = ControlClient(f"http://127.0.0.1:{overrides['control_port']}", timeout=5)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            with contextlib.suppress(ControlError):
                client.health()
                break
            assert time.monotonic() < deadline, "scheduler did not start:\n" + log_path.read_text()
            time.sleep(0.05)
        yield client, Topics(prefix, "default")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_topics_created_with_partitions_and_size_then_cleaned(
    scheduler: tuple[ControlClient, Topics], kafka_bootstrap: str, tmp_path: Path
) -> None:
    client, topics = scheduler
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def broker_topics() -> dict[str, int]:
        metadata = admin.list_topics(timeout=10)
        return {n: len(t.partitions) for n, t in metadata.topics.items() if n.startswith(topics.prefix + ".")}

    folder = tmp_path / "repo" / "m"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text("")
    client.load_models(
        model_yaml("cleaned", folder, True) + "---\n" + model_yaml("kept-model", folder, False)
    )
    client.load_pipelines(PIPELINE + "---\n" + KEPT)

    chain = [
        topics.pipeline_inputs("chain"),
        topics.pipeline_outputs("chain"),
        topics.model_inputs("first"),
        topics.model_outputs("first"),
        topics.model_inputs("second"),
        topics.model_outputs("second"),
        topics.errors,
    ]
    wanted = {
        *chain,
        topics.pipeline_inputs("kept"),
        topics.pipeline_outputs("kept"),
        topics.model_inputs("cleaned"),
        topics.model_outputs("cleaned"),
        topics.model_inputs("kept-model"),
        topics.model_outputs("kept-model"),
    }
    eventually(lambda: wanted <= broker_topics().keys(), "the topics")
    assert broker_topics() == dict.fromkeys(wanted, PARTITIONS)
    resources = [ConfigResource("topic", t) for t in sorted(wanted)]
    for future in admin.describe_configs(resources, request_timeout=10).values():
        assert future.result(10)["max.message.bytes"].value == str(MAX_MESSAGE_BYTES)

    # the scheduler saw them: the pipeline now only waits for its models
    eventually(lambda: all(t.exists for t in client.pipeline_status("chain").topics), "topics seen")
    status = client.pipeline_status("chain")
    assert [t.name for t in status.topics] == chain
    assert (status.state, status.reason) == ("PipelineCreating", "waiting for models: first, second")

    # no worker runs them: unloading terminates at once, and only cleanTopicsOnDelete owners lose topics
    assert client.unload_pipeline("chain").state == "PipelineTerminated"
    assert client.unload_pipeline("kept").state == "PipelineTerminated"
    client.unload_model("cleaned")
    client.unload_model("kept-model")
    gone = {
        topics.pipeline_inputs("chain"),
        topics.pipeline_outputs("chain"),
        topics.model_inputs("cleaned"),
        topics.model_outputs("cleaned"),
    }
    eventually(lambda: not gone & broker_topics().keys(), "the deletes")
    assert broker_topics().keys() == wanted - gone
