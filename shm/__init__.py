"""Shared-memory tensor arenas and the references that cross process boundaries."""
