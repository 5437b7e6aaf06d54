"""sd_notify datagrams: path and abstract sockets, the variables taken from the environment."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.notify import Notifier


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    try:
        yield sock
    finally:
        sock.close()


def test_sends_to_a_socket_path(tmp_path: Path, receiver: socket.socket) -> None:
    path = tmp_path / "notify"
    receiver.bind(str(path))
    notifier = Notifier(str(path))
    notifier.ready("serving: 2/2 ready")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=serving: 2/2 ready"
    notifier.stopping("stopping: draining")
    assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=stopping: draining"
    notifier.close()


def test_sends_to_an_abstract_socket(receiver: socket.socket) -> None:
    name = f"headrace-test-{uuid.uuid4().hex}"
    receiver.bind("\0" + name)
    notifier = Notifier("@" + name)
    notifier.watchdog()
    assert receiver.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_from_environ_takes_the_variables_and_halves_the_watchdog() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()), "A": "b"}
    notifier = Notifier.from_environ(env)
    assert notifier.enabled and notifier.address == "@x"
    assert notifier.watchdog_interval == 1.5
    assert env == {"A": "b"}  # children do not inherit them


def test_watchdog_meant_for_another_process_or_without_socket_is_off() -> None:
    other = Notifier.from_environ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.enabled and other.watchdog_interval is None
    alone = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not alone.enabled and alone.watchdog_interval is None


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    notifier.ready("serving")  # no socket, no error
    assert notifier._sock is None


def test_an_unreachable_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    notifier.status("serving")
    assert "sd_notify" in caplog.text
    notifier.close()
