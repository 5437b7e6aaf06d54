"""Load generators the harness installs itself, idempotently: wrk, h2load (Debian), ghz (Go proxy)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from loadtests.bench import CACHE_DIR
from loadtests.bench.procs import SetupError, run_quiet

GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz"
GHZ_VERSIONS = ("v0.120.0", "latest")  # v0.120.0 resolves on the Go module proxy; latest as a fallback
BIN_DIR = CACHE_DIR / "bin"

_apt_updated = False


def apt_install(*packages: str) -> None:
    """`apt-get install -y` (running `apt-get update` once per bench run first)."""
    global _apt_updated
    if shutil.which("apt-get") is None:
        raise SetupError(f"no apt-get to install {' '.join(packages)}")
    if os.geteuid() != 0:
        raise SetupError(f"not root: install {' '.join(packages)} with apt-get first")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        run_quiet(["apt-get", "update"], timeout=600, env=env)
        _apt_updated = True
    run_quiet(["apt-get", "install", "-y", "-q", *packages], timeout=900, env=env)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        apt_install("wrk")
        found = shutil.which("wrk")
    if found is None:
        raise SetupError("wrk still missing after apt-get install wrk")
    return found


def ensure_h2load() -> str:
    """h2load (Debian's nghttp2-client): a C HTTP/2 load generator, used here as a gRPC client."""
    found = shutil.which("h2load")
    if found is None:
        apt_install("nghttp2-client")
        found = shutil.which("h2load")
    if found is None:
        raise SetupError("h2load still missing after apt-get install nghttp2-client")
    return found


def ensure_ghz() -> str:
    ghz = BIN_DIR / "ghz"
    if ghz.exists():
        return str(ghz)
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise SetupError("no `go` toolchain to `go install` ghz")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOBIN=str(BIN_DIR))
    errors = []
    for version in GHZ_VERSIONS:
        try:
            run_quiet([go, "install", f"{GHZ_MODULE}@{version}"], timeout=900, env=env)
        except SetupError as exc:
            errors.append(str(exc))
            continue
        if ghz.exists():
            return str(ghz)
    raise SetupError("go install ghz failed: " + "; ".join(errors))


def tool_versions(wrk: str | None, grpc_tool: str | None, grpc_client: str) -> str:
    parts = []
    if wrk:
        out = _probe([wrk, "-v"])
        parts.append(out.splitlines()[0].split(" [")[0] if out else "wrk")
    if grpc_tool and grpc_client == "ghz":
        parts.append(f"ghz {GHZ_VERSIONS[0]}")
    elif grpc_tool:
        out = _probe([grpc_tool, "--version"])
        parts.append(out.strip() or "h2load")
    return ", ".join(parts)


def _probe(cmd: list[str]) -> str:
    """Output of a version probe; wrk -v exits 1, so the exit status is ignored."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout or proc.stderr
