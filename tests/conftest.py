"""Pytest fixtures shared by every tier (see support.py for the helpers behind them)."""

from typing import Any

from support import BROKERS_SEEN, serve_factory, served

__all__ = ["serve_factory", "served"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Which embedded broker the servers of this run used (shown under -q too)."""
    if BROKERS_SEEN:
        terminalreporter.write_sep("-", "embedded broker of the served pipelines")
        for line in BROKERS_SEEN:
            terminalreporter.write_line(line)
