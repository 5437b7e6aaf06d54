"""Errors raised by the shared-memory arenas."""

from __future__ import annotations


class ShmError(Exception):
    """Base class for shared-memory arena failures (bad name, closed arena, misuse by the peer)."""


class StaleReferenceError(ShmError):
    """A reference whose block was freed or reused, or whose range lies outside the block's data."""


class ArenaFullError(ShmError):
    """No room in an arena; ``Arena.alloc`` returns None instead, this is for callers that must fail."""
