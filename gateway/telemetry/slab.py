"""Per-process metric files in prometheus_client's multiprocess layout, written without locks.

prometheus_client's own multiprocess values take a lock, call getpid() and pack two doubles on
every increment (about 2.7 us here); a request records five or six values, which would cost the
front door several percent. A :class:`Slab` lays its file out the same way (so prometheus_client's
``MultiProcessCollector`` reads and sums them), but an increment is one store into a ``memoryview``
of the mapping (about 0.05 us). The mapping is shared with the file, so what a process recorded is
in the file the moment it is stored: a process killed with SIGKILL loses nothing.

File layout (as prometheus_client's ``MmapedDict``): a 4-byte count of the bytes used, 4 bytes of
padding, then entries of a 4-byte key length, the UTF-8 key padded with spaces to 8-byte alignment
(1 to 8 bytes of padding), a double value and a double timestamp. Entries are appended, never moved.

Each slot has one writer thread (the event loop, or one Kafka client thread): nothing here locks.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any

_INITIAL = 1 << 18
_INT = struct.Struct("i")
_ENTRY_TAIL = struct.Struct("dd")


def _padding(length: int) -> int:
    """Spaces after a key of ``length`` bytes (prometheus_client's rule: 1 to 8)."""
    return 8 - (length + 4) % 8


class Slab:
    """One file (``counter_<pid>.db``, ...) of a process, or an anonymous mapping when ``path`` is None
    (metrics off: recording costs the same, and nothing is written anywhere)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd = -1
        size = _INITIAL
        if path is not None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            size = os.fstat(self._fd).st_size
            if size < _INITIAL:
                os.ftruncate(self._fd, _INITIAL)
                size = _INITIAL
        self._size = size
        self._map = self._new_map(size)
        self._view: Any = memoryview(self._map).cast("d")
        self.positions: dict[str, int] = {}
        used: int = _INT.unpack_from(self._map, 0)[0]
        if used <= 0:
            used = 8
            self._map[0:4] = _INT.pack(used)
        else:  # a file of an earlier process with this pid (pid reuse): keep adding to its values
            self._index(used)
        self._used = used

    def _new_map(self, size: int) -> mmap.mmap:
        if self._fd < 0:
            return mmap.mmap(-1, size)
        return mmap.mmap(self._fd, size)

    def _index(self, used: int) -> None:
        pos = 8
        data = self._map
        while pos < used:
            length: int = _INT.unpack_from(data, pos)[0]
            key = bytes(data[pos + 4 : pos + 4 + length]).decode()
            pos += 4 + length + _padding(length)
            self.positions[key] = pos
            pos += 16

    def slot(self, key: str) -> tuple[Any, int]:
        """The view and index (in doubles) of ``key``'s value, appending the entry if it is new."""
        pos = self.positions.get(key)
        if pos is None:
            pos = self._append(key)
        return self._view, pos // 8

    def _append(self, key: str) -> int:
        encoded = key.encode()
        entry = _INT.pack(len(encoded)) + encoded + b" " * _padding(len(encoded)) + _ENTRY_TAIL.pack(0.0, 0.0)
        end = self._used + len(entry)
        if end > self._size:
            size = self._size
            while end > size:
                size *= 2
            if self._fd >= 0:
                os.ftruncate(self._fd, size)
            # views handed out before keep the old mapping alive; both map the same file pages
            self._map = self._new_map(size)
            self._view = memoryview(self._map).cast("d")
            self._size = size
        self._map[self._used : end] = entry
        pos = end - 16
        self._used = end
        self._map[0:4] = _INT.pack(end)  # the entry is complete before a reader may see it
        self.positions[key] = pos
        return pos
