"""`python -m loadtests.bench`: headrace against MLServer, Triton and a raw floor, in one run."""

from __future__ import annotations

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
LOADTESTS_DIR = BENCH_DIR.parent
REPO_DIR = LOADTESTS_DIR.parent
CACHE_DIR = LOADTESTS_DIR / ".cache"
RESULTS_DIR = LOADTESTS_DIR / "results"
ASSETS_DIR = BENCH_DIR / "assets"
