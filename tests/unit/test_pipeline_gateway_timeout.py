"""The pipeline gateway's timeout message names the timeout as the caller set it, not what was left
of it when the call reached the gateway (forwarded, or a millisecond later)."""

from __future__ import annotations

import pytest

from headrace.engine.gateways.pipeline import _seconds

pytestmark = pytest.mark.timeout(10)


def test_what_is_left_of_a_timeout_reads_as_the_timeout_set() -> None:
    assert _seconds(1.0) == "1"
    assert _seconds(0.997) == "1"  # a few ms spent before the gateway
    assert _seconds(59.998) == "60"
    assert _seconds(0.25) == "0.25"
    assert _seconds(2.5) == "2.5"
