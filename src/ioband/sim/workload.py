"""Simulated processes: who submits what, where, and the per-workload statistics.

A workload is ``processes`` identical processes. Each keeps up to ``iodepth`` requests in flight
(submitted, not completed); a process whose request the engine leaves WAITING sleeps until that
request is admitted. Reads are sync; writes are sync with ``direct = true``, else async (buffered),
and with ``writeback = true`` they are submitted by a flusher kernel thread that carries only the
page owner's cgroup, as blkio-cgroup sees delayed writes.
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

    __slots__ = ("proc", "t_issue", "t_submit")

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


class Process:
    """One simulated process (a submitter with its own pid)."""

    __slots__ = (
        "asleep",
        "cursor",
        "device",
        "disk",
        "index",
        "outstanding",
        "owner",
        "stream_end",
        "stream_start",
        "waiting_for",
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
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.rng = random.Random(f"{seed}/{spec.name}")
        self.block_size = spec.block_size
        self.nblocks = max(1, device_size // spec.block_size)
        self.random = spec.random
        self.read_fraction = spec.read_fraction
        self.mixed = 0.0 < spec.read_fraction < 1.0
        self.always_write = spec.read_fraction == 0.0
        self.sync_writes = spec.direct
        self.iodepth = spec.iodepth
        self.think_time = spec.think_time
        self.start = spec.start
        self.stop = min(spec.stop, duration) if spec.stop is not None else duration
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
        self.latencies = array("d")  # submit -> completion, seconds
        self.delays = array("d")  # submit -> issued to the disk (time spent in ioband)
        self.interval = interval
        self.buckets = max(1, math.ceil(duration / interval - 1e-9))
        self.timeline_ios = [0] * self.buckets
        self.timeline_bytes = [0] * self.buckets

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
            return SimRequest(True, offset, bs, proc.write_owner, self.sync_writes, proc, now)
        return SimRequest(False, offset, bs, proc.owner, True, proc, now)

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

    @property
    def active_time(self) -> float:
        """Seconds during which the workload was allowed to submit."""
        return max(0.0, self.stop - self.start)


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
