"""Shared-memory tensor arenas and the references that cross process boundaries."""

from headrace.shm.arena import Arena, Ref, cleanup
from headrace.shm.errors import ArenaFullError, ShmError, StaleReferenceError

__all__ = ["Arena", "ArenaFullError", "Ref", "ShmError", "StaleReferenceError", "cleanup"]
