"""Locust scenarios against a running headrace, and `python -m loadtests.locust`, their headless runner."""

from __future__ import annotations

from pathlib import Path

LOCUST_DIR = Path(__file__).resolve().parent
SCENARIOS_DIR = LOCUST_DIR / "scenarios"
REPO_DIR = LOCUST_DIR.parent.parent
REST_PORT, GRPC_PORT, CONTROL_PORT = 9000, 9500, 9004  # headrace serve's defaults


def scenario_names() -> list[str]:
    """The scenarios, one locustfile each in `scenarios/`."""
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.py") if not p.name.startswith("_"))
