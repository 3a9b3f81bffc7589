"""Shared test set-up. Real-I/O tests use ``require_real`` so that CI (IOBAND_REQUIRE_REAL=1)
fails, rather than skips, when a prerequisite is missing."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("IOBAND_REQUIRE_REAL") == "1" else "dev")


def require_real(ok: bool, why: str) -> None:
    """Skip (printing why) when a real prerequisite is missing; under CI, fail instead."""
    if ok:
        return
    if os.environ.get("IOBAND_REQUIRE_REAL") == "1":
        pytest.fail(f"prerequisite missing (IOBAND_REQUIRE_REAL=1): {why}")
    pytest.skip(why)
