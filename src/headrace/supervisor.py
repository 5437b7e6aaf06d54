"""The supervisor: forks children, restarts any that dies, tells systemd how they are, stops them in order."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import setproctitle

from headrace.notify import Notifier

log = logging.getLogger("headrace.supervisor")

# SIGUSR1 is a child's doorbell: "my readiness changed, read the report I sent"
_REPORT = signal.SIGUSR1
# SIGTTIN adds a worker, SIGTTOU stops one (it hands its units to the others first), as gunicorn does
_SIGNALS = {
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    _REPORT,
    signal.SIGTTIN,
    signal.SIGTTOU,
}
_MAX_REPORT = 512


@dataclass(slots=True)
class ProcessSpec:
    """One child: ``target`` runs in the forked process; ``stop_order`` groups the drain sequence.

    A child that ``reports_ready`` calls :func:`report_ready` when it starts or stops serving; the
    service counts as ready (systemd's READY=1) once every such child has said it serves.
    """

    name: str
    target: Callable[[], None]
    stop_order: int = 0
    reports_ready: bool = False
    worker: int = -1  # a worker's index (workers can be added and removed at run time)


@dataclass(slots=True)
class Child:
    spec: ProcessSpec
    pid: int = 0
    started: float = 0.0
    quick_deaths: int = 0
    restarts: int = 0
    due: float | None = None  # when a pending restart is due
    ready: bool = False  # what the child last reported (children that report readiness)
    reason: str = "not started"  # why it is not ready
    retiring: bool = False  # a worker removed at run time: not restarted when it exits


# In a child: the supervisor's end for readiness reports (inherited through fork) and its pid.
_reports: socket.socket | None = None
_supervisor_pid = 0


def report_ready(ready: bool, reason: str = "") -> None:
    """In a child: tell the supervisor whether this process serves (and why not). Never blocks; a
    no-op outside a supervisor."""
    sock = _reports
    if sock is None:
        return
    message = f"{os.getpid()} {int(ready)} {reason}".encode()[:_MAX_REPORT]
    try:
        sock.send(message)
    except OSError:  # the supervisor is gone or not reading: nobody to tell
        return
    if os.getppid() == _supervisor_pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(_supervisor_pid, _REPORT)


class Supervisor:
    def __init__(
        self,
        specs: list[ProcessSpec],
        grace_period: float,
        on_child_exit: Callable[[Child, int], None] | None = None,
        on_spawn: Callable[[list[Child]], None] | None = None,
        notifier: Notifier | None = None,
        make_worker: Callable[[int], ProcessSpec] | None = None,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self.make_worker = make_worker
        self.grace_period = grace_period
        self.on_child_exit = on_child_exit
        self.on_spawn = on_spawn
        self.notifier = notifier if notifier is not None else Notifier()
        self.stopping = False
        self.announced = False  # READY=1 sent
        self._status = ""
        self._next_beat: float | None = None
        self._inbox: socket.socket | None = None  # readiness reports from children
        self._outbox: socket.socket | None = None  # the children's end

    def run(self) -> int:
        """Start every child and supervise until SIGTERM/SIGINT; returns the exit code."""
        setproctitle.setproctitle("headrace: supervisor")
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        if any(c.spec.reports_ready for c in self.children):
            self._inbox, self._outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._inbox.setblocking(False)
            self._outbox.setblocking(False)
        if self.notifier.watchdog_interval is not None:
            self._next_beat = time.monotonic()
        try:
            for child in self.children:
                self._spawn(child)
            self._publish()
            while True:
                self._beat(time.monotonic())
                info = signal.sigtimedwait(_SIGNALS, self._next_timeout())
                now = time.monotonic()
                if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    log.info("received %s: draining", signal.Signals(info.si_signo).name)
                    return self._stop_all()
                if info is not None and info.si_signo == signal.SIGTTIN:
                    self._add_worker()
                elif info is not None and info.si_signo == signal.SIGTTOU:
                    self._remove_worker()
                self._reap(now)
                self._read_reports()
                for child in self.children:
                    if child.due is not None and child.due <= time.monotonic():
                        child.due = None
                        self._spawn(child)
                self._publish()
        finally:
            # a doorbell rung during the drain (or by a late child) must not end this process once
            # unblocked: ignoring it also discards one pending
            signal.signal(_REPORT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            for sock in (self._inbox, self._outbox):
                if sock is not None:
                    sock.close()
            self.notifier.close()

    def _next_timeout(self) -> float:
        wakes = [c.due for c in self.children if c.due is not None]
        if self._next_beat is not None:
            wakes.append(self._next_beat)
        if not wakes:
            return 1.0
        return min(1.0, max(0.0, min(wakes) - time.monotonic()))

    # -- systemd: readiness, status, watchdog ---------------------------------------------------
    def _read_reports(self) -> None:
        """Take every readiness report queued by children (reports of dead incarnations are dropped)."""
        if self._inbox is None:
            return
        while True:
            try:
                data = self._inbox.recv(_MAX_REPORT)
            except (BlockingIOError, InterruptedError):
                return
            pid, _, rest = data.decode(errors="replace").partition(" ")
            ready, _, reason = rest.partition(" ")
            child = next((c for c in self.children if pid.isdigit() and c.pid == int(pid)), None)
            if child is None:
                continue
            now_ready = ready == "1"
            if now_ready != child.ready or reason != child.reason:
                if now_ready:
                    log.info("%s ready", child.spec.name)
                else:  # expected while starting; worth a warning once the service has served
                    level = logging.WARNING if self.announced else logging.INFO
                    log.log(level, "%s not ready: %s", child.spec.name, reason)
            child.ready, child.reason = now_ready, reason

    def _publish(self) -> None:
        """READY=1 once every child that reports readiness serves; STATUS= whenever the picture changes."""
        reporting = [c for c in self.children if c.spec.reports_ready]
        serving = [c for c in reporting if c.pid and c.ready]
        if len(serving) == len(reporting):
            state = "serving"
        elif not self.announced:
            state = "starting"
        else:
            state = "degraded" if serving else "not serving"
        text = f"{state}: {len(serving)}/{len(reporting)} ready"
        waiting = [f"{c.spec.name}: {c.reason}" for c in reporting if not (c.pid and c.ready)]
        if waiting:
            text += " (" + "; ".join(waiting) + ")"
        if not self.announced and state == "serving":
            self.announced = True
            self.notifier.ready(text)
            log.info("ready: %s", text)
        elif text != self._status:
            self.notifier.status(text)
        self._status = text

    def _beat(self, now: float) -> None:
        """WATCHDOG=1 every half WATCHDOG_USEC, but only while a child that serves is alive (none
        alive for WatchdogSec: systemd restarts the service). Always during the drain."""
        if self._next_beat is None or now < self._next_beat:
            return
        interval = self.notifier.watchdog_interval or 1.0
        self._next_beat = now + interval
        reporting = [c for c in self.children if c.spec.reports_ready]
        if self.stopping or not reporting or any(c.pid for c in reporting):
            self.notifier.watchdog()

    # -- workers added and removed at run time --------------------------------------------------
    def _workers(self) -> list[Child]:
        return [c for c in self.children if c.spec.worker >= 0 and not c.retiring]

    def _add_worker(self) -> None:
        if self.make_worker is None:
            return
        index = max((c.spec.worker for c in self.children if c.spec.worker >= 0), default=-1) + 1
        child = Child(self.make_worker(index))
        self.children.append(child)
        log.info("SIGTTIN: adding %s", child.spec.name)
        self._spawn(child)

    def _remove_worker(self) -> None:
        """Stop the newest worker; it hands its units to the others before it exits."""
        workers = self._workers()
        if len(workers) <= 1:
            log.warning("SIGTTOU: the last worker stays")
            return
        child = max(workers, key=lambda c: c.spec.worker)
        child.retiring = True
        child.due = None
        log.info("SIGTTOU: stopping %s", child.spec.name)
        if child.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        else:
            self.children.remove(child)

    # -- children -------------------------------------------------------------------------------
    def _spawn(self, child: Child) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                self._become_child()
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
        child.ready, child.reason = False, "starting"
        if self.on_spawn is not None:
            self.on_spawn(self.children)
        log.info("started %s (pid %d)", child.spec.name, pid)

    def _become_child(self) -> None:
        """In a fresh child: keep the end readiness reports go to, drop what is the supervisor's, and
        stop with the supervisor even if it is killed (SIGKILL) and cannot stop it."""
        global _reports, _supervisor_pid
        _die_with_parent()
        _reports, _supervisor_pid = self._outbox, os.getppid()
        if self._inbox is not None:
            self._inbox.close()
        self.notifier.close()

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
            child.ready = False
            child.reason = "stopped" if self.stopping else f"exited with {code}, restarting"
            if self.on_child_exit is not None:
                self.on_child_exit(child, pid)
            if child.retiring:
                self.children.remove(child)
                log.info("%s stopped (removed)", child.spec.name)
                if self.on_spawn is not None:
                    self.on_spawn(self.children)
                continue
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
        self.notifier.stopping("stopping: draining")
        for order in sorted({c.spec.stop_order for c in self.children}):
            group = [c for c in self.children if c.spec.stop_order == order]
            self.notifier.status("stopping: " + ", ".join(c.spec.name for c in group))
            for child in group:
                child.due = None
                if child.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_period + 1.0
            while any(c.pid for c in group) and time.monotonic() < deadline:
                signal.sigtimedwait({signal.SIGCHLD}, 0.1)
                self._reap(time.monotonic())
                self._beat(time.monotonic())
            for child in group:
                if child.pid:
                    log.warning("%s did not stop in time: killing it", child.spec.name)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(child.pid, 0)
                    child.pid = 0
        return 0


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (a SIGKILLed supervisor leaves no orphans;
    they drain as on a normal stop)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


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
