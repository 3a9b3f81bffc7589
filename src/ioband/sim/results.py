"""What a simulation run returns. Latencies are in seconds, rates per second of active time."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ioband.sim.scenario import Scenario


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100) of already sorted values; None when empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(p / 100.0 * n))
    return sorted_values[min(rank, n) - 1]


@dataclass
class WorkloadResult:
    name: str
    device: str
    disk: str
    pattern: str
    processes: int
    block_size: int
    active_time: float  # seconds the workload was allowed to submit (start..stop within duration)
    submitted: int  # requests submitted
    ios: int  # requests completed within the simulated time
    bytes: int
    reads: int
    writes: int
    read_bytes: int
    write_bytes: int
    iops: float
    mbps: float  # 10**6 bytes per second
    latency_p50: float | None  # submit -> completion
    latency_p99: float | None
    latency_p999: float | None
    latency_mean: float | None
    latency_max: float | None
    delay_p50: float | None  # submit -> issued to the disk: the time spent inside ioband
    delay_p99: float | None
    delay_p999: float | None
    timeline_ios: list[int] = field(default_factory=list)  # completions per interval
    timeline_bytes: list[int] = field(default_factory=list)
    # Seconds the disk spent serving this workload's completed requests (slot-seconds on a
    # parallel model): its share of the disk time.
    disk_time: float = 0.0

    @property
    def kibps(self) -> float:
        """KiB/s: the unit of range-bw bands."""
        return self.bytes / 1024 / self.active_time if self.active_time > 0 else 0.0


@dataclass
class DeviceResult:
    name: str
    disk: str
    table: str  # the dmsetup table line, without the "NAME: " prefix
    status: str  # the dmsetup status line, without the "NAME: " prefix
    ios: int  # completed requests of the workloads on this device
    bytes: int


@dataclass
class DiskResult:
    name: str
    model: str
    ios: int
    bytes: int
    iops: float
    mbps: float
    utilization: float  # mean fraction of the queue_depth slots that were busy


@dataclass
class GroupResult:
    """One scheduler group (``device``, group ``id``; -1 is the device's default group) and the
    completion times of every workload whose requests it served (not part of the JSON)."""

    device: str
    id: int
    times: dict[str, array] = field(default_factory=dict)  # workload -> completion times
    block_size: dict[str, int] = field(default_factory=dict)  # workload -> bytes per request

    @property
    def key(self) -> str:
        """``ioband1`` for a default group, ``ioband1:1000`` for an attached one."""
        return self.device if self.id == -1 else f"{self.device}:{self.id}"

    @property
    def ios(self) -> int:
        return sum(len(t) for t in self.times.values())

    @property
    def bytes(self) -> int:
        return sum(len(t) * self.block_size[w] for w, t in self.times.items())


@dataclass
class Result:
    scenario: Scenario
    duration: float
    workloads: list[WorkloadResult]
    devices: dict[str, DeviceResult]
    disks: dict[str, DiskResult]
    events: int  # events processed by the loop
    requests: int  # requests submitted to the engine
    wall_time: float = field(default=0.0, compare=False)  # not part of the (deterministic) output
    groups: list[GroupResult] = field(default_factory=list)
    metrics: dict[str, Any] | None = None  # set by ioband.sim.simulator.analyse

    def group(self, key: str) -> GroupResult:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)

    def workload(self, name: str) -> WorkloadResult:
        for w in self.workloads:
            if w.name == name:
                return w
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (see ``to_json``)."""
        return to_json(self)


def to_json(result: Result) -> dict[str, Any]:
    """The JSON document of a run. Latencies are in seconds; ``mbps`` is 10**6 bytes/s."""
    sc = result.scenario
    doc = {
        "scenario": {
            "name": sc.name,
            "description": sc.description,
            "duration": sc.duration,
            "seed": sc.seed,
            "hz": sc.hz,
            "interval": sc.interval,
            "status_format": sc.status_format,
            "scheduler": sc.scheduler,
            **({"sfq_depth": sc.sfq_depth} if sc.sfq_depth is not None else {}),
        },
        "duration": result.duration,
        "events": result.events,
        "requests": result.requests,
        "workloads": [
            {
                "name": w.name,
                "device": w.device,
                "disk": w.disk,
                "pattern": w.pattern,
                "processes": w.processes,
                "block_size": w.block_size,
                "active_time": w.active_time,
                "submitted": w.submitted,
                "ios": w.ios,
                "bytes": w.bytes,
                "reads": w.reads,
                "writes": w.writes,
                "read_bytes": w.read_bytes,
                "write_bytes": w.write_bytes,
                "iops": w.iops,
                "mbps": w.mbps,
                "kibps": w.kibps,
                "latency_p50": w.latency_p50,
                "latency_p99": w.latency_p99,
                "latency_p999": w.latency_p999,
                "latency_mean": w.latency_mean,
                "latency_max": w.latency_max,
                "delay_p50": w.delay_p50,
                "delay_p99": w.delay_p99,
                "delay_p999": w.delay_p999,
                "timeline": {
                    "interval": sc.interval,
                    "ios": w.timeline_ios,
                    "bytes": w.timeline_bytes,
                },
            }
            for w in result.workloads
        ],
        "devices": {
            d.name: {
                "disk": d.disk,
                "table": d.table,
                "status": d.status,
                "ios": d.ios,
                "bytes": d.bytes,
            }
            for d in result.devices.values()
        },
        "disks": {
            d.name: {
                "model": d.model,
                "ios": d.ios,
                "bytes": d.bytes,
                "iops": d.iops,
                "mbps": d.mbps,
                "utilization": d.utilization,
            }
            for d in result.disks.values()
        },
    }
    if result.metrics is not None:
        doc["metrics"] = result.metrics
    return doc
