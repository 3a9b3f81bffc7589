"""Issue 12's mixed depths on real I/O, defaults only: one client of depth 1, one of 8 and one
of 32 at weights 40/20/10 (the method and bottleneck of ``test_fair_by_default``)."""

from __future__ import annotations

from tests.test_fair_by_default import run_clients
from tests.test_nbd_fairness import (
    WEIGHTS,
    assert_shares,
    bottleneck,  # noqa: F401  (a fixture)
)


def test_depths_1_8_32_hold_the_weights(bottleneck, tmp_path):  # noqa: F811
    ios = run_clients(bottleneck, tmp_path, WEIGHTS, {"g1": 1, "g2": 8, "g3": 32})
    assert_shares(ios)
