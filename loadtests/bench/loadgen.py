"""Closed-loop load generators and their output: wrk (REST), h2load and ghz (gRPC)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

GRPC_CALL = "inference.GRPCInferenceService/ModelInfer"
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
_MARK = "BENCHJSON "


@dataclass
class Measurement:
    """One load-generator run against one cell."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    error_detail: str
    client_cpu: float  # cores the load generator used on average (CPU seconds / wall seconds)
    server_cpu: float = 0.0  # same for the server's process group, filled in by the caller
    other_cpu: float = 0.0  # cores busy with anything else on the machine meanwhile (noise)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class LoadError(Exception):
    """The load generator did not produce a usable result."""


def _lua_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: Lua for wrk's per-request timeline: each request carries its own x-request-id, found again in the
#: answer's (a pipeline's answer carries it inside its Kafka key), and is timed with CLOCK_MONOTONIC,
#: Python's time.monotonic(); every thread's lines are written by ``done`` (``thread:get`` copies them)
_TIMELINE_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } hr_timespec;
int clock_gettime(int clk_id, hr_timespec *tp);
]]
local ts = ffi.new("hr_timespec")
local function now() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9 end
local threads = {}
setup = function(thread) table.insert(threads, thread); thread:set("tag", "hr" .. #threads .. "-") end
local counter, sent = 0, {}
lines = {}
request = function()
  counter = counter + 1
  local rid = tag .. counter
  sent[rid] = now()
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["x-request-id"] = rid
  return wrk.format(nil, nil, h, nil)
end
response = function(status, headers, body)
  local t1 = now()
  local rid = string.match(headers["x-request-id"] or "", "hr%d+%-%d+")
  local t0 = rid and sent[rid]
  if t0 then
    sent[rid] = nil
    lines[#lines + 1] = string.format("%.6f %.3f %d", t0, (t1 - t0) * 1000, status)
  end
end
local function write_timeline(path)
  local f = assert(io.open(path, "w"))
  for _, t in ipairs(threads) do
    local l = t:get("lines")
    for i = 1, #l do f:write(l[i], "\\n") end
  end
  f:close()
end
"""


@dataclass(frozen=True, slots=True)
class Answer:
    """One request of a timeline: when it was sent (time.monotonic() seconds), its latency, its status."""

    sent: float
    latency_ms: float
    status: int

    @property
    def answered(self) -> float:
        return self.sent + self.latency_ms / 1000.0


def read_timeline(path: Path) -> list[Answer]:
    out = []
    for line in path.read_text().splitlines():
        sent, latency, status = line.split()
        out.append(Answer(float(sent), float(latency), int(status)))
    return out


def wrk_script(body_path: Path, headers: Mapping[str, str], timeline: Path | None = None) -> str:
    """Lua for wrk: POST the body read from a file, set headers, print exact stats as one JSON line;
    with ``timeline``, also write every answered request's time and latency there (read_timeline)."""
    lines = [
        f'local f = assert(io.open({_lua_quote(str(body_path))}, "rb"))',
        'wrk.method = "POST"',
        'wrk.body = f:read("*a")',
        "f:close()",
    ]
    lines += [f"wrk.headers[{_lua_quote(k)}] = {_lua_quote(v)}" for k, v in headers.items()]
    if timeline is not None:
        lines.append(_TIMELINE_LUA)
    lines.append(
        "done = function(summary, latency, requests)\n"
        + (f"  write_timeline({_lua_quote(str(timeline))})\n" if timeline is not None else "")
        + "  local e = summary.errors\n"
        f'  io.write(string.format("{_MARK}'
        '{\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%.1f,\\"p99_us\\":%.1f,'
        '\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d}\\n",\n'
        "    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),\n"
        "    e.connect, e.read, e.write, e.status, e.timeout))\n"
        "end"
    )
    return "\n".join(lines) + "\n"


def _run_timed(cmd: Sequence[str], timeout: float) -> tuple[int, str, str, float, float]:
    """Run a load generator; return (rc, stdout, stderr, wall seconds, CPU seconds it used)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise LoadError(f"cannot run {cmd[0]}: {exc}") from exc
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            wall,
            usage.ru_utime + usage.ru_stime,
        )


def run_wrk(
    wrk: str,
    url: str,
    body_path: Path,
    headers: Mapping[str, str],
    *,
    conns: int,
    duration: float,
    threads: int,
    timeout_s: float,
    workdir: Path,
    timeline: Path | None = None,
) -> Measurement:
    """wrk closed loop: `conns` connections each with one request in flight, for `duration` seconds;
    with ``timeline``, every answered request's time and latency are written there (read_timeline)."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / f"wrk-{body_path.stem}.lua"
    script.write_text(wrk_script(body_path, headers, timeline))
    cmd = [
        wrk,
        f"-t{max(1, min(threads, conns))}",
        f"-c{conns}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    rc, out, err, wall, cpu = _run_timed(cmd, timeout=duration + timeout_s + 30)
    line = next((ln for ln in out.splitlines() if ln.startswith(_MARK)), None)
    if rc != 0 or line is None:
        raise LoadError(f"wrk exited {rc}: {(err or out).strip()[-300:]}")
    stats = orjson.loads(line[len(_MARK) :])
    errors = {k: int(stats[k]) for k in ("connect", "read", "write", "status", "timeout") if stats[k]}
    secs = stats["duration_us"] / 1e6 or duration
    ok = max(0, int(stats["requests"]) - errors.get("status", 0))
    return Measurement(
        rps=ok / secs,
        p50_ms=stats["p50_us"] / 1000.0,
        p99_ms=stats["p99_us"] / 1000.0,
        requests=int(stats["requests"]),
        errors=sum(errors.values()),
        error_detail=", ".join(f"{k} {v}" for k, v in errors.items()),
        client_cpu=cpu / wall if wall > 0 else 0.0,
    )


def run_ghz(
    ghz: str,
    target: str,
    proto: Path,
    *,
    data_binary: Path,
    conns: int,
    duration: float,
    connections: int,
    cpus: int,
    workdir: Path,
) -> Measurement:
    """ghz closed loop: `conns` concurrent workers spread over `connections` HTTP/2 connections."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        ghz,
        "--insecure",
        f"--proto={proto}",
        f"--call={GRPC_CALL}",
        f"--concurrency={conns}",
        f"--connections={max(1, min(connections, conns))}",
        f"--duration={max(1, round(duration))}s",
        f"--cpus={cpus}",
        "--timeout=60s",
        "--max-recv-message-size=128MB",
        "--max-send-message-size=128MB",
        "--disable-template-functions",
        "--disable-template-data",
        "--format=json",
        "--duration-stop=ignore",  # calls cut off at the end are neither errors nor latency samples
        f"--binary-file={data_binary}",
        target,
    ]
    rc, out, err, wall, cpu = _run_timed(cmd, timeout=duration + 90)
    try:
        report = orjson.loads(out)
    except orjson.JSONDecodeError as exc:
        raise LoadError(f"ghz exited {rc}: {(err or out).strip()[-300:]}") from exc
    return _parse_ghz(report, client_cpu=cpu / wall if wall > 0 else 0.0)


def _parse_ghz(report: dict[str, Any], *, client_cpu: float) -> Measurement:
    statuses: dict[str, int] = report.get("statusCodeDistribution") or {}
    ok = int(statuses.get("OK", 0))
    total = int(report.get("count", 0))
    bad = {k: int(v) for k, v in statuses.items() if k != "OK" and v}
    detail = ", ".join(f"{k} {v}" for k, v in bad.items())
    errs: dict[str, int] = report.get("errorDistribution") or {}
    if errs:
        first = next(iter(errs))
        detail = (detail + "; " if detail else "") + first[:160]
    pct: dict[int, float] = {
        int(p["percentage"]): float(p["latency"]) for p in report.get("latencyDistribution") or []
    }
    secs = float(report.get("total", 0)) / 1e9
    if ok == 0 or secs <= 0:
        raise LoadError(f"ghz: no successful calls ({detail or 'no detail'})")
    return Measurement(
        rps=ok / secs,
        p50_ms=pct.get(50, 0.0) / 1e6,
        p99_ms=pct.get(99, 0.0) / 1e6,
        requests=total,
        errors=total - ok,
        error_detail=detail,
        client_cpu=client_cpu,
    )


def run_h2load(
    h2load: str,
    target: str,
    framed_body: Path,
    *,
    conns: int,
    duration: float,
    threads: int,
    reply_bytes: int,
    workdir: Path,
) -> Measurement:
    """h2load as a gRPC client: `conns` HTTP/2 connections, one ModelInfer stream in flight on each.

    h2load does not read grpc-status trailers, so a call counts as good only by its HTTP status; the
    DATA bytes received are checked against `reply_bytes` (the framed size of a real echo reply) to
    catch trailers-only error replies, which carry no DATA.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "h2load.tsv"
    log.unlink(missing_ok=True)
    cmd = [
        h2load,
        f"--clients={conns}",
        f"--threads={max(1, min(threads, conns))}",
        "--max-concurrent-streams=1",
        f"--duration={max(1, round(duration))}",
        f"--data={framed_body}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--log-file={log}",
        f"http://{target}{GRPC_PATH}",
    ]
    rc, out, err, wall, cpu = _run_timed(cmd, timeout=duration + 90)
    stats = _parse_h2load(out)
    if rc != 0 or stats is None:
        raise LoadError(f"h2load exited {rc}: {(err or out).strip()[-300:]}")
    done, ok, data_bytes, secs = stats
    lat = [
        int(parts[2])
        for parts in (ln.split("\t") for ln in log.read_text().splitlines())
        if parts[1] == "200"
    ]
    if ok == 0 or not lat:
        raise LoadError(f"h2load: no successful calls: {out.strip()[-300:]}")
    errors = done - ok
    detail = f"HTTP non-2xx {errors}" if errors else ""
    expected = reply_bytes + 5
    short = ok - min(ok, data_bytes // expected) if expected > 5 else 0
    if short > max(2, ok // 100):
        errors += short
        detail = (
            detail + ", " if detail else ""
        ) + f"{short} replies without a full echo body (grpc errors?)"
    if ok - short <= 0:
        raise LoadError(f"h2load: no call returned a full echo reply ({detail})")
    lat.sort()
    return Measurement(
        rps=max(0, ok - short) / secs,
        p50_ms=lat[len(lat) // 2] / 1000.0,
        p99_ms=lat[min(len(lat) - 1, (len(lat) * 99) // 100)] / 1000.0,
        requests=done,
        errors=errors,
        error_detail=detail,
        client_cpu=cpu / wall if wall > 0 else 0.0,
    )


def _parse_h2load(out: str) -> tuple[int, int, int, float] | None:
    """(requests done, succeeded, DATA bytes received, seconds) from h2load's summary."""
    done = ok = data = -1
    secs = 0.0
    for line in out.splitlines():
        words = line.replace(",", "").split()
        if line.startswith("finished in"):
            secs = float(words[2].rstrip("s"))
        elif line.startswith("requests:"):
            done, ok = int(words[5]), int(words[7])
        elif line.startswith("traffic:"):
            data = int(line.rsplit("(", 1)[1].split(")")[0])
    if done < 0 or ok < 0 or data < 0 or secs <= 0:
        return None
    return done, ok, data, secs
