"""Paired A/B of a pipeline's throughput: this checkout and an earlier commit serve at the same time
(each `headrace serve --workers 2` with its own ports and embedded broker) and `wrk` alternates
between them, so the machine's drift from minute to minute falls on both alike.

    .venv/bin/python -m loadtests.bench.paired --base c65237b --pairs 8

The same code with other options on one side: `--base HEAD --new-args '--workers 1'`.

A 3-step echo chain (chain3) at c=64 unless told otherwise; `--all-pipelines` loads the pipeline
bench's set too (chains of 1 to 5 steps and a diamond), whose topics every worker reads. Prints each
pair and the ratio new/base per pair (median, min-max): a ratio near 1 with a spread wider than the
change is noise. Each side's CPU per request (its process group: workers, model servers, broker) is
printed too: on a machine whose neighbours take CPU by the minute it moves less than throughput.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from loadtests.bench.loadgen import run_wrk
from loadtests.bench.overhead import LAUNCH, unpack
from loadtests.bench.pipelines import write_echo_chains
from loadtests.bench.procs import Server, free_ports, start_server, wait_ready

REPO = Path(__file__).resolve().parents[2]
BODY = b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'


def write_manifests(into: Path, all_pipelines: bool) -> tuple[Path, Path]:
    """Echo models and the chains (chain3 only, or chain1..chain5 and a diamond)."""
    models, pipes = into / "models", into / "pipelines"
    models.mkdir(parents=True)
    pipes.mkdir(parents=True)
    write_echo_chains(models, pipes, range(1, 6) if all_pipelines else (3,), diamond=all_pipelines)
    return models, pipes


def start(
    build: str, src: Path, work: Path, manifests: tuple[Path, Path], extra: list[str]
) -> tuple[Server, str]:
    http, grpc, control, kafka, kctl, metrics, internal = free_ports(7)
    cmd = [
        sys.executable, "-c", LAUNCH, "serve", "--workers", "2", "--data-dir", str(work / build),
        "--http-port", str(http), "--grpc-port", str(grpc), "--control-port", str(control),
        "--kafka-port", str(kafka), "--kafka-controller-port", str(kctl),
        "--metrics-port", str(metrics), "--internal-port", str(internal),
        "--load", str(manifests[0]), "--load", str(manifests[1]), *extra,
    ]  # fmt: skip
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    return start_server(build, cmd, log_path=work / f"{build}.log", env=env), f"http://127.0.0.1:{http}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="the commit to compare with")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of load on each first")
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--pipeline", default="chain3")
    parser.add_argument("--all-pipelines", action="store_true")
    parser.add_argument("--base-args", default="", help="more `headrace serve` options for base")
    parser.add_argument("--new-args", default="", help="the same for new (e.g. '--workers 1')")
    args = parser.parse_args()
    extras = {"base": shlex.split(args.base_args), "new": shlex.split(args.new_args)}
    with tempfile.TemporaryDirectory(prefix="headrace-paired-") as tmp:
        work = Path(tmp)
        manifests = write_manifests(work / "manifests", args.all_pipelines)
        srcs = {"base": unpack(args.base, work / "base-tree"), "new": REPO / "src"}
        (work / "body.json").write_bytes(BODY)
        servers: dict[str, tuple[Server, str]] = {}
        try:
            for build, src in srcs.items():
                servers[build] = start(build, src, work, manifests, extras[build])
            for server, base in servers.values():
                wait_ready(server, f"{base}/v2/pipelines/{args.pipeline}/ready", 240.0)

            cpu: dict[str, list[float]] = {"base": [], "new": []}  # ms of CPU per request

            def measure(build: str, seconds: float) -> float:
                server, base = servers[build]
                before = server.cpu_seconds()
                m = run_wrk(
                    "wrk",
                    f"{base}/v2/pipelines/{args.pipeline}/infer",
                    work / "body.json",
                    {"Content-Type": "application/json"},
                    conns=args.conns,
                    duration=seconds,
                    threads=1,
                    timeout_s=10.0,
                    workdir=work,
                )
                if m.errors:
                    raise SystemExit(f"{build}: {m.errors} errors ({m.error_detail})")
                cpu[build].append((server.cpu_seconds() - before) * 1000 / max(1, m.requests))
                return m.rps

            for build in servers:
                measure(build, args.warmup)
            cpu = {"base": [], "new": []}
            rps: dict[str, list[float]] = {"base": [], "new": []}
            for k in range(args.pairs):
                for build in ("base", "new") if k % 2 == 0 else ("new", "base"):
                    rps[build].append(measure(build, args.duration))
                last = (
                    f"base {rps['base'][-1]:8.0f} RPS {cpu['base'][-1]:5.2f} ms CPU/req   "
                    f"new {rps['new'][-1]:8.0f} RPS {cpu['new'][-1]:5.2f} ms CPU/req"
                )
                print(f"pair {k + 1}: {last}", flush=True)
        finally:
            for server, _ in servers.values():
                server.stop()
    ratios = [n / b for n, b in zip(rps["new"], rps["base"], strict=True)]
    costs = [n / b for n, b in zip(cpu["new"], cpu["base"], strict=True)]
    print(
        f"{args.pipeline} c={args.conns}, {args.pairs} pairs: base {statistics.mean(rps['base']):.0f} RPS, "
        f"new {statistics.mean(rps['new']):.0f} RPS; new/base per pair median "
        f"{statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}); CPU per request (the server's processes, "
        f"broker included) new/base median {statistics.median(costs):.3f} "
        f"(min {min(costs):.3f}, max {max(costs):.3f})"
    )


if __name__ == "__main__":
    main()
