"""Policy registry: adding a policy is one class in this package and one line here."""

from __future__ import annotations

from ioband.policies.base import R_BLOCK, R_OK, R_YIELD, Policy
from ioband.policies.mclock import MclockPolicy
from ioband.policies.range_bw import RangeBwPolicy
from ioband.policies.weight import DefaultPolicy, WeightIosizePolicy, WeightPolicy

POLICIES: dict[str, type[Policy]] = {
    "default": DefaultPolicy,
    "weight": WeightPolicy,
    "weight-iosize": WeightIosizePolicy,
    "range-bw": RangeBwPolicy,
    "mclock": MclockPolicy,
}

__all__ = ["POLICIES", "R_BLOCK", "R_OK", "R_YIELD", "Policy"]
