"""`python -m loadtests.bench.sharding`: the cost of sharding and of moving units between workers.

1. Placement, simulated (engine.sharding.place, no processes): 100 instances x 16 workers, 1000
   pipelines x 16 partitions. The time of the first placement and of each change (an instance or a
   worker joining or leaving, a pipeline loaded or unloaded, the multiplier changed), the units each
   change moved against the fewest it could have, and the most loaded worker against the average.
2. Rebalance, live: `headrace serve --workers 2` with the embedded Apache Kafka and the `demo`
   pipeline under a constant closed-loop load (wrk); p50/p99 and errors in a steady window, then in
   windows during which a worker joins (SIGTTIN), the newest leaves (SIGTTOU), and the multiplier goes
   to 1 and back. Target: p99 during a rebalance at most 2x the steady p99, zero errors. The p99 is
   wrk's, corrected for coordinated omission (a stall counts as independent users would feel it);
   wrk's per-request timeline also gives the closed-loop p99 of the requests answered from the change
   on, and the slowest of them.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from headrace.engine.sharding import PIPELINE, ShardingConfig, Unit, load_cap, place
from loadtests.bench import REPO_DIR, RESULTS_DIR
from loadtests.bench.__main__ import machine_line
from loadtests.bench.loadgen import Answer, LoadError, Measurement, read_timeline, run_wrk
from loadtests.bench.procs import SetupError, free_ports, post, run_quiet, start_server, wait_ready
from loadtests.bench.tools import ensure_wrk

console = Console(width=160, highlight=False)
HEADRACE = REPO_DIR / ".venv" / "bin" / "headrace"
SAMPLES = REPO_DIR / "config" / "samples"
BODY = b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT64","data":[1,2,3]}]}'
HEADERS = {"Content-Type": "application/json", "Seldon-Model": "demo.pipeline"}


@dataclass
class Change:
    what: str
    seconds: float
    moved: int
    ideal: int  # the fewest units the change could move
    max_over_average: float


@dataclass
class During:
    """The requests of one window answered from its change on (all of a steady window's)."""

    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, answers: list[Answer], since: float) -> During:
        lat = sorted(a.latency_ms for a in answers if a.answered >= since)
        if not lat:
            raise LoadError("no request was answered after the change")
        return cls(len(lat), _rank(lat, 0.50), _rank(lat, 0.99), lat[-1])


