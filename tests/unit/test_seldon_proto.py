"""The committed Seldon scheduler stubs are what `make proto` generates from the committed .proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = Path("headrace/engine/scheduler/seldon/scheduler.proto")
GENERATED = ("scheduler_pb2.py", "scheduler_pb2.pyi", "scheduler_pb2_grpc.py")


@pytest.mark.timeout(120)
def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    source = REPO / "engine" / "scheduler" / "seldon"
    (tmp_path / PROTO.parent).mkdir(parents=True)
    shutil.copy(source / PROTO.name, tmp_path / PROTO)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(tmp_path)]
    cmd += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", str(tmp_path / PROTO)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    for name in GENERATED:
        generated = (out / PROTO.parent / name).read_text()
        assert generated == (source / name).read_text(), f"{name} is stale: run `make proto`"


def test_the_package_and_service_are_seldons() -> None:
    from headrace.engine.scheduler.seldon import scheduler_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Scheduler"]
    assert service.full_name == "seldon.mlops.scheduler.Scheduler"
    streaming = {m.name for m in service.methods if m.server_streaming}
    assert streaming == {"ServerStatus", "ModelStatus", "PipelineStatus", "ExperimentStatus"}
    # a few field numbers the CLI depends on, straight from Seldon's definitions
    assert pb.ModelSpec.DESCRIPTOR.fields_by_name["parameters"].number == 8
    assert pb.ServerStatusResponse.DESCRIPTOR.fields_by_name["type"].number == 7
    assert pb.Pipeline.DESCRIPTOR.fields_by_name["maxStepRevisits"].number == 10
