"""The supervisor: forks children, restarts any that dies, and on SIGTERM stops them in order."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import setproctitle

log = logging.getLogger("headrace.supervisor")

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@dataclass(slots=True)
class ProcessSpec:
    """One child: ``target`` runs in the forked process; ``stop_order`` groups the drain sequence."""

    name: str
    target: Callable[[], None]
    stop_order: int = 0


@dataclass(slots=True)
class Child:
    spec: ProcessSpec
    pid: int = 0
    started: float = 0.0
    quick_deaths: int = 0
    restarts: int = 0
    due: float | None = None  # when a pending restart is due


class Supervisor:
    def __init__(
        self,
        specs: list[ProcessSpec],
        grace_period: float,
        on_child_exit: Callable[[Child, int], None] | None = None,
        on_spawn: Callable[[list[Child]], None] | None = None,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self.grace_period = grace_period
        self.on_child_exit = on_child_exit
        self.on_spawn = on_spawn
        self.stopping = False

    def run(self) -> int:
        """Start every child and supervise until SIGTERM/SIGINT; returns the exit code."""
        setproctitle.setproctitle("headrace: supervisor")
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for child in self.children:
                self._spawn(child)
            while True:
                info = signal.sigtimedwait(_SIGNALS, self._next_timeout())
                now = time.monotonic()
                if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    log.info("received %s: draining", signal.Signals(info.si_signo).name)
                    return self._stop_all()
                self._reap(now)
                for child in self.children:
                    if child.due is not None and child.due <= time.monotonic():
                        child.due = None
                        self._spawn(child)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def _next_timeout(self) -> float:
        dues = [c.due for c in self.children if c.due is not None]
        if not dues:
            return 1.0
        return max(0.0, min(dues) - time.monotonic())

    def _spawn(self, child: Child) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                setproctitle.setproctitle(f"headrace: {child.spec.name}")
                child.spec.target()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        child.pid = pid
        child.started = time.monotonic()
        if self.on_spawn is not None:
            self.on_spawn(self.children)
        log.info("started %s (pid %d)", child.spec.name, pid)

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self.children if c.pid == pid), None)
            if child is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            child.pid = 0
            if self.on_child_exit is not None:
                self.on_child_exit(child, pid)
            if self.stopping:
                continue
            lived = now - child.started
            child.quick_deaths = child.quick_deaths + 1 if lived < 1.0 else 0
            child.restarts += 1
            # restart at once; a child that keeps dying at start is retried at most once a second
            delay = 0.0 if child.quick_deaths <= 1 else min(1.0, 0.1 * 2 ** (child.quick_deaths - 2))
            log.warning("%s (pid %d) exited with %d; restarting in %.1fs", child.spec.name, pid, code, delay)
            child.due = now + delay

    def _stop_all(self) -> int:
        """Stop children group by group (workers first, so they can finish requests on servers)."""
        self.stopping = True
        for order in sorted({c.spec.stop_order for c in self.children}):
            group = [c for c in self.children if c.spec.stop_order == order]
            for child in group:
                child.due = None
                if child.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_period + 1.0
            while any(c.pid for c in group) and time.monotonic() < deadline:
                signal.sigtimedwait({signal.SIGCHLD}, 0.1)
                self._reap(time.monotonic())
            for child in group:
                if child.pid:
                    log.warning("%s did not stop in time: killing it", child.spec.name)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(child.pid, 0)
                    child.pid = 0
        return 0


def cleanup_child_shm(supervisor_pid: int, child_pid: int) -> None:
    """Remove shared-memory segments a dead child created (names embed both pids)."""
    for path in glob.glob(f"/dev/shm/hr{supervisor_pid}-*-{child_pid}-*"):
        with contextlib.suppress(OSError):
            os.unlink(path)


def cleanup_orphaned_shm() -> None:
    """Remove segments left by supervisors that no longer exist (e.g. after kill -9)."""
    for path in glob.glob("/dev/shm/hr[0-9]*-*"):
        head = os.path.basename(path).split("-", 1)[0][2:]
        if not head.isdigit():
            continue
        try:
            os.kill(int(head), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(path)
        except PermissionError:
            pass
