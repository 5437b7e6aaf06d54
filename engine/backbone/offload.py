"""Large hop payloads parked in the worker's shared memory: the Kafka copy carries a reference instead.

With local hops the next step gets a record's bytes in memory; the Kafka copy of a step's record is
only read again if the worker dies before handling it. So when that copy would carry a large tensor,
the bytes are parked in a shared-memory arena (``/dev/shm/headrace-hops-<pid>-<incarnation>``) and
the record carries an empty value and a header ``headrace-shm: <arena>:<block>:<offset>:<size>:<gen>``.
The block is freed once the hop is settled (handled, and its copy back from the broker). A successor
resolving a dead worker's reference maps that arena by name; a freed block means the hop had been
handled already. Arenas of dead processes are removed when a worker starts, after ``FORGET_AFTER_S``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from headrace.shm import Arena, Ref, ShmError, StaleReferenceError
from headrace.shm.arena import SHM_DIR

log = logging.getLogger("headrace.offload")

OFFLOAD_HEADER = "headrace-shm"
ARENA_PREFIX = "headrace-hops-"
#: An arena whose process is gone is removed this long after it was created (its records long handled).
FORGET_AFTER_S = 120.0


class PayloadGone(Exception):
    """A reference whose arena no longer exists: the payload cannot be recovered."""


class AlreadyHandled(Exception):
    """A reference to a freed block: its hop had been handled before its writer died."""


class HopOffload:
    """This worker's arena of parked payloads (created on first use) and the arenas it reads."""

    def __init__(self, incarnation: str, min_bytes: int, arena_bytes: int) -> None:
        self.min_bytes = min_bytes
        self.arena_bytes = arena_bytes
        self.name = f"{ARENA_PREFIX}{os.getpid()}-{incarnation}"
        self._arena: Arena | None = None
        self._disabled = min_bytes <= 0 or arena_bytes <= 0
        self._attached: dict[str, Arena] = {}

    def park(self, value: bytes) -> tuple[bytes, Ref] | None:
        """(header value, block) with ``value`` copied into shared memory; None: send it inline
        (too small, offload off, or no room right now)."""
        if self._disabled or len(value) < self.min_bytes:
            return None
        arena = self._arena or self._create()
        if arena is None:
            return None
        ref = arena.alloc(len(value))
        if ref is None:
            return None  # full: this one travels inline
        arena.buffer(ref)[:] = value
        header = f"{arena.name}:{ref.block}:{ref.offset}:{ref.nbytes}:{ref.generation}".encode()
        return header, ref

    def release(self, ref: Ref) -> None:
        if self._arena is not None and not self._arena.closed:
            with contextlib.suppress(StaleReferenceError):
                self._arena.free(ref)

    def _create(self) -> Arena | None:
        sweep()
        try:
            arena = Arena.create(self.name, self.arena_bytes)
        except (OSError, ShmError) as exc:
            self._give_up(exc)
            return None
        try:  # reserve the pages now: a full /dev/shm fails here, not with SIGBUS on a later write
            fd = os.open(os.path.join(SHM_DIR, self.name), os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, self.arena_bytes)
            finally:
                os.close(fd)
        except OSError as exc:
            arena.close()
            self._give_up(exc)
            return None
        self._arena = arena
        return arena

    def _give_up(self, exc: Exception) -> None:
        log.warning("large hop payloads stay inline: no shared-memory arena (%s)", exc)
        self._disabled = True

    def fetch(self, header: bytes) -> bytes:
        """The payload a reference names (from this worker's arena or a dead one's)."""
        try:
            name, block, offset, nbytes, generation = header.decode().rsplit(":", 4)
            ref = Ref(int(block), int(offset), int(nbytes), int(generation))
        except ValueError:
            raise PayloadGone(f"malformed {OFFLOAD_HEADER} header {header!r}") from None
        arena = self._arena if self._arena is not None and name == self._arena.name else None
        if arena is None:
            arena = self._attached.get(name)
            if arena is None:
                try:
                    arena = self._attached[name] = Arena.attach(name)
                except ShmError as exc:
                    raise PayloadGone(f"the payload's shared memory is gone ({exc})") from None
        try:
            return bytes(arena.view(ref))
        except StaleReferenceError:
            raise AlreadyHandled(header.decode()) from None

    def close(self) -> None:
        for arena in self._attached.values():
            arena.close()
        self._attached.clear()
        if self._arena is not None:
            # blocks still live belong to hops a successor may have to handle: keep them (sweep()
            # removes the arena once this process is gone and the hops long settled)
            self._arena.close(unlink=self._arena.used == 0)
            self._arena = None


class ResolvedRecord:
    """A consumed record whose parked payload was fetched back: its value, and no reference header."""

    __slots__ = ("_headers", "_msg", "_value")

    def __init__(self, msg: Any, value: bytes) -> None:
        self._msg = msg
        self._value = value
        self._headers = [(n, v) for n, v in msg.headers() or () if n != OFFLOAD_HEADER]

    def topic(self) -> str | None:
        return self._msg.topic()  # type: ignore[no-any-return]

    def partition(self) -> int | None:
        return self._msg.partition()  # type: ignore[no-any-return]

    def offset(self) -> int | None:
        return self._msg.offset()  # type: ignore[no-any-return]

    def key(self) -> bytes | None:
        return self._msg.key()  # type: ignore[no-any-return]

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, Any]]:
        return self._headers

    def error(self) -> None:
        return None


def offload_header(headers: Any) -> bytes | None:
    """The reference header of a record, if it has one."""
    for name, value in headers or ():
        if name == OFFLOAD_HEADER and isinstance(value, bytes):
            return value
    return None


def sweep(now: float | None = None) -> list[str]:
    """Remove the arenas of processes that are gone, once they are FORGET_AFTER_S old."""
    removed = []
    cutoff = (time.time() if now is None else now) - FORGET_AFTER_S
    with contextlib.suppress(OSError):
        for entry in os.scandir(SHM_DIR):
            if not entry.name.startswith(ARENA_PREFIX):
                continue
            pid_text = entry.name[len(ARENA_PREFIX) :].split("-", 1)[0]
            if not pid_text.isdigit() or _alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
