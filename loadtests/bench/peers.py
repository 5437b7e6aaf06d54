"""Servers under test: installed at bench time, started, for the floor, MLServer, Triton and headrace."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loadtests.bench import ASSETS_DIR, CACHE_DIR, REPO_DIR
from loadtests.bench.floor_grpc import READY_LINE
from loadtests.bench.procs import (
    Server,
    SetupError,
    free_ports,
    run_quiet,
    start_server,
    wait_log_line,
    wait_ready,
)
from loadtests.bench.tools import apt_install

MLSERVER_VERSION = "1.7.1"
MLSERVER_PINS = (f"mlserver=={MLSERVER_VERSION}", "uvloop==0.21.0")  # uvloop 0.23 breaks its start-up
PYTRITON_VERSION = "0.7.0"
READY_TIMEOUT = 60.0


@dataclass
class Running:
    """A started server and how to reach it."""

    label: str
    server: Server
    http_base: str | None
    grpc_target: str | None
    model: str = "echo"
    rest_binary: bool = True  # accepts the binary tensor extension on REST
    grpc_raw: bool = True  # accepts raw_input_contents (large tensors) on gRPC
    notes: list[str] = field(default_factory=list)


class Peer:
    """One row group in the report. `prepare` installs once per bench run; `start` once per repeat."""

    key = ""
    label = ""
    version = ""
    notes: tuple[str, ...] = ()

    def prepare(self) -> None:
        """Install or check what this peer needs; raise SetupError when it cannot run here."""

    def start(self, workdir: Path) -> Running:
        raise NotImplementedError


class FloorPeer(Peer):
    key = "floor"
    label = "floor (1 process)"
    version = "loadtests/bench/floor.py: uvloop + httptools + orjson, one process"

    def start(self, workdir: Path) -> Running:
        (port,) = free_ports(1)
        cmd = [sys.executable, "-m", "loadtests.bench.floor", str(port)]
        server = start_server(self.key, cmd, log_path=workdir / "floor.log", cwd=REPO_DIR)
        base = f"http://127.0.0.1:{port}"
        _ready_or_stop(server, f"{base}/v2/models/echo/ready")
        return Running(self.label, server, base, None)


class GrpcFloorPeer(Peer):
    """The gRPC ceiling: grpc.aio ModelInfer echo, `procs` uvloop processes on one SO_REUSEPORT port."""

    def __init__(self, procs: int, key: str) -> None:
        self.procs = procs
        self.key = key
        self.label = f"floor: grpc.aio ModelInfer, {procs} process{'es' if procs != 1 else ''}"
        self.version = (
            f"loadtests/bench/floor_grpc.py: grpcio {_grpc_version()} aio on uvloop, "
            f"tritonclient protobuf classes, {procs} process(es), SO_REUSEPORT"
        )

    def prepare(self) -> None:
        if _grpc_version() == "missing":
            raise SetupError("grpcio is not installed in this venv")

    def start(self, workdir: Path) -> Running:
        (port,) = free_ports(1)
        cmd = [sys.executable, "-m", "loadtests.bench.floor_grpc", str(port), str(self.procs)]
        server = start_server(self.key, cmd, log_path=workdir / f"{self.key}.log", cwd=REPO_DIR)
        try:
            wait_log_line(server, READY_LINE, READY_TIMEOUT)
        except SetupError:
            server.stop()
            raise
        return Running(self.label, server, None, f"127.0.0.1:{port}")


def _grpc_version() -> str:
    try:
        import grpc
    except ImportError:
        return "missing"
    return str(grpc.__version__)


class MLServerPeer(Peer):
    key = "mlserver"
    label = f"MLServer {MLSERVER_VERSION}"
    version = f"mlserver {MLSERVER_VERSION} + uvloop 0.21.0, own venv"
    notes = (
        "MLServer: parallel_workers 0, debug false, metrics endpoint off, custom MLModel echo.",
        "MLServer has no binary tensor extension on REST: its 1 MiB REST cell is sent as JSON; "
        "its 16 MiB REST cell is skipped (about 40 MB of JSON text per request).",
    )
    venv = CACHE_DIR / "mlserver-venv"

    def prepare(self) -> None:
        py = self.venv / "bin" / "python"
        if py.exists():
            probe = subprocess.run(
                [str(py), "-c", "import mlserver, uvloop; print(mlserver.__version__, uvloop.__version__)"],
                capture_output=True,
                text=True,
                check=False,
            )
            parts = probe.stdout.split()
            if probe.returncode == 0 and parts[:1] == [MLSERVER_VERSION] and parts[1].startswith("0.21"):
                return
        else:
            run_quiet([sys.executable, "-m", "venv", str(self.venv)], timeout=300)
        run_quiet([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], timeout=600)
        run_quiet([str(py), "-m", "pip", "install", "-q", *MLSERVER_PINS], timeout=1800)

    def start(self, workdir: Path) -> Running:
        http, grpc = free_ports(2)
        root = workdir / "mlserver"
        model_dir = root / "echo"
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(ASSETS_DIR / "mlserver" / "echo_model.py", model_dir / "echo_model.py")
        (model_dir / "model-settings.json").write_text(
            json.dumps({"name": "echo", "implementation": "echo_model.EchoModel"}, indent=2)
        )
        settings = {
            "debug": False,
            "parallel_workers": 0,
            "host": "127.0.0.1",
            "http_port": http,
            "grpc_port": grpc,
            "metrics_endpoint": None,
            "grpc_max_message_length": 128 << 20,
        }
        (root / "settings.json").write_text(json.dumps(settings, indent=2))
        env = dict(os.environ, PYTHONPATH=str(model_dir))
        cmd = [str(self.venv / "bin" / "mlserver"), "start", str(root)]
        server = start_server(self.key, cmd, log_path=workdir / "mlserver.log", cwd=root, env=env)
        base = f"http://127.0.0.1:{http}"
        _ready_or_stop(server, f"{base}/v2/models/echo/ready")
        return Running(self.label, server, base, f"127.0.0.1:{grpc}", rest_binary=False)


class TritonPeer(Peer):
    key = "triton"
    label = "Triton (Python backend)"
    version = f"tritonserver from nvidia-pytriton=={PYTRITON_VERSION}, CPU"
    notes = ("Triton: Python-backend echo, 1 instance (KIND_CPU), max_batch_size 0, metrics off.",)
    home = CACHE_DIR / f"triton-{PYTRITON_VERSION}"

    def prepare(self) -> None:
        if not (self.home / "bin" / "tritonserver").exists():
            self._unpack(self._wheel())
        probe = subprocess.run(
            ["/usr/bin/python3.11", "-c", "import numpy"], capture_output=True, check=False
        )
        if probe.returncode != 0:
            apt_install("python3-numpy")  # the Python-backend stub embeds Debian's libpython3.11

    def _wheel(self) -> Path:
        wheels = CACHE_DIR / "wheels"
        pattern = f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"
        found = sorted(wheels.glob(pattern))
        if not found:
            run_quiet(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    f"nvidia-pytriton=={PYTRITON_VERSION}",
                    "-d",
                    str(wheels),
                ],
                timeout=1800,
            )
            found = sorted(wheels.glob(pattern))
        if not found:
            raise SetupError(f"pip download nvidia-pytriton=={PYTRITON_VERSION} produced no wheel")
        return found[-1]

    def _unpack(self, wheel: Path) -> None:
        """Copy bin/, backends/, caches/, the 3.11 stub and the bundled libs out of the wheel."""
        tmp = self.home.with_suffix(".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        prefix = "pytriton/tritonserver/"
        stub = f"{prefix}python_backend_stubs/3.11/triton_python_backend_stub"
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                name = info.filename
                if info.is_dir():
                    continue
                if name == stub:
                    dest = tmp / "backends" / "python" / "triton_python_backend_stub"
                elif name.startswith(prefix) and name[len(prefix) :].split("/")[0] in (
                    "bin",
                    "backends",
                    "caches",
                ):
                    dest = tmp / name[len(prefix) :]
                elif name.startswith("nvidia_pytriton.libs/"):
                    dest = tmp / "libs" / name.split("/", 1)[1]
                else:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                mode = (info.external_attr >> 16) & 0o777
                os.chmod(dest, (mode or 0o644) | stat.S_IRUSR)
        if not (tmp / "bin" / "tritonserver").exists():
            raise SetupError("nvidia-pytriton wheel has no pytriton/tritonserver/bin/tritonserver")
        os.chmod(tmp / "backends" / "python" / "triton_python_backend_stub", 0o755)
        shutil.rmtree(self.home, ignore_errors=True)
        tmp.rename(self.home)

    def start(self, workdir: Path) -> Running:
        http, grpc = free_ports(2)
        repo = workdir / "triton-models"
        (repo / "echo" / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(ASSETS_DIR / "triton" / "config.pbtxt", repo / "echo" / "config.pbtxt")
        shutil.copy(ASSETS_DIR / "triton" / "model.py", repo / "echo" / "1" / "model.py")
        env = dict(os.environ, LD_LIBRARY_PATH=str(self.home / "libs"))
        cmd = triton_command(self.home, repo, http, grpc)
        server = start_server(self.key, cmd, log_path=workdir / "triton.log", cwd=workdir, env=env)
        base = f"http://127.0.0.1:{http}"
        _ready_or_stop(server, f"{base}/v2/models/echo/ready")
        return Running(self.label, server, base, f"127.0.0.1:{grpc}")


class HeadracePeer(Peer):
    """headrace itself: `process` (echo in a model-server process, the default) or `inline`."""

    binary = REPO_DIR / ".venv" / "bin" / "headrace"
    manifests = REPO_DIR / "config" / "samples" / "models"

    def __init__(self, mode: str, workers: int) -> None:
        self.mode = mode
        self.workers = workers
        self.key = f"headrace-{mode}"
        self.label = f"headrace {mode}"
        self.version = f"headrace (this repo), --workers {workers}"

    def prepare(self) -> None:
        if not self.binary.exists():
            raise SetupError(f"{self.binary} does not exist (run `make install`)")
        probe = subprocess.run(
            [str(self.binary), "serve", "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode != 0:
            tail = " | ".join((probe.stderr or probe.stdout).strip().splitlines()[-2:])
            raise SetupError(f"`headrace serve --help` exited {probe.returncode}: {tail}")
        if not (self.manifests / "echo.yaml").exists():
            raise SetupError(f"{self.manifests}/echo.yaml does not exist")

    def _manifest_dir(self, workdir: Path) -> Path:
        """The sample manifests; for inline mode a copy of echo.yaml with parameter inline=true."""
        if self.mode != "inline":
            return self.manifests
        out = workdir / "manifests-inline"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        docs = [d for d in yaml.safe_load_all((self.manifests / "echo.yaml").read_text()) if d is not None]
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind", "Model") == "Model":
                spec = doc.setdefault("spec", {})
                params = [p for p in spec.get("parameters") or [] if p.get("name") != "inline"]
                params.append({"name": "inline", "value": "true"})
                spec["parameters"] = params
                uri = spec.get("storageUri")
                if isinstance(uri, str) and "://" not in uri and not uri.startswith("/"):
                    spec["storageUri"] = str((self.manifests / uri).resolve())  # relative to the original
        (out / "echo.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return out

    def start(self, workdir: Path) -> Running:
        http, grpc, control = free_ports(3)
        data_dir = workdir / f"{self.key}-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(self.binary),
            "serve",
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--control-port",
            str(control),
            "--data-dir",
            str(data_dir),
            "--workers",
            str(self.workers),
            "--load",
            str(self._manifest_dir(workdir)),
            # direct model serving only: no broker competing for the two cores
            "--embedded-broker",
            "none",
        ]
        server = start_server(self.key, cmd, log_path=workdir / f"{self.key}.log", cwd=workdir)
        base = f"http://127.0.0.1:{http}"
        _ready_or_stop(server, f"{base}/v2/models/echo/ready")
        return Running(self.label, server, base, f"127.0.0.1:{grpc}")


def _ready_or_stop(server: Server, url: str) -> None:
    try:
        wait_ready(server, url, READY_TIMEOUT)
    except SetupError:
        server.stop()
        raise


def all_peers(headrace_workers: int) -> list[Peer]:
    grpc_floors: list[Peer] = [GrpcFloorPeer(headrace_workers, "floor-grpc")]
    if headrace_workers != 1:
        grpc_floors.append(GrpcFloorPeer(1, "floor-grpc-1"))
    return [
        FloorPeer(),
        *grpc_floors,
        MLServerPeer(),
        TritonPeer(),
        HeadracePeer("process", headrace_workers),
        HeadracePeer("inline", headrace_workers),
    ]


def triton_command(home: Path, repo: Path, http: int, grpc: int) -> list[str]:
    """The tritonserver command line for a model repository, on loopback, metrics off."""
    return [
        str(home / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={home / 'backends'}",
        f"--cache-directory={home / 'caches'}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--allow-metrics=false",
        "--exit-on-error=true",
    ]
