"""Deterministic discrete-event simulator: scenarios, device models, workloads, reports.

Typical use: ``run(load_scenario("partitions-40-10").with_overrides(duration=5))`` returns a
``Result`` (``result.workloads[0].iops``, ``result.to_dict()`` for JSON).
"""

from ioband.sim.disk import MODELS, DiskModel, register
from ioband.sim.results import DeviceResult, DiskResult, Result, WorkloadResult
from ioband.sim.scenario import (
    DeviceSpec,
    DiskSpec,
    MessageSpec,
    Scenario,
    ScenarioError,
    WorkloadSpec,
    load_builtin,
    load_scenario,
    open_scenario,
    parse_scenario,
)
from ioband.sim.simulator import ScenarioRefused, Simulator, run

__all__ = [
    "MODELS",
    "DeviceResult",
    "DeviceSpec",
    "DiskModel",
    "DiskResult",
    "DiskSpec",
    "MessageSpec",
    "Result",
    "Scenario",
    "ScenarioError",
    "ScenarioRefused",
    "Simulator",
    "WorkloadResult",
    "WorkloadSpec",
    "load_builtin",
    "load_scenario",
    "open_scenario",
    "parse_scenario",
    "register",
    "run",
]
