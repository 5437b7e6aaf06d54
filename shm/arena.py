"""The shared-memory tensor arena: a ring allocator over a /dev/shm mapping and the refs into it."""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import secrets
import struct
from types import TracebackType
from typing import NamedTuple

from headrace.shm.errors import ShmError, StaleReferenceError

__all__ = ["ALIGN", "DATA_OFFSET", "HEADER_SIZE", "SHM_DIR", "Arena", "Ref", "block_span", "cleanup"]

SHM_DIR = "/dev/shm"
"""Where the backing files live (tmpfs on Linux)."""

ALIGN = 64
"""Alignment of every block and of every block's first data byte."""

HEADER_SIZE = 16
"""Bytes of the in-mapping block header: generation (uint64) then data size (uint64)."""

DATA_OFFSET = ALIGN
"""Distance from a block's header to its first data byte (the header padded to ``ALIGN``)."""

_HEADER = struct.Struct("<QQ")
_FREE_GENERATION = 0


def block_span(nbytes: int) -> int:
    """Bytes of the ring a block holding ``nbytes`` of data occupies (header, padding and data)."""
    return DATA_OFFSET + (nbytes + ALIGN - 1) // ALIGN * ALIGN


class Ref(NamedTuple):
    """A small, picklable reference to bytes in an arena; it is what crosses the socket."""

    block: int
    """Offset of the block header in the arena."""
    offset: int
    """Offset of the first data byte this ref covers (inside the block's data)."""
    nbytes: int
    """Number of bytes covered."""
    generation: int
    """The block's generation when the ref was made; a mismatch means the ref is stale."""


def _path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ShmError(f"invalid shared-memory name {name!r}")
    return os.path.join(SHM_DIR, name)


