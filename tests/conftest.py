"""Pytest fixtures shared by every tier (see support.py for the helpers behind them)."""

from support import serve_factory, served

__all__ = ["serve_factory", "served"]