def _rank(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Window:
    what: str
    steady: int = 0  # the steady window its p99 is compared with (the placement's own, after a change)
    runs: list[Measurement] = field(default_factory=list)
    during: list[During] = field(default_factory=list)

    def during_p99(self) -> float:
        return statistics.fmean(d.p99_ms for d in self.during)

    def worst_ms(self) -> float:
        return max(d.max_ms for d in self.during)

    def p99(self) -> float:
        return statistics.fmean(r.p99_ms for r in self.runs)

    def p50(self) -> float:
        return statistics.fmean(r.p50_ms for r in self.runs)

    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    def requests(self) -> int:
        return sum(r.requests for r in self.runs)


def _spread(placement: dict[Unit, str], pool: list[str]) -> float:
    loads = collections.Counter(dict.fromkeys(pool, 0))
    loads.update(placement.values())
    return max(loads.values()) / (len(placement) / len(pool))


def simulate(instances: int, workers: int, pipelines: int, partitions: int) -> tuple[float, list[Change]]:
    """The first placement's seconds, then each change (applied to the placement in force)."""
    pool = [f"inst{i:03d}/{w}" for i in range(instances) for w in range(workers)]
    resources = [(PIPELINE, f"pipeline-{p:04d}") for p in range(pipelines)]
    config = ShardingConfig(partitions=partitions)
    t0 = time.perf_counter()
    current = place(pool, resources, config)
    first = time.perf_counter() - t0
    units = len(current)
    joined = [*pool, *(f"inst999/{w}" for w in range(workers))]
    half = ShardingConfig(partitions=partitions, multiplier=partitions // 2)
    moved_out = units * workers // (len(pool) + workers)
    one = units // (len(pool) + 1)
    changes: list[tuple[str, list[str], list[tuple[str, str]], ShardingConfig, int]] = [
        (f"an instance joins (+{workers} workers)", joined, resources, config, moved_out),
        ("that instance leaves", pool, resources, config, moved_out),
        ("a worker joins", [*pool, "inst000/99"], resources, config, one),
        ("that worker leaves", pool, resources, config, one),
        ("a pipeline is loaded", pool, [*resources, (PIPELINE, "pipeline-new")], config, 0),
        ("it is unloaded", pool, resources, config, 0),
        (f"maxShardCountMultiplier {partitions} -> {half.shards}", pool, resources, half, 0),
        (f"maxShardCountMultiplier {half.shards} -> {partitions}", pool, resources, config, 0),
    ]
    out = []
    for what, members, res, cfg, ideal in changes:
        t0 = time.perf_counter()
        after = place(members, res, cfg, previous=current)
        took = time.perf_counter() - t0
        moved = sum(1 for u, w in current.items() if after.get(u, w) != w)
        if "Multiplier" in what:
            ideal = _multiplier_ideal(current, after)
        out.append(Change(what, took, moved, ideal, _spread(after, members)))
        current = after
    cap = load_cap(config, len(pool), pipelines)
    console.print(f"  load cap {cap} units, average {units / len(pool):.1f}")
    return first, out


def _multiplier_ideal(before: dict[Unit, str], after: dict[Unit, str]) -> int:
    """The fewest moves for the new spread, given the workers each resource ends up on: its units on
    workers it left must move, and the workers it gained must get theirs."""
    was: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    now: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for unit, worker in before.items():
        was[unit.resource][worker] += 1
    for unit, worker in after.items():
        now[unit.resource][worker] += 1
    total = 0
    for resource, counts in now.items():
        old = was[resource]
        leaving = sum(n for w, n in old.items() if w not in counts)
        arriving = sum(n for w, n in counts.items() if w not in old)
        total += max(leaving, arriving)
    return total


class Live:
    """One headrace serve under a constant load; windows of load around a change."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.wrk = ensure_wrk()
        self.body = work / "body.json"
        self.body.write_bytes(BODY)

    def run(self) -> list[Window]:
        http, grpc, control, kafka, kctl = free_ports(5)
        cmd = [
            str(HEADRACE), "serve",
            "--http-port", str(http), "--grpc-port", str(grpc), "--control-port", str(control),
            "--kafka-port", str(kafka), "--kafka-controller-port", str(kctl),
            "--data-dir", str(self.work / "data"), "--workers", "2",
            "--load", str(SAMPLES / "models"), "--load", str(SAMPLES / "pipelines"),
        ]  # fmt: skip
        server = start_server("headrace", cmd, log_path=self.work / "headrace.log", cwd=self.work)
        self.control = f"http://127.0.0.1:{control}"
        self.url = f"http://127.0.0.1:{http}/v2/models/demo/infer"
        self.pid = server.proc.pid
        # each window: what it is, the steady window it is compared with, the change made in it
        plan: list[tuple[str, int, Callable[[], None] | None]] = [
            ("steady", 0, None),
            ("a worker joins", 0, lambda: os.kill(self.pid, signal.SIGTTIN)),
            ("the newest worker leaves", 0, lambda: os.kill(self.pid, signal.SIGTTOU)),
            ("maxShardCountMultiplier 8 -> 1", 4, lambda: self._multiplier(1)),
            ("steady at multiplier 1", 4, None),
            ("maxShardCountMultiplier 1 -> 8", 0, lambda: self._multiplier(0)),
        ]
        windows = [Window(what, steady) for what, steady, _ in plan]
        try:
            wait_ready(server, f"http://127.0.0.1:{http}/v2/pipelines/demo/ready", 180.0)
            self._settled()
            status, reply = post(self.url, BODY, HEADERS)
            if status != 200:
                raise SetupError(f"demo answered {status}: {reply[:200]!r}")
            self._load(self.args.warmup)  # warm up (the broker's JIT, the clients)
            for _ in range(self.args.repeats):
                for window, (_, _, change) in zip(windows, plan, strict=True):
                    measured, during = self._around(change)
                    window.runs.append(measured)
                    window.during.append(during)
        finally:
            server.stop()
            if self.args.keep_log is not None:
                shutil.copyfile(self.work / "headrace.log", self.args.keep_log)
        return windows

    def _multiplier(self, n: int) -> None:
        """The control API's PUT /v1/sharding, from this process: starting `headrace sharding set`
        (a Python process, ~0.3 s of CPU) inside the window slowed every caller on two cores, and
        was counted as the rebalance's cost."""
        body = orjson.dumps({"maxShardCountMultiplier": n})
        status, reply = post(f"{self.control}/v1/sharding", body, {"Content-Type": "application/json"},
                             timeout=60, method="PUT")  # fmt: skip
        if status != 200:
            raise SetupError(f"setting the multiplier to {n} answered {status}: {reply[:200]!r}")

    def _settled(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = run_quiet([str(HEADRACE), "sharding", "status", "-o", "json", "--control", self.control],
                            timeout=30)  # fmt: skip
            status = orjson.loads(out)
            if status["moving"] == 0 and all(w["active"] == w["units"] for w in status["workers"]):
                return
            time.sleep(0.2)
        raise SetupError("the units did not settle")

    def _load(self, seconds: float, timeline: Path | None = None) -> Measurement:
        return run_wrk(self.wrk, self.url, self.body, HEADERS, conns=self.args.conns, duration=seconds,
                       threads=1, timeout_s=30.0, workdir=self.work, timeline=timeline)  # fmt: skip

    def _around(self, change: Callable[[], None] | None) -> tuple[Measurement, During]:
        """A load window with the change (if any) made a second in; the units settle within it. The
        requests answered from the change on are those "during" the rebalance (a steady window's: all)."""
        timeline = self.work / "timeline.txt"
        if change is None:
            began = time.monotonic()
            return self._load(self.args.duration, timeline), During.of(read_timeline(timeline), began)
        changed: list[float] = []

        def make() -> None:
            changed.append(time.monotonic())
            change()

        timer = threading.Timer(1.0, make)
        timer.start()
        try:
            m = self._load(self.args.duration, timeline)
        finally:
            timer.join()
        self._settled()
        return m, During.of(read_timeline(timeline), changed[0])


def report(args: argparse.Namespace, first: float, changes: list[Change], windows: list[Window]) -> str:
    lines = [
        f"# Sharding benchmark {datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}",
        "",
        f"Machine: {machine_line()}",
        "",
        f"## Placement, simulated: {args.instances} instances x {args.workers} workers, "
        f"{args.pipelines} pipelines x {args.partitions} partitions",
        "",
        f"First placement: {first * 1000:,.0f} ms for {args.pipelines * args.partitions:,} units.",
        "",
        "| change | time ms | units moved | ideal: an even share (or what the spread needs) | max / avg |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c.what} | {c.seconds * 1000:,.0f} | {c.moved:,} | {c.ideal:,} | {c.max_over_average:.2f} |"
        for c in changes
    ]
    if not windows:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"## Rebalance under load: demo pipeline (echo then sum), wrk c={args.conns}, "
        f"{args.duration:g} s windows x {args.repeats}",
        "",
        "The change is made a second into its window and compared with the steady window of the placement",
        "it leads to (a multiplier of 1 spreads each resource over one worker: on one host a request's",
        "steps then cross workers, which is slower in itself). p50 and p99 are wrk's, which corrects for",
        "coordinated omission: a request that took n times the average interval between a connection's",
        "requests also counts the requests a client sending at that rate would have sent meanwhile, so",
        "one stall weighs as it would for independent users (the target is on this p99; per run: each",
        "repeat against the steady window of its own repeat). The closed-loop columns count only the",
        "requests sent (wrk's per-request timeline), answered from the change on; slowest: the longest",
        "of them.",
        "",
        "| window | requests | errors | p50 ms | p99 ms | p99 / steady | per run "
        "| closed loop from the change on: p99 ms | / steady | slowest ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in windows:
        if not w.runs:
            continue
        steady = windows[w.steady]
        ratio = w.p99() / steady.p99() if steady.runs and steady.p99() else float("nan")
        runs = " / ".join(f"{r.p99_ms / s.p99_ms:.2f}" for r, s in zip(w.runs, steady.runs, strict=False))
        closed = w.during_p99() / steady.during_p99() if steady.during else float("nan")
        lines.append(
            f"| {w.what} | {w.requests():,} | {w.errors()} | {w.p50():.2f} | {w.p99():.2f} | {ratio:.2f}x "
            f"| {runs} | {w.during_p99():.2f} | {closed:.2f}x | {w.worst_ms():.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.sharding", description=__doc__)
    p.add_argument("--instances", type=int, default=100)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--pipelines", type=int, default=1000)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--conns", type=int, default=8, help="wrk connections for the live part (default 8)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per load window (default 8)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", default="placement,live", help="placement,live")
    p.add_argument("--keep-log", type=Path, help="copy the live server's log here (handover and take phases)")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    first, changes, windows = 0.0, [], []
    if "placement" in only:
        console.print("[bold]placement (simulated)[/bold]")
        first, changes = simulate(args.instances, args.workers, args.pipelines, args.partitions)
        for c in changes:
            console.print(
                f"  {c.what:<36} {c.seconds * 1000:8,.0f} ms  moved {c.moved:6,} (ideal {c.ideal:,})"
            )
    if "live" in only:
        console.print("[bold]rebalance under load (live)[/bold]")
        with tempfile.TemporaryDirectory(prefix="headrace-sharding-") as tmp:
            try:
                windows = Live(args, Path(tmp)).run()
            except (SetupError, LoadError) as exc:
                console.print(f"[red]live part failed: {exc}[/red]")
                return 1
        table = Table("window", "requests", "errors", "p50 ms", "p99 ms", "p99 from the change on", "slowest")
        for w in windows:
            if w.runs:
                table.add_row(
                    w.what, f"{w.requests():,}", str(w.errors()), f"{w.p50():.2f}", f"{w.p99():.2f}",
                    f"{w.during_p99():.2f}", f"{w.worst_ms():.0f}",
                )  # fmt: skip
        console.print(table)
    text = report(args, first, changes, windows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS_DIR / f"sharding-{stamp}.md").write_text(text)
    raw = {"changes": [asdict(c) for c in changes], "first_s": first,
           "windows": [{"what": w.what, "runs": [r.to_json() for r in w.runs],
                        "during": [asdict(d) for d in w.during]} for w in windows]}  # fmt: skip
    (RESULTS_DIR / f"sharding-{stamp}.json").write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))
    console.print(f"results: loadtests/results/sharding-{stamp}.md")
    errors = sum(w.errors() for w in windows)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
