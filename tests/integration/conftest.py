"""Real embedded brokers for the integration tier: one per session on demand (Apache Kafka, or Tansu under
HEADRACE_TEST_BROKER=tansu), or per test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import broker_under_test, free_port

# What the brokers took to start and stop in this session, printed after the run.
TIMINGS: list[str] = []

_CHILD = (
    "from headrace.config.settings import load_settings\n"
    "from headrace.engine.kafka.broker import run_embedded_broker\n"
    "run_embedded_broker(load_settings())\n"
)


@dataclass
class EmbeddedBroker:
    """`run_embedded_broker` in a child process of its own (session), configured by HEADRACE_* env."""

    data_dir: Path
    flavour: str = "kafka"  # or "tansu"
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / "broker.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_OPTS")}
        env.update(
            HEADRACE_DATA_DIR=str(self.data_dir),
            HEADRACE_EMBEDDED_BROKER=self.flavour,
            HEADRACE_KAFKA_PORT=str(self.port),
            HEADRACE_KAFKA_CONTROLLER_PORT=str(self.controller_port),
            HEADRACE_KAFKA_BOOTSTRAP="",
            HEADRACE_GRACE_PERIOD_S="15",
        )
        return env

    def start(self, timeout: float = 60.0) -> float:
        """Start the child and wait until the broker answers metadata; returns the seconds it took."""
        from headrace.engine.kafka.ready import wait_ready

        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )
        proc = self.proc
        try:
            wait_ready(self.bootstrap, timeout=timeout, alive=lambda: proc.poll() is None)
        except Exception as exc:
            self.kill()
            raise AssertionError(f"{self.flavour} broker not ready: {exc}\n{self.log_text()}") from None
        took = time.monotonic() - started
        self.starts += 1
        TIMINGS.append(f"{self.flavour} start #{self.starts}: ready in {took:.2f}s")
        return took

    def stop(self, timeout: float = 20.0) -> tuple[int, float]:
        """SIGTERM, as the supervisor stops it; the exit code and seconds to exit (SIGKILL past timeout)."""
        if self.proc is None:
            return 0, 0.0
        if self.proc.poll() is not None:  # stopped already
            self.kill()
            return self.proc.returncode, 0.0
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        took = time.monotonic() - started
        self.kill()  # anything left in its session
        TIMINGS.append(f"{self.flavour} stop: exited {self.proc.returncode} in {took:.2f}s")
        return self.proc.returncode, took

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def session_alive(self) -> bool:
        """True while any process of the broker's session (wrapper or JVM) exists."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Any]:
    """Make brokers for one test (`broker_factory("kafka")`); every one is stopped at teardown."""
    made: list[EmbeddedBroker] = []

    def make(flavour: str = "kafka", data_dir: Path | None = None) -> EmbeddedBroker:
        broker = EmbeddedBroker(data_dir or tmp_path / f"{flavour}-{len(made)}", flavour)
        made.append(broker)
        return broker

    try:
        yield make
    finally:
        for broker in made:
            broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the embedded broker under test (Apache Kafka in KRaft mode unless
    HEADRACE_TEST_BROKER says tansu) run as `headrace serve` runs it; started by the first test that
    asks for it, stopped at the end of the session."""
    flavour = broker_under_test()
    broker = EmbeddedBroker(tmp_path_factory.mktemp(flavour), flavour)
    try:
        broker.start(timeout=90)
        yield broker.bootstrap
    finally:
        broker.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "embedded brokers")
        for line in TIMINGS:
            terminalreporter.write_line(line)
