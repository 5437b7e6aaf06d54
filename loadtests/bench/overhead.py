"""What recording metrics costs the hot path: this checkout against an earlier commit, same machine,
same run, builds alternating (base, new, base, new, ...), each on a fresh `headrace serve --workers 2`.

    .venv/bin/python -m loadtests.bench.overhead --base 637f01a --rounds 3 --duration 10

Cells: REST to the echo model directly (model server process), and the demo pipeline (echo then sum,
embedded Kafka), wrk -t1 with C connections. The base build is unpacked from git (git archive) into a
temporary folder and run with the same virtualenv (PYTHONPATH puts its sources first).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.bench.loadgen import run_wrk
from loadtests.bench.procs import free_ports, start_server, wait_ready

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "config" / "samples"
BODY = b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
LAUNCH = "import sys; from headrace.cli import main; sys.argv[0] = 'headrace'; main()"
CELLS = (("direct echo", "/v2/models/echo/infer", {}), ("demo pipeline", "/v2/pipelines/demo/infer", {}))


def unpack(commit: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _cpu(pid: int) -> float:
    """User+system seconds of one process."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _workers_cpu(work: Path) -> float:
    children = json.loads((work / "data" / "run" / "children.json").read_text())
    return sum(_cpu(pid) for name, pid in children.items() if name.startswith("worker "))


def one(
    build: str, src: Path, work: Path, args: argparse.Namespace
) -> dict[str, tuple[float, float, float, float]]:
    http, grpc, control, kafka, kctl, metrics = free_ports(6)
    cmd = [
        sys.executable, "-c", LAUNCH, "serve",
        "--http-port", str(http), "--grpc-port", str(grpc), "--control-port", str(control),
        "--kafka-port", str(kafka), "--kafka-controller-port", str(kctl),
        "--data-dir", str(work / "data"), "--workers", "2", "--load", str(SAMPLES / "models"),
    ]  # fmt: skip
    if args.direct_only:
        cmd += ["--embedded-broker", "none"]  # no JVM competing for the cores
    else:
        cmd += ["--load", str(SAMPLES / "pipelines")]
    if build != "base":
        cmd += ["--metrics-port", str(metrics if build == "new" else 0)]
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    server = start_server(build, cmd, log_path=work / "serve.log", env=env)
    out: dict[str, tuple[float, float, float, float]] = {}
    try:
        base = f"http://127.0.0.1:{http}"
        ready = "/v2/models/echo/ready" if args.direct_only else "/v2/pipelines/demo/ready"
        wait_ready(server, base + ready, 180.0)
        (work / "body.json").write_bytes(BODY)
        for name, path, headers in CELLS[:1] if args.direct_only else CELLS:
            url = base + path
            kwargs = {"conns": args.conns, "threads": 1, "timeout_s": 10.0, "workdir": work}
            run_wrk(
                "wrk",
                url,
                work / "body.json",
                {"Content-Type": "application/json", **headers},
                duration=2,
                **kwargs,
            )
            cpu0, workers0 = server.cpu_seconds(), _workers_cpu(work)
            m = run_wrk(
                "wrk", url, work / "body.json", {"Content-Type": "application/json", **headers},
                duration=args.duration, **kwargs,
            )  # fmt: skip
            cpu = (server.cpu_seconds() - cpu0) / args.duration
            workers = (_workers_cpu(work) - workers0) / args.duration
            if m.errors:
                raise SystemExit(f"{build} {name}: {m.errors} errors ({m.error_detail})")
            out[name] = (m.rps, m.p50_ms, cpu, workers)
            print(
                f"  {build:>12} {name:>14}: {m.rps:9.0f} RPS  p50 {m.p50_ms:.2f} ms  server {cpu:.2f} cores"
                f" (workers {workers:.2f}: {workers / m.rps * 1e6:.1f} us/call)",
                flush=True,
            )
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="main", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument(
        "--metrics-off", action="store_true", help="also run this build with --metrics-port 0"
    )
    parser.add_argument("--direct-only", action="store_true", help="only the direct cell, without Kafka")
    args = parser.parse_args()
    builds = ["base", "new"] + (["metrics off"] if args.metrics_off else [])
    results: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {b: {} for b in builds}
    with tempfile.TemporaryDirectory(prefix="hr-overhead-") as tmp:
        root = Path(tmp)
        sources = {"base": unpack(args.base, root / "base"), "new": REPO / "src", "metrics off": REPO / "src"}
        for r in range(args.rounds):
            order = builds if r % 2 == 0 else builds[::-1]
            print(f"round {r + 1}: {', '.join(order)}", flush=True)
            for build in order:
                work = root / f"{build.replace(' ', '-')}-{r}"
                for cell, value in one(build, sources[build], work, args).items():
                    results[build].setdefault(cell, []).append(value)
                time.sleep(1)
    lines = [
        f"Overhead of recording: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, base {args.base}, "
        f"{args.rounds} rounds x {args.duration:g} s, wrk -t1 -c{args.conns}, --workers 2",
        "",
        "| cell | build | RPS (mean, min-max) | p50 ms (mean) | server cores | server CPU us/call "
        "| workers' CPU us/call (min-max) | RPS vs base |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell, _, _ in CELLS[:1] if args.direct_only else CELLS:
        base_rps = statistics.mean(v[0] for v in results["base"][cell])
        for build in builds:
            values = results[build][cell]
            rps = [v[0] for v in values]
            p50 = statistics.mean(v[1] for v in values)
            cores = statistics.mean(v[2] for v in values)
            per_call = statistics.mean(v[2] / v[0] * 1e6 for v in values)
            workers = [v[3] / v[0] * 1e6 for v in values]
            change = (statistics.mean(rps) / base_rps - 1) * 100
            lines.append(
                f"| {cell} | {build} | {statistics.mean(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                f"{p50:.2f} | {cores:.2f} | {per_call:.1f} | {statistics.mean(workers):.1f} "
                f"({min(workers):.1f}-{max(workers):.1f}) | {change:+.1f}% |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "loadtests" / "results" / f"overhead-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}.md"
    with contextlib.suppress(OSError):
        out.write_text(text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
