"""Turning tensors into wire references (and back) over a pair of shared-memory arenas."""

from __future__ import annotations

import numpy as np

from headrace.gateway.oip.types import Tensor
from headrace.gateway.runtime.messages import WireTensor
from headrace.shm.arena import Arena, Ref


def buffer_address(buf: bytes | memoryview) -> int:
    """Address of the first byte of a buffer (read-only buffers included)."""
    return int(np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0])


def to_wire(
    tensor: Tensor, arena: Arena | None, arena_id: int, min_bytes: int, refs: list[Ref]
) -> WireTensor:
    """Writes a tensor once into ``arena`` (when big enough and there is room) or inline."""
    params = tensor.parameters or None
    if tensor.raw is None and tensor.data is not None:
        return WireTensor(tensor.name, tensor.datatype, tensor.shape, data=tensor.data, parameters=params)
    raw = tensor.raw_bytes()
    nbytes = len(raw) if isinstance(raw, bytes) else raw.nbytes
    if arena is not None and nbytes >= min_bytes:
        ref = arena.alloc(nbytes)
        if ref is not None:
            arena.buffer(ref)[:] = raw if isinstance(raw, bytes) else raw.cast("B")
            refs.append(ref)
            return WireTensor(
                tensor.name,
                tensor.datatype,
                tensor.shape,
                ref=(arena_id, ref.block, ref.offset, ref.nbytes, ref.generation),
                parameters=params,
            )
    return WireTensor(tensor.name, tensor.datatype, tensor.shape, raw=bytes(raw), parameters=params)


def from_wire(wire: WireTensor, arenas: tuple[Arena | None, Arena | None]) -> Tensor:
    """A tensor whose raw bytes are read in place from the arena the reference names."""
    raw: bytes | memoryview | None = wire.raw
    if wire.ref is not None:
        arena_id, block, offset, nbytes, generation = wire.ref
        arena = arenas[arena_id]
        if arena is None:
            raise RuntimeError("reference to an arena this side has not attached")
        raw = arena.view(Ref(block, offset, nbytes, generation))
    return Tensor(
        name=wire.name,
        datatype=wire.datatype,
        shape=wire.shape,
        raw=raw,
        data=wire.data,
        parameters=wire.parameters or {},
    )
