"""Messages between a worker and a model-server replica: msgpack frames carrying tensor references.

Tensor bytes live in shared memory (``shm``); a frame carries only names, shapes and references,
or the bytes themselves when a tensor is smaller than ``shm_min_bytes``.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

REQUEST_ARENA = 0  # the worker's arena (inputs; outputs that alias inputs)
RESPONSE_ARENA = 1  # the server's arena (outputs)

FRAME_HEADER = struct.Struct("<I")


class WireTensor(msgspec.Struct, array_like=True, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    # exactly one of: ref (arena, block, offset, nbytes, generation) / raw / data
    ref: tuple[int, int, int, int, int] | None = None
    raw: bytes | None = None
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class Hello(msgspec.Struct, tag="h", array_like=True):
    """First frame on a connection: the worker names its request arena."""

    request_arena: str


class Welcome(msgspec.Struct, tag="w", array_like=True):
    """The server's answer: the arena it writes outputs into."""

    response_arena: str
    server: str
    index: int


class InferCall(msgspec.Struct, tag="c", array_like=True, omit_defaults=True):
    id: int
    model: str
    inputs: list[WireTensor]
    request_id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[tuple[str, dict[str, Any]]] | None = None
    # response-arena refs (block, generation) the worker no longer reads
    release: list[tuple[int, int]] | None = None


class InferReply(msgspec.Struct, tag="r", array_like=True, omit_defaults=True):
    id: int
    outputs: list[WireTensor] = []
    parameters: dict[str, Any] | None = None
    error: str | None = None
    error_kind: str | None = None


class Release(msgspec.Struct, tag="f", array_like=True):
    blocks: list[tuple[int, int]]


Message = Hello | Welcome | InferCall | InferReply | Release

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    body = _encoder.encode(msg)
    return FRAME_HEADER.pack(len(body)) + body


def decode(payload: bytes | memoryview) -> Message:
    msg: Message = _decoder.decode(payload)
    return msg


class FrameReader:
    """Splits a byte stream into frames; feed() returns the complete messages."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (n,) = FRAME_HEADER.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            with memoryview(buf) as view:
                out.append(_decoder.decode(view[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out
