"""Deterministic discrete-event simulator: scenarios, device models, workloads, reports."""

from ioband.sim.disk import MODELS, DiskModel, register
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

__all__ = [
    "MODELS",
    "DeviceSpec",
    "DiskModel",
    "DiskSpec",
    "MessageSpec",
    "Scenario",
    "ScenarioError",
    "WorkloadSpec",
    "load_builtin",
    "load_scenario",
    "open_scenario",
    "parse_scenario",
    "register",
]
