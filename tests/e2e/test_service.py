"""`headrace serve` as a service: sd_notify to systemd, and health that follows the broker."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from support import SAMPLES, Serve, children, http_get, http_post

pytestmark = pytest.mark.e2e

BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})


class NotifySocket:
    """What systemd would be: a unix datagram socket that records every sd_notify message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []  # (monotonic time, fields)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def with_field(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return [(t, f) for t, f in self.messages if key in f and (value is None or f[key] == value)]

    def wait_for(
        self, key: str, value: str | None, timeout: float, alive: Callable[[], bool] = lambda: True
    ) -> tuple[float, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.with_field(key, value)
            if found:
                return found[0]
            assert alive(), "headrace serve exited"
            time.sleep(0.01)
        raise AssertionError(f"no {key}={value} within {timeout}s; got {self.messages}")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    try:
        yield n
    finally:
        n.close()


@pytest.mark.timeout(90)
def test_systemd_notify_ready_watchdog_stopping(
    tmp_path: Path, notify: NotifySocket, serve_factory: list[Serve]
) -> None:
    s = Serve(
        tmp_path / "d",
        extra=["--load", str(SAMPLES)],
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"},
    )
    serve_factory.append(s)
    s.launch()
    assert s.proc is not None
    proc = s.proc
    _, ready = notify.wait_for("READY", "1", 60, alive=lambda: proc.poll() is None)
    # READY=1 means every worker serves: each new connection lands on any worker, all answer ready
    statuses = [http_get(s.url + "/v2/health/ready", timeout=5)[0] for _ in range(10)]
    assert statuses == [200] * 10, s.log_text()
    assert http_post(s.url + "/v2/models/echo/infer", BODY, None, 30)[0] == 200
    assert ready["STATUS"] == "serving: 2/2 ready"
    assert not notify.with_field("STOPPING")
    # heartbeats every half WATCHDOG_USEC (0.5 s)
    beats_before = len(notify.with_field("WATCHDOG", "1"))
    time.sleep(2.5)
    assert len(notify.with_field("WATCHDOG", "1")) - beats_before >= 3
    assert len(notify.with_field("READY")) == 1  # once, not at every status change
    # SIGTERM: STOPPING=1 at once, then the drain, then exit 0
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stopping_at, stopping = notify.wait_for("STOPPING", "1", 10)
    assert stopping_at - sent < 2.0
    assert stopping["STATUS"].startswith("stopping")
    assert proc.wait(30) == 0


def jvm_of(broker_pid: int) -> int:
    """The broker child runs the JVM as its own child; stopping the JVM stops the broker."""
    out = subprocess.run(["pgrep", "-P", str(broker_pid)], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def wait_health(s: Serve, status: int, timeout: float, in_a_row: int = 6) -> float:
    """Seconds until /v2/health/ready answers ``status`` to ``in_a_row`` new connections in a row
    (so every worker, as connections spread over them)."""
    started = time.monotonic()
    streak = 0
    while time.monotonic() - started < timeout:
        got = 0
        with contextlib.suppress(OSError):
            got = http_get(s.url + "/v2/health/ready", timeout=2)[0]
        streak = streak + 1 if got == status else 0
        if streak >= in_a_row:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"/v2/health/ready did not answer {status} within {timeout}s:\n{s.log_text()}")


@pytest.mark.timeout(150)
def test_ready_is_false_while_the_broker_does_not_answer(
    tmp_path: Path, notify: NotifySocket, serve_factory: list[Serve]
) -> None:
    s = Serve(
        tmp_path / "d",
        kafka=True,
        broker="kafka",  # stops the broker's JVM: Apache Kafka whatever HEADRACE_TEST_BROKER says
        extra=["--load", str(SAMPLES)],
        env={"NOTIFY_SOCKET": str(notify.path)},
    )
    serve_factory.append(s)
    s.start()
    wait_health(s, 200, 60)
    jvm = jvm_of(children(s)["broker"])
    # NOTIFY_SOCKET is systemd's word to the supervisor alone: what the children run does not get it
    assert s.proc is not None
    given = b"NOTIFY_SOCKET=" + str(notify.path).encode()
    assert given in Path(f"/proc/{s.proc.pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in Path(f"/proc/{jvm}/environ").read_bytes().split(b"\0") if v.startswith(b"NOTIFY")]
    os.kill(jvm, signal.SIGSTOP)  # its connections stay open; only unanswered requests tell
    try:
        took = wait_health(s, 503, 15)
        assert took < 10
        # live, and direct model calls need no broker: the worker still serves them
        assert http_get(s.url + "/v2/health/live")[0] == 200
        assert http_post(s.url + "/v2/models/echo/infer", BODY, None, 30)[0] == 200
        degraded = [f["STATUS"] for _, f in notify.with_field("STATUS") if "unreachable" in f["STATUS"]]
        assert degraded and "Kafka broker at" in degraded[-1], notify.messages
        assert "not serving" in degraded[-1] or "degraded" in degraded[-1]
    finally:
        os.kill(jvm, signal.SIGCONT)
    wait_health(s, 200, 20)
    deadline = time.monotonic() + 5
    while notify.with_field("STATUS")[-1][1]["STATUS"] != "serving: 2/2 ready":
        assert time.monotonic() < deadline, notify.messages[-3:]
        time.sleep(0.05)
