"""One request to each cell before loading it: the server must really echo, or the cell is not measured."""

from __future__ import annotations

import numpy as np
import orjson

from loadtests.bench.payloads import SMALL_DATA, RestBody, tensor
from loadtests.bench.procs import post

GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def rest_echo(url: str, body: RestBody, nbytes: int) -> str | None:
    """None when POSTing `body` echoes the tensor back; else why not."""
    status, reply = post(url, body.path.read_bytes(), body.headers)
    if status != 200:
        return f"sanity POST: HTTP {status} {reply[:160]!r}"
    if body.encoding == "binary":
        return None if len(reply) >= nbytes else f"sanity POST: {len(reply)} bytes back for {nbytes} sent"
    try:
        out = orjson.loads(reply)["outputs"][0]
        data = np.asarray(out["data"], dtype=np.float32).ravel()
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        return f"sanity POST: unexpected reply ({exc}): {reply[:160]!r}"
    want = np.asarray(SMALL_DATA, dtype=np.float32) if nbytes == 0 else tensor(nbytes).ravel()
    return None if np.array_equal(data, want) else f"sanity POST: echo differs: {reply[:160]!r}"


def grpc_echo(target: str, message: bytes, nbytes: int) -> tuple[int, str | None]:
    """(size of the serialized reply, None) when ModelInfer echoes; (0, why) otherwise."""
    import grpc

    opts = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    try:
        with grpc.insecure_channel(target, options=opts) as channel:
            reply: bytes = channel.unary_unary(GRPC_METHOD)(message, timeout=60)
    except grpc.RpcError as exc:
        return 0, f"sanity ModelInfer: {exc.code()} {str(exc.details())[:160]}"
    try:
        from tritonclient.grpc import service_pb2
    except ImportError:
        return len(reply), None  # cannot decode here; the size check under load still applies
    resp = service_pb2.ModelInferResponse.FromString(reply)
    want = np.asarray(SMALL_DATA, dtype=np.float32) if nbytes == 0 else tensor(nbytes).ravel()
    if resp.raw_output_contents:
        got = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32)
    elif resp.outputs:
        got = np.asarray(resp.outputs[0].contents.fp32_contents, dtype=np.float32)
    else:
        return 0, "sanity ModelInfer: reply has no outputs"
    if not np.array_equal(got, want):
        return 0, f"sanity ModelInfer: echo differs ({got[:4]}...)"
    return len(reply), None
