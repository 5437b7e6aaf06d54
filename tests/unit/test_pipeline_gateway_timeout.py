"""The pipeline gateway's timeout message names the timeout as the caller set it, not what was left
of it when the call reached the gateway (forwarded, or a millisecond later)."""

from __future__ import annotations

import pytest

from headrace.engine.gateways.pipeline import seconds_text

pytestmark = pytest.mark.timeout(10)


def test_what_is_left_of_a_timeout_reads_as_the_timeout_set() -> None:
    assert seconds_text(1.0) == "1"
    assert seconds_text(0.997) == "1"  # a few ms spent before the gateway
    assert seconds_text(59.998) == "60"
    assert seconds_text(0.25) == "0.25"
    assert seconds_text(2.5) == "2.5"
