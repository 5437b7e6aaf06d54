"""ghz's gRPC schema `oip.proto`, checked against tritonclient's descriptors (`-m loadtests.bench.proto`)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests.bench import BENCH_DIR, CACHE_DIR
from loadtests.bench.payloads import SMALL_DATA, grpc_request
from loadtests.bench.procs import SetupError, run_quiet

PROTO = BENCH_DIR / "oip.proto"
MESSAGES = ("ModelInferRequest", "ModelInferResponse", "InferTensorContents", "InferParameter")
TOOLS_VENV = CACHE_DIR / "tools-venv"


def _fields(msg: Any, prefix: str = "") -> dict[str, tuple[int, int, int, str]]:
    """Flatten a DescriptorProto: 'Msg.field' -> (number, type, label, type_name)."""
    out: dict[str, tuple[int, int, int, str]] = {}
    for f in msg.field:
        out[f"{prefix}{msg.name}.{f.name}"] = (f.number, f.type, f.label, f.type_name.lstrip("."))
    for nested in msg.nested_type:
        out.update(_fields(nested, f"{prefix}{msg.name}."))
    return out


def _compile(proto: Path) -> Any:
    """FileDescriptorProto of `proto`, compiled by grpc_tools.protoc in a small cached venv."""
    from google.protobuf import descriptor_pb2

    py = TOOLS_VENV / "bin" / "python"
    if not py.exists():
        run_quiet([sys.executable, "-m", "venv", str(TOOLS_VENV)], timeout=120)
    if (
        run_quiet(
            [str(py), "-c", "import importlib.util as u; print(bool(u.find_spec('grpc_tools')))"], timeout=60
        ).strip()
        != "True"
    ):
        run_quiet([str(py), "-m", "pip", "install", "-q", "grpcio-tools"], timeout=600)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "oip.pb"
        run_quiet(
            [
                str(py),
                "-m",
                "grpc_tools.protoc",
                f"-I{proto.parent}",
                f"--descriptor_set_out={out}",
                proto.name,
            ],
            timeout=120,
        )
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def check(proto: Path = PROTO) -> list[str]:
    """Differences between `proto` and tritonclient's inference protos (empty list: they agree)."""
    try:
        from google.protobuf import descriptor_pb2
        from tritonclient.grpc import service_pb2
    except ImportError as exc:
        raise SetupError(f"tritonclient not importable: {exc}") from exc
    ours = {m.name: m for m in _compile(proto).message_type}
    problems: list[str] = []
    for name in MESSAGES:
        ref = descriptor_pb2.DescriptorProto()
        service_pb2.DESCRIPTOR.message_types_by_name[name].CopyToProto(ref)
        if name not in ours:
            problems.append(f"{name}: missing from {proto.name}")
            continue
        mine, theirs = _fields(ours[name]), _fields(ref)
        for key, val in theirs.items():
            if key in mine and mine[key] != val:
                problems.append(f"{key}: ours {mine[key]} != tritonclient {val}")
            elif key not in mine and ".ParametersEntry." not in key:
                problems.append(f"{key}: missing")
        problems += [f"{key}: not in tritonclient" for key in mine if key not in theirs]
    # The hand-encoded requests must decode to what they claim to be.
    req = service_pb2.ModelInferRequest.FromString(grpc_request("echo", 64))
    got = (req.model_name, req.inputs[0].name, req.inputs[0].datatype, list(req.inputs[0].shape))
    if got != ("echo", "input-0", "FP32", [1, 16]) or len(req.raw_input_contents[0]) != 64:
        problems.append(f"hand-encoded raw ModelInferRequest decodes as {got}")
    req = service_pb2.ModelInferRequest.FromString(grpc_request("echo", 0))
    small = (
        list(req.inputs[0].shape),
        list(req.inputs[0].contents.fp32_contents),
        len(req.raw_input_contents),
    )
    if small != ([1, 4], [float(x) for x in SMALL_DATA], 0):
        problems.append(f"hand-encoded small ModelInferRequest decodes as {small}")
    return problems


def main() -> int:
    problems = check()
    for p in problems:
        print("MISMATCH", p)
    print(f"{PROTO.name}: {'OK, matches tritonclient' if not problems else f'{len(problems)} mismatches'}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
