"""`python -m loadtests.bench`: install peers and load generators, run every cell, print and save a table."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from loadtests.bench import CACHE_DIR, RESULTS_DIR, checks
from loadtests.bench import proto as proto_check
from loadtests.bench.loadgen import LoadError, Measurement, run_ghz, run_h2load, run_wrk
from loadtests.bench.payloads import PAYLOADS, grpc_frame, grpc_request, rest_body
from loadtests.bench.peers import Peer, Running, all_peers
from loadtests.bench.procs import SetupError, system_busy_seconds
from loadtests.bench.report import Cell, CellResult, Report
from loadtests.bench.tools import ensure_ghz, ensure_h2load, ensure_wrk, tool_versions

JSON_LIMIT = 1 << 20  # servers without the binary extension get JSON bodies up to this tensor size

console = Console(width=220, highlight=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    p.add_argument("--repeats", type=int, default=2, help="runs per cell, each on a fresh server (default 2)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each run")
    p.add_argument(
        "--only",
        default="",
        help="comma list of servers: floor (= floor, floor-grpc, floor-grpc-1), mlserver, triton, "
        "headrace (= headrace-process,headrace-inline)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 3 s, 1 repeat, 1 s warm-up")
    p.add_argument("--conns", default="16,64", help="connections for the small request (default 16,64)")
    p.add_argument("--large-conns", type=int, default=4, help="connections for 1 MiB / 16 MiB tensors")
    p.add_argument("--payloads", default="small,1MiB,16MiB", help="subset of small,1MiB,16MiB")
    p.add_argument("--protos", default="rest,grpc", help="subset of rest,grpc")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="headrace --workers")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (default 1, as in peers.md)")
    p.add_argument(
        "--grpc-client",
        choices=("h2load", "ghz"),
        default="h2load",
        help="gRPC load generator: h2load (default; about 1/3 of ghz's CPU per call) or ghz",
    )
    p.add_argument("--ghz-cpus", type=int, default=os.cpu_count() or 2, help="ghz --cpus")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the .md and .json results go")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 3.0, 1, 1.0
    return args


def machine_line() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    system = f"{platform.system()} {platform.release()}"
    return f"{model}, {cores} cores, Python {platform.python_version()}, {system}"


def select(peers: list[Peer], only: str) -> list[Peer]:
    if not only:
        return peers
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [p for p in peers if any(p.key == w or p.key.startswith(w + "-") for w in wanted)]
    unknown = [w for w in wanted if not any(p.key == w or p.key.startswith(w + "-") for p in peers)]
    if unknown:
        raise SystemExit(f"--only: unknown server(s) {unknown}; known: {[p.key for p in peers]}")
    return chosen


def cells(args: argparse.Namespace) -> list[Cell]:
    protos = [x.strip() for x in args.protos.split(",") if x.strip()]
    payloads = [x.strip() for x in args.payloads.split(",") if x.strip()]
    bad = [x for x in payloads if x not in PAYLOADS] + [x for x in protos if x not in ("rest", "grpc")]
    if bad:
        raise SystemExit(f"unknown payload/proto {bad}")
    small_conns = [int(c) for c in args.conns.split(",") if c.strip()]
    out = []
    for proto in protos:
        for payload in payloads:
            for conns in small_conns if payload == "small" else [args.large_conns]:
                out.append(Cell(proto, payload, conns))
    return out


class Bench:
    """Runs every cell of every available server, `repeats` times, filling in a Report."""

    def __init__(self, args: argparse.Namespace, report: Report, work: Path) -> None:
        self.args = args
        self.report = report
        self.work = work
        self.wrk: str | None = None
        self.grpc_tool: str | None = None
        self.cells = cells(args)
        self.start_failures: dict[str, list[str]] = {}

    def tools(self) -> None:
        """Install the load generators; a missing one skips its cells with a note."""
        if any(c.proto == "rest" for c in self.cells):
            try:
                self.wrk = ensure_wrk()
            except SetupError as exc:
                self.report.notes.append(f"wrk not available, REST cells skipped: {exc}")
        if any(c.proto == "grpc" for c in self.cells):
            client = self.args.grpc_client
            try:
                self.grpc_tool = ensure_ghz() if client == "ghz" else ensure_h2load()
            except SetupError as exc:
                self.report.notes.append(f"{client} not available, gRPC cells skipped: {exc}")
            if client == "ghz":
                try:
                    problems = proto_check.check()
                except SetupError as exc:
                    problems = [f"not checked: {exc}"]
                self.report.notes.append(
                    f"oip.proto vs tritonclient: {problems}"
                    if problems
                    else "ghz schema oip.proto matches tritonclient's inference descriptors."
                )
            else:
                self.report.notes.append(
                    "gRPC load from h2load: gRPC-framed ModelInferRequest bytes over h2c, one stream in "
                    "flight per connection. h2load does not read grpc-status, so every cell first makes "
                    "a real ModelInfer call (grpcio) whose echo is checked, and under load a reply only "
                    "counts if its DATA bytes match the size of that echo reply."
                )
        self.report.versions["load generators"] = tool_versions(
            self.wrk, self.grpc_tool, self.args.grpc_client
        )

    def run_peer(self, peer: Peer, rep: int) -> None:
        workdir = self.work / f"{peer.key}-{rep}"
        workdir.mkdir(parents=True, exist_ok=True)
        console.print(f"[bold]run {rep + 1}/{self.args.repeats}: starting {peer.label}[/bold]")
        try:
            running = peer.start(workdir)
        except SetupError as exc:
            console.print(f"[yellow]  {peer.key}: did not start: {exc}[/yellow]")
            self.start_failures.setdefault(peer.key, []).append(f"run {rep + 1}: {exc}")
            return
        try:
            for cell in self.cells:
                self.run_cell(peer, running, cell, workdir)
        finally:
            running.server.stop()

    def run_cell(self, peer: Peer, running: Running, cell: Cell, workdir: Path) -> None:
        served = running.http_base if cell.proto == "rest" else running.grpc_target
        tool = self.wrk if cell.proto == "rest" else self.grpc_tool
        if served is None or tool is None:
            return  # no such endpoint here (REST floor: no gRPC; gRPC floors: no REST) or no load generator
        res = self.report.result(peer.key, running.label, cell)
        if cell.proto == "rest":
            load = self._rest_load(running, cell, res, workdir)
        else:
            load = self._grpc_load(running, cell, res, workdir)
        if load is None:
            return
        console.print(f"  {cell.title():<22} {running.label} ... ", end="")
        try:
            if self.args.warmup > 0:
                load(self.args.warmup)
            cpu0, busy0 = running.server.cpu_seconds(), system_busy_seconds()
            t0 = time.monotonic()
            m = load(self.args.duration)
            wall = time.monotonic() - t0
            if wall > 0:
                m.server_cpu = (running.server.cpu_seconds() - cpu0) / wall
                busy = (system_busy_seconds() - busy0) / wall
                m.other_cpu = max(0.0, busy - m.server_cpu - m.client_cpu)
        except (LoadError, OSError, ValueError) as exc:
            alive = "" if running.server.alive() else f" (server exited: {running.server.log_tail(3)})"
            res.failures.append(f"{exc}{alive}")
            console.print(f"[red]failed: {exc}{alive}[/red]")
            return
        res.runs.append(m)
        err = f", {m.errors} errors" if m.errors else ""
        console.print(f"{m.rps:,.0f} rps, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms{err}")

    def _rest_load(
        self, running: Running, cell: Cell, res: CellResult, workdir: Path
    ) -> Callable[[float], Measurement] | None:
        assert running.http_base is not None and self.wrk is not None
        wrk = self.wrk
        nbytes = PAYLOADS[cell.payload]
        if nbytes > JSON_LIMIT and not running.rest_binary:
            res.encoding = "json"
            res.skipped = "skipped: no binary tensor extension; this size as JSON is not comparable"
            return None
        body = rest_body(cell.payload, binary=running.rest_binary, out_dir=self.work / "bodies")
        res.encoding = body.encoding
        url = f"{running.http_base}/v2/models/{running.model}/infer"
        problem = checks.rest_echo(url, body, nbytes)
        if problem:
            res.failures.append(problem)
            console.print(f"  {cell.title():<22} {running.label} ... [red]{problem}[/red]")
            return None

        def load(seconds: float) -> Measurement:
            return run_wrk(
                wrk,
                url,
                body.path,
                body.headers,
                conns=cell.conns,
                duration=seconds,
                threads=self.args.wrk_threads,
                timeout_s=2.0 if nbytes == 0 else 30.0,
                workdir=workdir,
            )

        return load

    def _grpc_load(
        self, running: Running, cell: Cell, res: CellResult, workdir: Path
    ) -> Callable[[float], Measurement] | None:
        assert running.grpc_target is not None and self.grpc_tool is not None
        tool, target = self.grpc_tool, running.grpc_target
        nbytes = PAYLOADS[cell.payload]
        res.encoding = "raw" if nbytes else "fp32"
        message = grpc_request(running.model, nbytes)
        reply_bytes, problem = checks.grpc_echo(target, message, nbytes)
        if problem:
            res.failures.append(problem)
            console.print(f"  {cell.title():<22} {running.label} ... [red]{problem}[/red]")
            return None
        bodies = self.work / "bodies"
        bodies.mkdir(parents=True, exist_ok=True)
        raw = bodies / f"grpc-{running.model}-{cell.payload}.pb"
        framed = bodies / f"grpc-{running.model}-{cell.payload}.grpc"
        if not raw.exists():
            raw.write_bytes(message)
            framed.write_bytes(grpc_frame(message))
        if self.args.grpc_client == "ghz":

            def load(seconds: float) -> Measurement:
                return run_ghz(
                    tool,
                    target,
                    proto_check.PROTO,
                    data_binary=raw,
                    conns=cell.conns,
                    duration=seconds,
                    connections=cell.conns,
                    cpus=self.args.ghz_cpus,
                    workdir=workdir,
                )

            return load

        def load_h2(seconds: float) -> Measurement:
            return run_h2load(
                tool,
                target,
                framed,
                conns=cell.conns,
                duration=seconds,
                threads=self.args.wrk_threads,
                reply_bytes=reply_bytes,
                workdir=workdir,
            )

        return load_h2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peers = select(all_peers(args.workers), args.only)
    grpc_client = (
        f"ghz --cpus {args.ghz_cpus}, connections = concurrency"
        if args.grpc_client == "ghz"
        else f"h2load -t{args.wrk_threads}, one stream in flight per connection"
    )
    config = (
        f"{args.duration:g} s per run after {args.warmup:g} s warm-up, "
        f"{args.repeats} repeat(s) on fresh servers; "
        f"REST: wrk -t{args.wrk_threads}; gRPC: {grpc_client}; "
        f"headrace --workers {args.workers}"
    )
    report = Report(machine=machine_line(), config=config, peers=[(p.key, p.label) for p in peers])
    report.notes += [
        "Closed loop: each connection keeps one request in flight. Load generator and server share the "
        "same cores; 'CPU cl/srv/other' is the cores used on average by the load generator, the server "
        "(its whole process group) and everything else on the machine (noise from other work).",
        "Ratios compare mean RPS in the same cell of this run; spread is (max - min) / mean over repeats.",
        "% floor: REST cells against the REST floor (uvloop + httptools + orjson, 1 process); gRPC cells "
        f"against the gRPC floor (grpc.aio ModelInfer echo on uvloop, {args.workers} processes on one "
        "SO_REUSEPORT port, same grpcio and protobuf classes as headrace): the ceiling of any grpcio-aio "
        "server on this machine. The 1-process gRPC floor shows the per-process ceiling.",
        "Body: json = JSON data; binary = REST binary tensor extension (Inference-Header-Content-Length); "
        "fp32 = gRPC contents.fp32_contents; raw = gRPC raw_input_contents. Replies come back the same way.",
    ]
    console.print(report.machine)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=CACHE_DIR))
    bench = Bench(args, report, work)
    bench.tools()
    ready: list[Peer] = []
    for peer in peers:
        console.print(f"[bold]preparing {peer.key}[/bold] ({peer.version})")
        try:
            peer.prepare()
        except SetupError as exc:
            console.print(f"[yellow]  {peer.key}: not available: {exc}[/yellow]")
            report.unavailable[peer.key] = str(exc)
            continue
        report.versions[peer.key] = peer.version
        report.notes += list(peer.notes)
        ready.append(peer)
    try:
        for rep in range(args.repeats):
            for peer in ready:
                bench.run_peer(peer, rep)
    except KeyboardInterrupt:
        report.notes.append("interrupted: partial results")
    for key, failures in bench.start_failures.items():
        if any(peer == key and res.runs for (peer, _), res in report.results.items()):
            report.notes += [f"{key} did not start in {f}" for f in failures]
        else:
            report.unavailable[key] = failures[0].split(": ", 1)[1]
    console.print()
    report.print(console)
    md, js = report.write(args.out, "-quick" if args.quick else "")
    console.print(f"written: {md} and {js.name}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
