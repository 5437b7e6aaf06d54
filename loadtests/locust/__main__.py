"""`python -m loadtests.locust SCENARIO --target HOST[:PORT]`: a locust scenario, headless, then its table."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from loadtests.locust import REPO_DIR, REST_PORT, SCENARIOS_DIR, report, scenario_names

STOP_GRACE_S = 60.0  # beyond --run-time: spawning, stopping users, writing the stats
USAGE_EXAMPLES = """
examples:
  python -m loadtests.locust rest_model --target 127.0.0.1
  python -m loadtests.locust mixed --target 10.0.0.5:9000 --users 32 --run-time 2m
  python -m loadtests.locust grpc_model --target 127.0.0.1 --grpc-host 127.0.0.1:9500 -- --html report.html

Anything after `--` goes to locust as it is (e.g. --csv PREFIX, --html FILE, --processes N).
"""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and what follows `--`, passed to locust as it is."""
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(
        prog="python -m loadtests.locust",
        description=__doc__,
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", choices=scenario_names())
    p.add_argument(
        "--target", required=True, help=f"REST address HOST[:PORT] or URL (port {REST_PORT} if not given)"
    )
    p.add_argument("-u", "--users", type=int, default=10, help="concurrent users (default 10)")
    p.add_argument(
        "-r", "--spawn-rate", type=float, default=None, help="users started per second (default: all at once)"
    )
    p.add_argument("-t", "--run-time", default="30s", help="how long, e.g. 30s, 2m, 1h30m (default 30s)")
    p.add_argument("--grpc-host", default="", help="gRPC HOST:PORT (default: the target's host, port 9500)")
    p.add_argument("--control-url", default="", help="control API URL (default: http://<target's host>:9004)")
    p.add_argument("--model", default="", help="model to call (default echo)")
    p.add_argument("--pipeline", default="", help="pipeline to call (default demo)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON to this file")
    args = p.parse_args(ours)
    if args.users < 1:
        p.error("--users must be at least 1")
    if args.scenario == "load_unload" and args.users < 2:
        p.error("load_unload needs --users 2 or more: one loads and unloads, the others send traffic")
    try:
        args.run_seconds = seconds(args.run_time)
    except ValueError as exc:
        p.error(str(exc))
    return args, extra


def seconds(timespan: str) -> int:
    """Locust's time spans: `90`, `30s`, `2m`, `1h30m`."""
    text = timespan.strip()
    if text.isdigit():
        return int(text)
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or match is None:
        raise ValueError(f"--run-time {timespan!r}: expected e.g. 30s, 2m or 1h30m")
    hours, minutes, secs = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + secs


def rest_url(target: str) -> str:
    """http://HOST:PORT from HOST, HOST:PORT or a URL."""
    parts = urlsplit(target if "://" in target else f"http://{target}")
    if not parts.hostname:
        raise SystemExit(f"--target {target!r}: expected HOST[:PORT] or http://HOST:PORT")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{parts.port or REST_PORT}"


def locust_command(args: argparse.Namespace, extra: list[str], out_dir: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "locust",
        "-f", str(SCENARIOS_DIR / f"{args.scenario}.py"),
        "--headless", "--only-summary", "--loglevel", "WARNING",
        "--host", rest_url(args.target),
        "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate or args.users),
        "--run-time", args.run_time,
        "--json-file", str(out_dir / "stats"),
        "--errors-file", str(out_dir / "errors.json"),
    ]  # fmt: skip
    for option in ("grpc_host", "control_url", "model", "pipeline"):
        if getattr(args, option):
            cmd += [f"--{option.replace('_', '-')}", getattr(args, option)]
    return cmd + extra


def run_locust(cmd: list[str], timeout: float, console: Console) -> int:
    """Locust's exit code; it is stopped (SIGTERM, then SIGKILL) if it outlives ``timeout``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        console.print(f"[red]locust did not finish within {timeout:g} s; stopping it[/red]")
        proc.send_signal(signal.SIGTERM)  # locust writes its stats on SIGTERM
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    except KeyboardInterrupt:  # locust got the Ctrl-C too: let it write its stats, then show them
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(15)
        proc.kill()
        return proc.wait()


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    console = Console(width=max(120, Console().width), highlight=False)
    with tempfile.TemporaryDirectory(prefix="headrace-locust-") as tmp:
        out_dir = Path(tmp)
        code = run_locust(locust_command(args, extra, out_dir), args.run_seconds + STOP_GRACE_S, console)
        summary = report.read(out_dir, args.scenario, rest_url(args.target), args.users, code)
    report.print_summary(summary, console)
    if args.json is not None:
        args.json.write_text(summary.to_json() + "\n")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