class Arena:
    """One shared-memory segment used as a ring of variable-size blocks.

    The owner (``Arena.create``) allocates and frees; the peer (``Arena.attach``) only reads and
    fills in place through validated views. Every block starts with a 16-byte header in the shared
    mapping holding the block's generation and data size; the owner writes a fresh generation on
    allocation and 0 on free, so a peer holding a ref to a freed or reused block gets
    ``StaleReferenceError`` instead of someone else's bytes. Generations start at a random 62-bit
    value so data that lands where an old header was is practically never mistaken for a header.

    Blocks may be freed in any order; space is reclaimed when the oldest live block is freed (the
    head then skips every already-freed block behind it). When the space after the newest block is
    too small the allocator wraps to offset 0 if the beginning is free. Not thread-safe: each side
    uses one arena from one thread.

    Views handed out keep the mapping alive: callers should release them before ``close``; if some
    are still alive the mapping is simply dropped and unmapped once they die.
    """

    name: str
    size: int

    def __init__(self, name: str, mm: mmap.mmap, size: int, *, owner: bool) -> None:
        """Wrap an existing mapping; use ``create`` or ``attach`` instead."""
        self.name = name
        self.size = size
        self._mm: mmap.mmap | None = mm
        self._mv: memoryview | None = memoryview(mm)
        self._owner = owner
        self._pid = os.getpid()
        self._capacity = size // ALIGN * ALIGN
        holder = ctypes.c_char.from_buffer(mm)
        self._address = ctypes.addressof(holder)
        del holder  # drop the buffer export so close() can unmap
        # Owner-side ring state. Blocks are kept oldest first; the ring is empty when the deque
        # is, wrapped when non-empty and tail <= head (tail == head means exactly full).
        self._blocks: collections.deque[tuple[int, int]] = collections.deque()  # (offset, span)
        self._live: dict[int, int] = {}  # offset -> generation, blocks not yet freed
        self._freed: set[int] = set()  # offsets freed but still in the deque (not at the head)
        self._head = 0
        self._tail = 0
        self._generation = secrets.randbits(61) + (1 << 61)

    @classmethod
    def create(cls, name: str, size: int) -> Arena:
        """Create ``/dev/shm/<name>`` of ``size`` bytes and map it; the caller owns and unlinks it."""
        if size < 2 * ALIGN:
            raise ValueError(f"arena size {size} is too small (minimum {2 * ALIGN})")
        path = _path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return cls(name, mm, size, owner=True)

    @classmethod
    def attach(cls, name: str) -> Arena:
        """Map the existing ``/dev/shm/<name>`` created by the peer."""
        path = _path(name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise ShmError(f"shared-memory segment {name!r} does not exist") from None
        try:
            size = os.fstat(fd).st_size
            if size < 2 * ALIGN:
                raise ShmError(f"shared-memory segment {name!r} is too small ({size} bytes)")
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, mm, size, owner=False)

    # -- properties ------------------------------------------------------------------------

    @property
    def owner(self) -> bool:
        """True for the side that created the arena (and allocates, frees and unlinks)."""
        return self._owner

    @property
    def closed(self) -> bool:
        return self._mm is None

    @property
    def capacity(self) -> int:
        """Bytes the ring can hold (the size rounded down to ``ALIGN``), headers included."""
        return self._capacity

    @property
    def used(self) -> int:
        """Bytes of the ring not available to ``alloc`` (owner side; 0 on an attached arena).

        This counts live blocks with their headers and padding, freed blocks not yet reclaimed
        because an older block is still live, and the unused end skipped by a wrap-around.
        """
        if not self._blocks:
            return 0
        if self._tail > self._head:
            return self._tail - self._head
        return self._capacity - self._head + self._tail

    # -- owner operations -------------------------------------------------------------------

    def alloc(self, nbytes: int) -> Ref | None:
        """Reserve a block for ``nbytes`` of data; None when there is no room right now."""
        self._check_owner("alloc")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        span = block_span(nbytes)
        cap = self._capacity
        if span > cap:
            return None
        head, tail = self._head, self._tail
        if not self._blocks:
            start = 0
        elif tail > head:  # not wrapped: free space is [tail, cap) and [0, head)
            if cap - tail >= span:
                start = tail
            elif head >= span:
                start = 0
            else:
                return None
        elif head - tail >= span:  # wrapped: free space is [tail, head)
            start = tail
        else:
            return None
        self._generation += 1
        generation = self._generation
        mm = self._mm
        assert mm is not None
        _HEADER.pack_into(mm, start, generation, nbytes)
        self._blocks.append((start, span))
        self._live[start] = generation
        if len(self._blocks) == 1:
            self._head = start
        self._tail = start + span
        return Ref(start, start + DATA_OFFSET, nbytes, generation)

    def free(self, ref: Ref) -> None:
        """Free the whole block ``ref.block``; raises ``StaleReferenceError`` if it is not live."""
        self._check_owner("free")
        if self._live.get(ref.block) != ref.generation:
            raise StaleReferenceError(f"free of a block that is not live: {ref}")
        del self._live[ref.block]
        mm = self._mm
        assert mm is not None
        _HEADER.pack_into(mm, ref.block, _FREE_GENERATION, 0)
        blocks = self._blocks
        if blocks[0][0] != ref.block:
            self._freed.add(ref.block)
            return
        blocks.popleft()
        freed = self._freed
        while blocks and blocks[0][0] in freed:
            freed.remove(blocks.popleft()[0])
        if blocks:
            self._head = blocks[0][0]
        else:
            self._head = self._tail = 0

    # -- either side --------------------------------------------------------------------------

    def view(self, ref: Ref) -> memoryview:
        """A read-only view of exactly ``ref``'s bytes after checking the ref is still valid."""
        return self._slice(ref).toreadonly()

    def buffer(self, ref: Ref) -> memoryview:
        """A writable view (format 'B') of exactly ``ref``'s bytes, for filling; validated like view."""
        return self._slice(ref)

    def sub(self, ref: Ref, start: int, nbytes: int) -> Ref:
        """A ref to ``nbytes`` bytes starting ``start`` bytes into ``ref`` (same block and generation)."""
        if start < 0 or nbytes < 0 or start + nbytes > ref.nbytes:
            raise ValueError(f"sub-range [{start}, {start + nbytes}) outside a ref of {ref.nbytes} bytes")
        return Ref(ref.block, ref.offset + start, nbytes, ref.generation)

    def address(self) -> int:
        """Base address of this process's mapping, to locate e.g. a numpy array's memory in a ref."""
        self._check_open()
        return self._address

    def close(self, *, unlink: bool = True) -> None:
        """Unmap (and, for the owner, unlink unless ``unlink`` is false) the segment; idempotent.

        Callers should release views first; if some are still alive the mapping is dropped here
        and unmapped by the runtime when the last view goes away.
        """
        mm, mv = self._mm, self._mv
        if mm is None:
            return
        self._mm = self._mv = None
        if mv is not None:
            try:
                mv.release()
            except BufferError:
                pass
        try:
            mm.close()
        except BufferError:
            pass  # views still exported elsewhere; the mapping dies with them
        if unlink and self._owner and os.getpid() == self._pid:
            try:
                os.unlink(_path(self.name))
            except FileNotFoundError:
                pass

    def __enter__(self) -> Arena:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        side = "owner" if self._owner else "peer"
        state = "closed" if self._mm is None else f"used={self.used}/{self._capacity}"
        return f"<Arena {self.name!r} {side} {state}>"

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._mm is None:
            raise ShmError(f"arena {self.name!r} is closed")

    def _check_owner(self, op: str) -> None:
        self._check_open()
        if not self._owner:
            raise ShmError(f"{op} on arena {self.name!r} which this process attached but does not own")

    def _slice(self, ref: Ref) -> memoryview:
        mm, mv = self._mm, self._mv
        if mm is None or mv is None:
            raise ShmError(f"arena {self.name!r} is closed")
        block = ref.block
        if block < 0 or block % ALIGN or block + DATA_OFFSET > self._capacity:
            raise StaleReferenceError(f"ref outside arena {self.name!r}: {ref}")
        generation, data_size = _HEADER.unpack_from(mm, block)
        if generation == _FREE_GENERATION or generation != ref.generation:
            raise StaleReferenceError(f"ref to a freed or reused block of arena {self.name!r}: {ref}")
        data = block + DATA_OFFSET
        end = ref.offset + ref.nbytes
        if ref.offset < data or ref.nbytes < 0 or end > data + data_size or end > self._capacity:
            raise StaleReferenceError(f"ref outside its block in arena {self.name!r}: {ref}")
        return mv[ref.offset : end]


def cleanup(prefix: str) -> int:
    """Unlink leftover ``/dev/shm`` files whose names start with ``prefix``; returns how many."""
    if not prefix or "/" in prefix:
        raise ValueError(f"refusing to clean up shared memory with prefix {prefix!r}")
    count = 0
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return 0
    for entry in names:
        if entry.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
            except FileNotFoundError:
                continue
            count += 1
    return count
