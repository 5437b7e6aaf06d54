"""Process helpers: free ports, starting and stopping servers, readiness polling, CPU accounting."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class SetupError(Exception):
    """A peer or tool could not be set up; the message says why (shown in the report)."""


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (held open together while picking so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def run_quiet(cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> str:
    """Run a set-up command; raise SetupError with the tail of its output when it fails."""
    try:
        proc = subprocess.run(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = " | ".join(proc.stdout.strip().splitlines()[-4:])
        raise SetupError(f"`{' '.join(cmd[:4])} ...` exited {proc.returncode}: {tail}")
    return proc.stdout


@dataclass
class Server:
    """A server process we started, in its own session (process group) so we can stop all of it."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra_pids: list[int] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User+system CPU time of every live process in the server's process group."""
        pgid = self.proc.pid
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    raw = f.read().decode(errors="replace")
            except OSError:
                continue
            fields = raw[raw.rfind(")") + 2 :].split()
            # fields[0] is state (field 3); pgrp is field 5, utime 14, stime 15.
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children that outlived the leader (same group) get the same treatment.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def start_server(
    name: str,
    cmd: Sequence[str],
    *,
    log_path: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Server:
    """Start `cmd` in a new session with stdout/stderr going to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(cwd) if cwd else None,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise SetupError(f"cannot start {cmd[0]}: {exc}") from exc
    return Server(name=name, proc=proc, log_path=log_path)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status code of a GET, or None when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def wait_ready(server: Server, url: str, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200; raise SetupError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    last: int | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise SetupError(f"{server.name} exited with {server.proc.returncode}: {server.log_tail()}")
        last = http_status(url)
        if last == 200:
            return
        time.sleep(0.25)
    raise SetupError(
        f"{server.name} not ready after {timeout:.0f} s (last status {last}): {server.log_tail(3)}"
    )


def wait_log_line(server: Server, text: str, timeout: float = 60.0) -> None:
    """Wait until `text` appears in the server's log (servers with no HTTP endpoint to poll)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in server.log_path.read_text(errors="replace"):
                return
        except OSError:
            pass
        if not server.alive():
            raise SetupError(f"{server.name} exited with {server.proc.returncode}: {server.log_tail()}")
        time.sleep(0.1)
    raise SetupError(f"{server.name} not ready after {timeout:.0f} s: {server.log_tail(3)}")


def post(
    url: str, body: bytes, headers: Mapping[str, str], timeout: float = 30.0, method: str = "POST"
) -> tuple[int, bytes]:
    """One request (a POST unless told) for a sanity check before load or a change: (status, body)."""
    req = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError as exc:
        return 0, str(exc).encode()
