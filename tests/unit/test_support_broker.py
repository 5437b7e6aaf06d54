"""The test support's `Serve` runs the embedded broker HEADRACE_TEST_BROKER names (`make test-tansu`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import TEST_BROKER_ENV, Serve

pytestmark = pytest.mark.timeout(10)


def broker_args(args: list[str]) -> dict[str, str]:
    flags = ("--embedded-broker", "--kafka-port", "--kafka-controller-port")
    return {a: args[i + 1] for i, a in enumerate(args) if a in flags}


def test_serve_runs_the_broker_the_environment_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_BROKER_ENV, "tansu")
    s = Serve(tmp_path, kafka=True)
    assert broker_args(s.args()) == {"--embedded-broker": "tansu", "--kafka-port": str(s.kafka_port)}
    # a test that needs Apache Kafka itself says so, whatever the environment
    pinned = Serve(tmp_path, kafka=True, broker="kafka")
    assert broker_args(pinned.args())["--embedded-broker"] == "kafka"
    # no pipelines asked for: no broker at all
    assert broker_args(Serve(tmp_path).args()) == {"--embedded-broker": "none"}


@pytest.mark.parametrize("value", [None, "", "kafka"])
def test_apache_kafka_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(TEST_BROKER_ENV, raising=False)
    else:
        monkeypatch.setenv(TEST_BROKER_ENV, value)
    s = Serve(tmp_path, kafka=True)
    assert broker_args(s.args()) == {
        "--embedded-broker": "kafka",
        "--kafka-port": str(s.kafka_port),
        "--kafka-controller-port": str(s.kafka_controller_port),
    }


def test_an_unknown_broker_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_BROKER_ENV, "tansoo")
    with pytest.raises(pytest.UsageError, match="tansoo"):
        Serve(tmp_path, kafka=True)


def test_broker_pid_refuses_a_broker_of_the_wrong_kind(tmp_path: Path) -> None:
    """The check the pipeline tests make: the logged broker process must run the wanted executable."""
    s = Serve(tmp_path, kafka=True, broker="tansu")
    s.log.write_text(f"x supervisor INFO headrace.kafka: embedded tansu broker (pid {os.getpid()}) on h:1\n")
    with pytest.raises(AssertionError, match="not tansu"):
        s.broker_pid(timeout=1)  # this process is python, not tansu
    s.log.write_text("x supervisor INFO headrace.kafka: embedded kafka broker (pid 1) on h:1\n")
    with pytest.raises(AssertionError, match="no tansu broker started"):
        s.broker_pid(timeout=0.3)
