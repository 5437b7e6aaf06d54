"""Test support: free loopback ports, HTTP helpers and a real `headrace serve` process."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "config" / "samples" / "models"
HEADRACE = str(Path(sys.executable).parent / "headrace")

#: Which embedded broker the tests run pipelines on: Apache Kafka, or Tansu (`make test-tansu`).
TEST_BROKER_ENV = "HEADRACE_TEST_BROKER"
BROKERS = ("kafka", "tansu")
# what runs each broker: the executable of the embedded broker child's child
BROKER_EXECUTABLES = {"kafka": "java", "tansu": "tansu"}
# the brokers `Serve.broker_pid` found running, for the end of the run's summary (tests/conftest.py)
BROKERS_SEEN: list[str] = []


def broker_under_test() -> str:
    """$HEADRACE_TEST_BROKER (kafka or tansu), else kafka; anything else stops the run, so a typo
    cannot quietly test Apache Kafka instead."""
    name = os.environ.get(TEST_BROKER_ENV, "").strip() or "kafka"
    if name not in BROKERS:
        raise pytest.UsageError(f"{TEST_BROKER_ENV}={name!r}: expected one of {', '.join(BROKERS)}")
    return name


_LIBRDKAFKA_LINE = re.compile(r"^%\d\|\d+\.\d+\|")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_PORTS = random.Random()
_GIVEN: set[int] = set()  # never the same port twice in a session (they are not bound until used)


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a port the kernel hands out (bind to
    0) can be taken meanwhile by any client's outgoing connection, which made an embedded broker's
    listener fail with "Address already in use" (and every restart of it on the same port)."""
    low, _ = _ephemeral_range()
    for _ in range(200):
        port = _PORTS.randrange(10000, max(10001, low))
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(
    url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=body, method="POST", headers=headers or {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@dataclass
class Serve:
    """A running `headrace serve` child; `stop()` drains it with SIGTERM."""

    data_dir: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    workers: int = 2
    kafka: bool = False  # run an embedded broker (on free ports) for pipelines
    broker: str = field(default_factory=broker_under_test)  # which one, when `kafka`
    kafka_port: int = field(default_factory=free_port)
    kafka_controller_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)  # the metrics endpoint (0: off)
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    inherit_env: bool = True  # False: the process gets `env` alone (as under `env -i`)
    command: list[str] = field(default_factory=lambda: [HEADRACE])  # what runs `serve`
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def log(self) -> Path:
        return self.data_dir / "serve.log"

    def kafka_args(self) -> list[str]:
        if not self.kafka:
            return ["--embedded-broker", "none"]
        if self.broker not in BROKERS:
            raise ValueError(f"unknown embedded broker {self.broker!r}")
        args = ["--embedded-broker", self.broker, "--kafka-port", str(self.kafka_port)]
        if self.broker == "kafka":  # Tansu has no KRaft controller
            args += ["--kafka-controller-port", str(self.kafka_controller_port)]
        return args

    def args(self) -> list[str]:
        return [
            *self.command,
            "serve",
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
            "--control-port", str(self.control_port),
            "--data-dir", str(self.data_dir),
            "--workers", str(self.workers),
            "--grace-period-s", "10",
            "--metrics-port", str(self.metrics_port),
            *self.kafka_args(),
            *self.extra,
        ]  # fmt: skip

    def start(self, wait_models: tuple[str, ...] = ("echo", "sum")) -> Serve:
        self.launch()
        for model in wait_models:
            self.wait_ready(f"/v2/models/{model}/ready")
        if not wait_models:
            self.wait_ready("/v2/health/ready")
        return self

    def launch(self) -> Serve:
        """Start the process without waiting for anything."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env} if self.inherit_env else dict(self.env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.args(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return self

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"headrace serve exited with {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                if http_get(self.url + path, timeout=2)[0] == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{path} not ready within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        """The log's tail, without librdkafka's own lines (a broker that is not up yet fills the log
        with connection refusals, which would push the lines that say why out of the tail)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if not _LIBRDKAFKA_LINE.match(line)]
        return "\n".join(lines)[-6000:]

    def broker_pid(self, timeout: float = 60.0) -> int:
        """The pid of the broker itself (the JVM or tansu under the `broker` child), once started; fails
        unless it is the broker this Serve was asked for, so a run cannot test the wrong one unnoticed."""
        assert self.kafka, "this server runs no embedded broker"
        pattern = re.compile(rf"embedded {re.escape(self.broker)} broker \(pid (\d+)\)")
        deadline = time.monotonic() + timeout
        while True:
            found = pattern.findall(self.log.read_text(errors="replace"))
            if found:
                pid = int(found[-1])
                exe = Path(os.readlink(f"/proc/{pid}/exe"))
                wanted = BROKER_EXECUTABLES[self.broker]
                assert exe.name == wanted, f"the {self.broker} broker (pid {pid}) runs {exe}, not {wanted}"
                BROKERS_SEEN.append(f"{self.broker}: {exe} (pid {pid}) for {self.data_dir}")
                return pid
            assert time.monotonic() < deadline, f"no {self.broker} broker started:\n{self.log_text()}"
            time.sleep(0.1)

    def child_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def child_cmd(self, pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the group
        return self.proc.returncode


def children(s: Serve) -> dict[str, int]:
    """The served instance's children by role ("worker 0", "scheduler", ...) -> pid."""
    table: dict[str, int] = json.loads((s.data_dir / "run" / "children.json").read_text())
    return table


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One server with the sample models, shared by a module's read-only tests."""
    s = Serve(tmp_path_factory.mktemp("serve"), extra=["--load", str(SAMPLES)])
    try:
        s.start()
        yield s
    finally:
        s.stop()


def read_keys(
    bootstrap: str, topics: list[str], needle: str, want: int, settle_s: float = 1.5
) -> list[Message]:
    """Every record, from the start of ``topics``, whose key contains ``needle``: polls until ``want``
    have come, then ``settle_s`` more to catch any duplicate."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for topic in topics for p in range(8)])
    found: list[Message] = []
    try:
        deadline = time.monotonic() + 30
        settle_until: float | None = None
        while time.monotonic() < (settle_until or deadline):
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error() and needle in (msg.key() or b"").decode():
                found.append(msg)
            if settle_until is None and len(found) >= want:
                settle_until = time.monotonic() + settle_s
    finally:
        consumer.close()
    return found
