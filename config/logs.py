"""Logging set-up for each process role (one format, the role in every line)."""

from __future__ import annotations

import logging


def setup_logging(level: str, role: str) -> None:
    logging.basicConfig(
        force=True,
        level=level.upper(),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
    )
