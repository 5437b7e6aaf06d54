"""Response-time buckets of two significant digits at every scale, so sub-millisecond percentiles show."""

from __future__ import annotations

import math

import locust.stats


def two_significant_digits(response_time: float) -> float:
    """0.4321 ms -> 0.43, 3.456 -> 3.5, 147 -> 150: within 5% at any scale (locust's own rounds below
    100 ms to whole milliseconds, so a 0.3 ms answer counts as 0)."""
    if response_time <= 0:
        return 0.0
    digits = 1 - math.floor(math.log10(response_time))
    return round(response_time, digits)


def install() -> None:
    """Locust looks `bucket_response_time` up in its stats module at every request, to allow this."""
    locust.stats.bucket_response_time = two_significant_digits  # type: ignore[assignment]  # keys may be floats
