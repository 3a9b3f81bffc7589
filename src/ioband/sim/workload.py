"""Simulated processes: who submits what, where, and the per-workload statistics.

A workload is ``processes`` identical processes. Each keeps up to ``iodepth`` requests in flight
(submitted, not completed); a process whose request the engine leaves WAITING sleeps until that
request is admitted. Reads are sync; writes are sync with ``direct = true``, else async (buffered),
and with ``writeback = true`` they are submitted by a flusher kernel thread that carries only the
page owner's cgroup, as blkio-cgroup sees delayed writes.

A workload submits only inside its on-phases (``start``/``stop`` or ``[[workload.phase]]``);
``rate``/``rate_iops`` space one process's submissions at least ``interval`` seconds apart
(no credit builds up while a process waits for completions). Completions are recorded per
scheduler group (``group_times``), which the metrics turn into windowed shares.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterable

from ioband.core.request import Request, Submitter
from ioband.sim.scenario import WorkloadSpec

FIRST_AUTO_PID = 1000


class SimRequest(Request):
    """A request plus what the simulator needs to know about it."""

    __slots__ = ("lba", "proc", "t_issue", "t_start", "t_submit")

    def __init__(
        self,
        write: bool,
        offset: int,
        length: int,
        owner: Submitter,
        sync: bool,
        proc: Process,
        now: float,
    ) -> None:
        Request.__init__(self, write, offset, length, owner, sync=sync)
        self.proc = proc
        self.t_submit = now
        self.t_issue = -1.0
        self.t_start = -1.0  # when the disk began serving it (it may queue in the disk first)
        self.lba = offset  # the byte offset on the whole disk; the workload adds its base


class Process:
    """One simulated process (a submitter with its own pid)."""

    __slots__ = (
        "asleep",
        "cursor",
        "device",
        "disk",
        "index",
        "next_ok",
        "outstanding",
        "owner",
        "stream_end",
        "stream_start",
        "waiting_for",
        "wake_pending",
        "workload",
        "write_owner",
    )

    def __init__(
        self, workload: Workload, index: int, owner: Submitter, write_owner: Submitter
    ) -> None:
        self.workload = workload
        self.index = index
        self.owner = owner
        self.write_owner = write_owner
        self.outstanding = 0  # submitted, not completed
        self.asleep = False  # its last request is WAITING in the engine
        self.waiting_for: Request | None = None
        self.device: object = None  # the engine's Device, set by the simulator
        self.disk: object = None  # the DiskModel its device sits on
        self.next_ok = 0.0  # rate cap: earliest time of its next submission
        self.wake_pending = False  # a WAKE for the rate cap is queued
        # Sequential stream: each process reads its own slice of the device.
        self.stream_start = 0
        self.stream_end = 0
        self.cursor = 0

    @property
    def pid(self) -> int:
        return self.owner.pid


class Workload:
    """Runtime state of one ``[[workload]]``: its processes, offset generator and statistics."""

    def __init__(
        self,
        spec: WorkloadSpec,
        *,
        device_size: int,
        pids: list[int],
        flusher_pid: int,
        seed: int,
        duration: float,
        interval: float,
        disk_base: int = 0,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.rng = random.Random(f"{seed}/{spec.name}")
        self.block_size = spec.block_size
        region = spec.size if spec.size is not None else device_size - spec.offset
        self.region_start = spec.offset  # byte offset of the region in the device
        self.disk_base = disk_base + spec.offset  # byte offset of the region on the disk
        self.nblocks = max(1, region // spec.block_size)
        self.random = spec.random
        self.read_fraction = spec.read_fraction
        self.mixed = 0.0 < spec.read_fraction < 1.0
        self.always_write = spec.read_fraction == 0.0
        self.sync_writes = spec.direct
        self.iodepth = spec.iodepth
        self.think_time = spec.think_time
        self.gap = spec.interval  # rate cap: seconds between one process's submissions
        self.phases = [
            (start, min(stop, duration) if stop is not None else duration)
            for start, stop in spec.on_phases
            if start < duration
        ]
        self.phase_i = 0  # the current or next phase
        # The current phase's bounds, for the simulator's inline test (is_on updates them).
        self.on_from, self.on_until = self.phases[0] if self.phases else (0.0, 0.0)
        self.start = spec.start
        self.stop = self.phases[-1][1] if self.phases else spec.start
        self.processes: list[Process] = []
        n = spec.processes
        for i, pid in enumerate(pids):
            owner = Submitter(
                pid=pid,
                pgrp=spec.pgrp if spec.pgrp is not None else pid,
                uid=spec.uid,
                gid=spec.gid,
                cgroup=spec.cgroup,
                client=spec.client,
            )
            write_owner = owner
            if spec.writeback:
                write_owner = Submitter(pid=flusher_pid, pgrp=0, cgroup=spec.cgroup, kthread=True)
            p = Process(self, i, owner, write_owner)
            p.stream_start = p.cursor = (i * self.nblocks // n) * self.block_size
            p.stream_end = ((i + 1) * self.nblocks // n) * self.block_size
            if p.stream_end <= p.stream_start:  # more processes than blocks
                p.stream_start = p.cursor = 0
                p.stream_end = self.nblocks * self.block_size
            self.processes.append(p)

        # Statistics (completed requests).
        self.ios = self.bytes = 0
        self.reads = self.writes = 0
        self.read_bytes = self.write_bytes = 0
        self.submitted = 0
        self.disk_time = 0.0  # seconds of disk (slot) service of the completed requests
        self.latencies = array("d")  # submit -> completion, seconds
        self.delays = array("d")  # submit -> issued to the disk (time spent in ioband)
        self.interval = interval
        self.buckets = max(1, math.ceil(duration / interval - 1e-9))
        self.timeline_ios = [0] * self.buckets
        self.timeline_bytes = [0] * self.buckets
        # Completion times per scheduler group (the engine's ``req.group``; None for engines
        # that do not set it): the metrics' windows are counted from these.
        self.group_times: dict[object, array] = {}
        self._last_group: object = self  # never a group: the first completion looks it up
        self._last_times = array("d")

    def is_on(self, t: float) -> bool:
        """True while ``t`` is inside an on-phase (time only moves forward)."""
        phases = self.phases
        i = self.phase_i
        n = len(phases)
        while i < n and t >= phases[i][1]:
            i += 1
        self.phase_i = i
        if i < n:
            self.on_from, self.on_until = phases[i]
            return t >= phases[i][0]
        self.on_from = self.on_until = float("inf")
        return False

    def new_request(self, proc: Process, now: float) -> SimRequest:
        """The next request of ``proc``, submitted at ``now``."""
        bs = self.block_size
        if self.mixed:
            write = self.rng.random() >= self.read_fraction
        else:
            write = self.always_write
        if self.random:
            offset = int(self.rng.random() * self.nblocks) * bs
        else:
            offset = proc.cursor
            nxt = offset + bs
            proc.cursor = nxt if nxt + bs <= proc.stream_end else proc.stream_start
        self.submitted += 1
        if write:
            req = SimRequest(
                True, offset + self.region_start, bs, proc.write_owner, self.sync_writes, proc, now
            )
        else:
            req = SimRequest(False, offset + self.region_start, bs, proc.owner, True, proc, now)
        req.lba = offset + self.disk_base
        return req

    def completed(self, req: SimRequest, now: float) -> None:
        """Account a request that completed at ``now``."""
        n = req.length
        self.ios += 1
        self.bytes += n
        if req.dir:
            self.writes += 1
            self.write_bytes += n
        else:
            self.reads += 1
            self.read_bytes += n
        self.latencies.append(now - req.t_submit)
        self.delays.append(req.t_issue - req.t_submit)
        b = int(now / self.interval)
        if b >= self.buckets:
            b = self.buckets - 1
        self.timeline_ios[b] += 1
        self.timeline_bytes[b] += n
        g = req.group
        if g is self._last_group:
            self._last_times.append(now)
            return
        times = self.group_times.get(g)
        if times is None:
            times = self.group_times[g] = array("d")
        times.append(now)
        self._last_group = g
        self._last_times = times

    @property
    def active_time(self) -> float:
        """Seconds during which the workload was allowed to submit (the sum of its phases)."""
        return sum(max(0.0, stop - start) for start, stop in self.phases)


def allocate_pids(specs: Iterable[WorkloadSpec]) -> tuple[list[list[int]], int]:
    """Pids for every process of every workload, and one for the flusher thread.

    Workloads with ``pid`` get consecutive pids from it; the others get distinct pids from 1000 up
    that no explicit ``pid`` or ``pgrp`` uses.
    """
    specs = list(specs)
    reserved: set[int] = set()
    for s in specs:
        if s.pid is not None:
            reserved.update(range(s.pid, s.pid + s.processes))
        if s.pgrp is not None:
            reserved.add(s.pgrp)
    nxt = FIRST_AUTO_PID

    def take() -> int:
        nonlocal nxt
        while nxt in reserved:
            nxt += 1
        nxt += 1
        return nxt - 1

    out = []
    for s in specs:
        if s.pid is not None:
            out.append(list(range(s.pid, s.pid + s.processes)))
        else:
            out.append([take() for _ in range(s.processes)])
    return out, take()
