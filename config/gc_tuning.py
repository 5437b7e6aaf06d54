"""Garbage-collector settings for the serving processes (workers, model servers).

A worker holds ~440,000 objects after start-up (imports, codecs, protobuf classes): with Python's
defaults every full collection scans them all, a 60 ms pause every few thousand requests (measured
with loadtests/bench/hop_micro.py). Freezing what start-up made moves it out of the collector's
sight, and a larger first-generation threshold makes collections rarer; request-path garbage is
freed by reference counting anyway.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000


def settle_heap() -> None:
    """Call once serving starts: what exists now lives as long as the process."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
