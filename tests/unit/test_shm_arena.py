"""Unit tests for the shared-memory tensor arena (headrace.shm.arena)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
from collections.abc import Callable, Iterator
from uuid import uuid4

import numpy as np
import pytest

from headrace.shm import Arena, ArenaFullError, Ref, ShmError, StaleReferenceError, cleanup
from headrace.shm.arena import ALIGN, DATA_OFFSET, SHM_DIR, block_span

pytestmark = pytest.mark.timeout(30)

MakeArena = Callable[[int], Arena]


def _unique(tag: str = "") -> str:
    return f"hrtest-{os.getpid()}-{tag}{uuid4().hex[:8]}"


@pytest.fixture
def name() -> Iterator[str]:
    n = _unique()
    yield n
    cleanup(n)


@pytest.fixture
def make_arena() -> Iterator[MakeArena]:
    arenas: list[Arena] = []

    def make(size: int) -> Arena:
        a = Arena.create(_unique(), size)
        arenas.append(a)
        return a

    yield make
    for a in arenas:
        a.close()
        assert not os.path.exists(os.path.join(SHM_DIR, a.name))


def _fill(arena: Arena, ref: Ref, seed: int) -> bytes:
    data = bytes((seed + i) % 251 for i in range(ref.nbytes))
    arena.buffer(ref)[:] = data
    return data


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# -- basics ---------------------------------------------------------------------------------


def test_round_trip_through_attach(name: str) -> None:
    with Arena.create(name, 1 << 16) as owner, Arena.attach(name) as peer:
        assert owner.owner and not peer.owner
        assert peer.size == owner.size == 1 << 16
        ref = owner.alloc(1000)
        assert ref is not None
        data = os.urandom(1000)
        buf = owner.buffer(ref)
        assert buf.format == "B" and not buf.readonly and len(buf) == 1000
        buf[:] = data
        buf.release()
        view = peer.view(ref)
        assert view.readonly and bytes(view) == data
        view.release()
        # the peer may fill a buffer the owner handed out; the owner sees it in place
        pbuf = peer.buffer(ref)
        pbuf[:10] = b"x" * 10
        pbuf.release()
        assert bytes(owner.view(ref)[:10]) == b"x" * 10
        owner.free(ref)
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_create_existing_name_fails_and_attach_missing_fails(name: str) -> None:
    with Arena.create(name, 4096), pytest.raises(FileExistsError):
        Arena.create(name, 4096)
    with pytest.raises(ShmError):
        Arena.attach(name)
    with pytest.raises(ShmError):
        Arena.create("a/b", 4096)
    with pytest.raises(ValueError):
        Arena.create(name, 64)


def test_peer_cannot_alloc_or_free(name: str) -> None:
    with Arena.create(name, 4096) as owner, Arena.attach(name) as peer:
        ref = owner.alloc(8)
        assert ref is not None
        with pytest.raises(ShmError):
            peer.alloc(8)
        with pytest.raises(ShmError):
            peer.free(ref)
        assert peer.used == 0
        owner.free(ref)


def test_close_is_idempotent_and_survives_live_views(name: str) -> None:
    owner = Arena.create(name, 4096)
    peer = Arena.attach(name)
    ref = owner.alloc(16)
    assert ref is not None
    owner.buffer(ref)[:] = b"0123456789abcdef"
    kept = peer.view(ref)
    arr = np.frombuffer(owner.buffer(ref), dtype=np.uint8)
    peer.close()
    peer.close()
    owner.close()
    owner.close()
    assert owner.closed and peer.closed
    assert not os.path.exists(os.path.join(SHM_DIR, name))
    # the views keep the mapping alive until they go away
    assert bytes(kept) == b"0123456789abcdef"
    assert arr[0] == ord("0")
    with pytest.raises(ShmError):
        owner.view(ref)
    with pytest.raises(ShmError):
        owner.alloc(1)
    with pytest.raises(ShmError):
        owner.address()


def test_address_locates_numpy_memory(make_arena: MakeArena) -> None:
    arena = make_arena(1 << 16)
    ref = arena.alloc(8 * 100)
    assert ref is not None
    arr = np.frombuffer(arena.view(ref), dtype=np.float64)
    ptr = arr.__array_interface__["data"][0]
    assert ptr == arena.address() + ref.offset
    assert ptr % ALIGN == 0
    del arr
    arena.free(ref)


# -- a real second process ------------------------------------------------------------------


def _child(name: str, read: Ref, write: Ref, stale: Ref, expected: bytes) -> None:
    peer = Arena.attach(name)
    try:
        if bytes(peer.view(read)) != expected:
            raise SystemExit(2)
        arr = np.frombuffer(peer.view(read), dtype=np.uint8)
        if int(arr.sum()) != sum(expected):
            raise SystemExit(3)
        del arr
        try:
            peer.view(stale)
        except StaleReferenceError:
            pass
        else:
            raise SystemExit(4)
        out = np.frombuffer(peer.buffer(write), dtype=np.int32)
        out[:] = np.arange(len(out), dtype=np.int32) * 3
        del out
    finally:
        peer.close()


def test_second_process_reads_and_writes(name: str) -> None:
    with Arena.create(name, 1 << 20) as owner:
        read = owner.alloc(4096)
        write = owner.alloc(4 * 256)
        stale = owner.alloc(64)
        assert read is not None and write is not None and stale is not None
        expected = _fill(owner, read, 7)
        owner.free(stale)
        ctx = multiprocessing.get_context("fork")
        proc = ctx.Process(target=_child, args=(name, read, write, stale, expected))
        proc.start()
        proc.join(20)
        assert proc.exitcode == 0
        got = np.frombuffer(owner.view(write), dtype=np.int32)
        assert np.array_equal(got, np.arange(256, dtype=np.int32) * 3)
        del got
        owner.free(read)
        owner.free(write)
        assert owner.used == 0
    assert not os.path.exists(os.path.join(SHM_DIR, name))


# -- allocation behaviour ------------------------------------------------------------------


def test_alignment_of_data_offsets(make_arena: MakeArena) -> None:
    arena = make_arena(1 << 16)
    refs = []
    for n in [0, 1, 15, 16, 63, 64, 65, 100, 127, 128, 1000]:
        ref = arena.alloc(n)
        assert ref is not None
        assert ref.block % ALIGN == 0
        assert ref.offset % ALIGN == 0
        assert ref.offset == ref.block + DATA_OFFSET
        assert ref.nbytes == n
        refs.append(ref)
    for prev, nxt in itertools.pairwise(refs):
        assert nxt.block == prev.block + block_span(prev.nbytes)
    assert arena.used == sum(block_span(r.nbytes) for r in refs)
    for ref in refs:
        arena.free(ref)
    assert arena.used == 0


def test_zero_size(make_arena: MakeArena) -> None:
    arena = make_arena(4096)
    ref = arena.alloc(0)
    assert ref is not None and ref.nbytes == 0
    assert len(arena.view(ref)) == 0
    assert len(arena.buffer(ref)) == 0
    assert arena.used == block_span(0) == DATA_OFFSET
    other = arena.alloc(0)
    assert other is not None and other.block != ref.block
    arena.free(ref)
    with pytest.raises(StaleReferenceError):
        arena.view(ref)
    arena.free(other)
    assert arena.used == 0


def test_wrap_around_keeps_live_data(make_arena: MakeArena) -> None:
    arena = make_arena(64 * 64)  # 4096 bytes; each 448-byte block spans 512
    assert arena.capacity == 4096
    refs = [arena.alloc(448) for _ in range(8)]
    assert all(r is not None for r in refs)
    live = [r for r in refs if r is not None]
    assert arena.alloc(0) is None  # full
    data = {r.block: _fill(arena, r, i) for i, r in enumerate(live)}
    arena.free(live[0])
    arena.free(live[1])
    assert arena.used == 4096 - 2 * 512
    new = arena.alloc(900)  # spans 1024: fits only at offset 0
    assert new is not None
    assert new.block == 0 and new.offset == DATA_OFFSET
    assert arena.used == 4096
    _fill(arena, new, 99)
    for r in live[2:]:
        assert bytes(arena.view(r)) == data[r.block]
    # free everything older than the wrapped block; the head then wraps to 0 as well
    for r in live[2:]:
        arena.free(r)
    assert arena.used == 1024
    tail = arena.alloc(3000)
    assert tail is not None and tail.block == 1024
    arena.free(new)
    arena.free(tail)
    assert arena.used == 0


def test_wrap_skips_too_small_tail_end(make_arena: MakeArena) -> None:
    arena = make_arena(4096)
    a = arena.alloc(1984)  # span 2048
    b = arena.alloc(1472)  # span 1536, tail now at 3584 with 512 left at the end
    assert a is not None and b is not None and b.block == 2048
    arena.free(a)
    c = arena.alloc(1000)  # span 1088 > 512 left: wraps to 0
    assert c is not None and c.block == 0
    # the skipped end (512 bytes) is counted as used until the head passes it
    assert arena.used == 4096 - 2048 + 1088
    assert arena.alloc(1000) is None  # 2048 - 1088 = 960 free between tail and head
    d = arena.alloc(960 - 64)  # exactly fills [1088, 2048)
    assert d is not None and d.block == 1088
    assert arena.used == 4096
    arena.free(b)  # head moves to 0, the skipped end is reclaimed
    assert arena.used == 2048
    for r in (c, d):
        arena.free(r)
    assert arena.used == 0


def test_out_of_order_frees_reclaim_space(make_arena: MakeArena) -> None:
    arena = make_arena(4096)
    refs = [arena.alloc(448) for _ in range(8)]
    live = [r for r in refs if r is not None]
    assert len(live) == 8
    # freeing middle blocks does not reclaim while the oldest block is live
    for i in (3, 1, 6, 2):
        arena.free(live[i])
    assert arena.used == 4096
    assert arena.alloc(0) is None
    # freeing the oldest lets the head skip every freed block behind it: 0,1,2,3 reclaimed
    arena.free(live[0])
    assert arena.used == 4096 - 4 * 512
    big = arena.alloc(2048 - 64)
    assert big is not None and big.block == 0
    for i in (5, 4, 7):
        arena.free(live[i])
    assert arena.used == 2048
    arena.free(big)
    assert arena.used == 0
    # an empty arena restarts at offset 0
    again = arena.alloc(1)
    assert again is not None and again.block == 0
    arena.free(again)


def test_full_arena_returns_none_then_recovers(make_arena: MakeArena) -> None:
    arena = make_arena(8192)
    assert arena.alloc(8192) is None  # larger than the arena with its header
    assert arena.alloc(1 << 40) is None
    whole = arena.alloc(8192 - DATA_OFFSET)
    assert whole is not None and whole.block == 0
    assert arena.used == arena.capacity
    assert arena.alloc(0) is None
    arena.free(whole)
    assert arena.used == 0
    refs = []
    while (ref := arena.alloc(1000)) is not None:
        refs.append(ref)
    assert len(refs) == 8192 // block_span(1000)
    arena.free(refs[0])
    again = arena.alloc(1000)
    assert again is not None and again.block == refs[0].block
    with pytest.raises(ValueError):
        arena.alloc(-1)
    for ref in [*refs[1:], again]:
        arena.free(ref)
    assert arena.used == 0
    assert issubclass(ArenaFullError, ShmError)


def test_size_not_multiple_of_align(make_arena: MakeArena) -> None:
    arena = make_arena(4096 + 63)
    assert arena.capacity == 4096
    ref = arena.alloc(4096 - DATA_OFFSET)
    assert ref is not None
    assert arena.alloc(0) is None
    arena.free(ref)


# -- stale references ---------------------------------------------------------------------------


def test_free_then_view_is_stale(name: str) -> None:
    with Arena.create(name, 4096) as owner, Arena.attach(name) as peer:
        ref = owner.alloc(100)
        assert ref is not None
        assert len(peer.view(ref)) == 100
        owner.free(ref)
        for arena in (owner, peer):
            with pytest.raises(StaleReferenceError):
                arena.view(ref)
            with pytest.raises(StaleReferenceError):
                arena.buffer(ref)


def test_reuse_of_offset_makes_old_ref_stale(name: str) -> None:
    with Arena.create(name, 4096) as owner, Arena.attach(name) as peer:
        old = owner.alloc(100)
        assert old is not None
        owner.free(old)
        new = owner.alloc(100)
        assert new is not None
        assert new.block == old.block and new.offset == old.offset
        assert new.generation != old.generation
        assert len(peer.view(new)) == 100
        with pytest.raises(StaleReferenceError):
            peer.view(old)
        with pytest.raises(StaleReferenceError):
            owner.free(old)
        owner.free(new)


def test_stale_after_data_overwrites_old_header(make_arena: MakeArena) -> None:
    arena = make_arena(4096)
    a = arena.alloc(0)
    b = arena.alloc(0)
    assert a is not None and b is not None
    arena.free(a)
    arena.free(b)
    big = arena.alloc(1000)  # its data covers b's old header
    assert big is not None and big.block == 0
    arena.buffer(big)[:] = b"\xff" * 1000
    with pytest.raises(StaleReferenceError):
        arena.view(b)
    arena.buffer(big)[:] = b"\x00" * 1000
    with pytest.raises(StaleReferenceError):
        arena.view(b)
    arena.free(big)


def test_double_free(make_arena: MakeArena) -> None:
    arena = make_arena(4096)
    a = arena.alloc(10)
    b = arena.alloc(10)
    assert a is not None and b is not None
    arena.free(b)  # out of order: b stays in the ring as freed
    with pytest.raises(StaleReferenceError):
        arena.free(b)
    arena.free(a)
    with pytest.raises(StaleReferenceError):
        arena.free(a)
    with pytest.raises(StaleReferenceError):
        arena.free(b)
    assert arena.used == 0


def test_refs_out_of_range_are_rejected(make_arena: MakeArena) -> None:
    arena = make_arena(4096)
    ref = arena.alloc(100)
    assert ref is not None
    bad = [
        ref._replace(nbytes=101),
        ref._replace(offset=ref.offset - 1),
        ref._replace(offset=ref.offset + 1, nbytes=100),
        ref._replace(nbytes=-1),
        ref._replace(block=-64),
        ref._replace(block=4096),
        ref._replace(block=1 << 40),
        ref._replace(block=ref.block + 1),
        ref._replace(generation=ref.generation + 1),
        ref._replace(generation=0),
    ]
    for r in bad:
        with pytest.raises(StaleReferenceError):
            arena.view(r)
    with pytest.raises(StaleReferenceError):
        arena.free(ref._replace(generation=ref.generation + 1))
    with pytest.raises(StaleReferenceError):
        arena.free(ref._replace(block=ref.block + 64))
    arena.free(ref)


def test_sub_refs(name: str) -> None:
    with Arena.create(name, 4096) as owner, Arena.attach(name) as peer:
        ref = owner.alloc(100)
        assert ref is not None
        data = _fill(owner, ref, 3)
        part = owner.sub(ref, 10, 20)
        assert part == Ref(ref.block, ref.offset + 10, 20, ref.generation)
        assert bytes(peer.view(part)) == data[10:30]
        nested = peer.sub(part, 5, 15)
        assert bytes(peer.view(nested)) == data[15:30]
        assert len(owner.view(owner.sub(ref, 100, 0))) == 0
        assert bytes(owner.view(owner.sub(ref, 0, 100))) == data
        peer.buffer(part)[:] = b"z" * 20
        assert bytes(owner.view(ref))[10:30] == b"z" * 20
        for start, n in [(-1, 1), (0, 101), (90, 11), (101, 0), (0, -1)]:
            with pytest.raises(ValueError):
                owner.sub(ref, start, n)
        owner.free(part)  # freeing through a sub-ref frees the whole block
        with pytest.raises(StaleReferenceError):
            peer.view(ref)
        with pytest.raises(StaleReferenceError):
            peer.view(nested)
        assert owner.used == 0


# -- cleanup ------------------------------------------------------------------------------------


def test_cleanup_prefix() -> None:
    prefix = _unique("cleanup-")
    others = _unique("keep-")
    for i in range(3):
        fd = os.open(os.path.join(SHM_DIR, f"{prefix}-{i}"), os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    kept = Arena.create(others, 4096)
    try:
        assert cleanup(prefix) == 3
        assert cleanup(prefix) == 0
        assert not [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
        assert os.path.exists(os.path.join(SHM_DIR, others))
        with pytest.raises(ValueError):
            cleanup("")
    finally:
        kept.close()
    # an arena whose file was already removed still closes cleanly
    leaked = Arena.create(f"{prefix}-arena", 4096)
    assert cleanup(prefix) == 1
    leaked.close()


# -- randomized model check ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_random_alloc_free_against_model(make_arena: MakeArena, seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([4096, 8192, 64 * 100, 1 << 15])
    arena = make_arena(size)
    cap = arena.capacity
    live: dict[int, tuple[Ref, bytes]] = {}
    ring: list[tuple[int, int, bool]] = []  # (block, span, freed) oldest first, as the model sees it

    def model_used() -> int:
        while ring and ring[0][2]:
            ring.pop(0)
        if not ring:
            return 0
        head = ring[0][0]
        tail = ring[-1][0] + ring[-1][1]
        return tail - head if tail > head else cap - head + tail

    def model_fits(span: int) -> bool:
        model_used()
        if span > cap:
            return False
        if not ring:
            return True
        head = ring[0][0]
        tail = ring[-1][0] + ring[-1][1]
        if tail > head:
            return cap - tail >= span or head >= span
        return head - tail >= span

    for step in range(1500):
        if live and (rng.random() < 0.45 or step % 97 == 0):
            block = rng.choice(list(live))
            ref, data = live.pop(block)
            assert bytes(arena.view(ref)) == data
            arena.free(ref)
            ring[[b for b, _, _ in ring].index(block)] = (block, block_span(ref.nbytes), True)
            with pytest.raises(StaleReferenceError):
                arena.view(ref)
        else:
            nbytes = rng.choice([0, 1, 63, 64, 65, rng.randrange(0, size // 3)])
            span = block_span(nbytes)
            fits = model_fits(span)
            new = arena.alloc(nbytes)
            assert (new is not None) == fits, (step, nbytes, ring)
            if new is not None:
                assert new.offset % ALIGN == 0 and new.offset == new.block + DATA_OFFSET
                assert new.block >= 0 and new.block + span <= cap
                extent = (new.block, new.block + span)
                for ref, _ in live.values():
                    assert not _overlaps(extent, (ref.block, ref.block + block_span(ref.nbytes)))
                live[new.block] = (new, _fill(arena, new, step))
                ring.append((new.block, span, False))
        used = arena.used
        assert used == model_used()
        assert sum(block_span(r.nbytes) for r, _ in live.values()) <= used <= cap
    for ref, data in live.values():
        assert bytes(arena.view(ref)) == data
        arena.free(ref)
    assert arena.used == 0
