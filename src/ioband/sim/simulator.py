"""The discrete-event loop: workloads -> engine -> disk models, in virtual time.

Time is a float of virtual seconds; the engine sees ``jiffy = int(t * hz)`` (never decreasing) and
is advanced at its ``next_deadline()``. The engine is driven through ``ioband.core.driver``:
what it issues is dispatched to its disk (``_dispatch``), the submitters it admits are woken
(``_admitted``), and its next deadline becomes an ``ADVANCE`` event.
Events at the same time run in the order they were scheduled, so a run is a pure function of the
scenario (including its seed).

``simulation.scheduler`` picks what sits between the workloads and the disks: ``ioband`` (the
core's ``Engine``), or a baseline with the same API (``ioband.sim.baselines``): ``none`` (FIFO
pass-through) or ``sfq`` (start-time fair queueing with depth D).
"""

from __future__ import annotations

import heapq
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

from ioband.core.driver import Driver
from ioband.core.engine import BackingInfo, Engine
from ioband.core.request import WAITING, Request
from ioband.errors import IobandError
from ioband.sim.baselines import FifoEngine, SFQDEngine
from ioband.sim.disk import DiskModel, create_disk
from ioband.sim.metrics import compute
from ioband.sim.results import (
    DeviceResult,
    DiskResult,
    GroupResult,
    Result,
    WorkloadResult,
    percentile,
)
from ioband.sim.scenario import (
    SECTOR,
    DeviceSpec,
    MessageSpec,
    Scenario,
    ScenarioError,
    table_length,
)
from ioband.sim.workload import Process, SimRequest, Workload, allocate_pids

# Event kinds: the third field of a heap entry (time, seq, kind, payload).
COMPLETE = 0  # the disk finished a request (payload: the SimRequest)
ADVANCE = 1  # an engine timer is due (payload: the jiffy)
START = 2  # a workload starts submitting (payload: the Workload)
WAKE = 3  # a process's think time is over (payload: the Process)
MESSAGE = 4  # a timed dmsetup message (payload: (DeviceSpec, MessageSpec))

EngineFactory = Callable[..., Any]


class ScenarioRefused(IobandError):
    """The engine refused a table line or a message of the scenario.

    ``str()`` is ``device 'ioband1', messages[1] "attach x": Invalid ioband group parameter``;
    ``errno_name`` is the engine error's, which is kept as ``cause``.
    """

    def __init__(self, device: str, key: str, text: str, cause: IobandError) -> None:
        super().__init__(f'device {device!r}, {key} "{text}": {cause}', errno_name=cause.errno_name)
        self.device = device
        self.key = key
        self.text = text
        self.cause = cause


def run(scenario: Scenario, *, engine_factory: EngineFactory | None = None) -> Result:
    """Simulate ``scenario``; raises ``ScenarioRefused`` or ``ScenarioError`` before simulating."""
    return Simulator(scenario, engine_factory=engine_factory).run()


def analyse(scenario: Scenario, *, baseline: Result | None = None) -> Result:
    """Run ``scenario``, and (when ``scenario.efficiency`` and it is controlled) the same
    workload with ``scheduler = "none"`` for eta; the result carries ``metrics``."""
    result = run(scenario)
    if baseline is None and scenario.efficiency and scenario.scheduler != "none":
        baseline = run(scenario.with_overrides(scheduler="none"))
    result.metrics = compute(result, baseline)
    return result


def scheduler_factory(scenario: Scenario, disks: dict[str, DiskModel]) -> EngineFactory:
    """The engine class for ``scenario.scheduler`` (baselines get their options bound)."""
    if scenario.scheduler == "ioband":
        return Engine
    if scenario.scheduler == "none":
        return FifoEngine
    depth = scenario.sfq_depth
    if depth is None:  # the device's internal concurrency, as the paper's D
        depth = max((d.queue_depth for d in disks.values()), default=1)

    def sfq(**kwargs: Any) -> SFQDEngine:
        return SFQDEngine(depth=depth, **kwargs)

    return sfq


class Simulator:
    """One run of one scenario. ``engine_factory(hz=, resolver=, seed=)`` defaults to the
    scenario's ``scheduler`` (``Engine`` for ``ioband``)."""

    def __init__(self, scenario: Scenario, *, engine_factory: EngineFactory | None = None) -> None:
        self.scenario = scenario
        self.hz = scenario.hz
        self.end = scenario.duration
        self.disks: dict[str, DiskModel] = {
            d.name: create_disk(d.name, d.model, dict(d.params)) for d in scenario.disks
        }
        factory = engine_factory or scheduler_factory(scenario, self.disks)
        self.engine = factory(hz=scenario.hz, resolver=self._resolve, seed=scenario.seed)
        self.driver = Driver(
            self.engine,
            self._dispatch,
            admit=self._admitted,
            deadline=self._schedule_advance,
            clock=lambda: self.now_j,
        )
        self.devices: dict[str, Any] = {}  # name -> the engine's Device
        self.device_disk: dict[str, str] = {}  # name -> disk name
        self.device_size: dict[str, int] = {}  # name -> bytes
        self.device_base: dict[str, int] = {}  # name -> byte offset on its disk
        self.workloads: list[Workload] = []
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.now_j = 0
        self.runnable: deque[Process] = deque()  # processes that may submit (woken, started)
        self.pending_advances: list[int] = []  # jiffies with an ADVANCE event queued (a heap)
        self.advancing = False  # inside the drain that follows engine.advance
        self.events = 0
        self.requests = 0

    # -- set-up --------------------------------------------------------------------------------

    def _resolve(self, field: str) -> BackingInfo | None:
        """The engine's device lookup: a declared disk, or a partition of one."""
        disk = self.scenario.resolve(field)
        if disk is None:
            return None
        return BackingInfo(field.removeprefix("/dev/"), self.disks[disk.name].nr_requests)

    def _create_devices(self) -> None:
        for i, spec in enumerate(self.scenario.devices):
            try:
                self.devices[spec.name] = self.engine.create(spec.name, spec.table, now=0)
            except IobandError as exc:
                raise ScenarioRefused(spec.name, "table", spec.table, exc) from None
            self.driver.pump()
            self.device_disk[spec.name] = self._disk_of(spec, f"device[{i}]")
            length = table_length(spec.table)
            if length is None or length <= 0:
                raise ScenarioError(
                    "cannot read a positive length (sectors) from the table line",
                    key=f"device[{i}].table",
                )
            self.device_size[spec.name] = length * SECTOR
        # Devices are laid out one after the other on their disk, in declaration order.
        used: dict[str, int] = {}
        for spec in self.scenario.devices:
            disk = self.device_disk[spec.name]
            self.device_base[spec.name] = used.get(disk, 0)
            used[disk] = used.get(disk, 0) + self.device_size[spec.name]

    def _disk_of(self, spec: DeviceSpec, where: str) -> str:
        backing = spec.backing
        disk = self.scenario.resolve(backing) if backing else None
        if disk is not None:
            return disk.name
        if spec.disk is not None:
            return spec.disk
        names = ", ".join(d.name for d in self.scenario.disks)
        raise ScenarioError(
            f"the table's device {backing!r} is neither a declared disk nor a partition of one "
            f"(disks: {names})",
            key=f"{where}.table",
        )

    def _message(self, spec: DeviceSpec, msg: MessageSpec) -> None:
        try:
            self.engine.message(spec.name, msg.text, self.now_j)
        except IobandError as exc:
            raise ScenarioRefused(spec.name, msg.key, msg.text, exc) from None
        self.driver.pump()

    def _setup_workloads(self) -> None:
        sc = self.scenario
        pids, flusher = allocate_pids(sc.workloads)
        for spec, wpids in zip(sc.workloads, pids):
            wl = Workload(
                spec,
                device_size=self.device_size[spec.device],
                pids=wpids,
                flusher_pid=flusher,
                seed=sc.seed,
                duration=sc.duration,
                interval=sc.interval,
                disk_base=self.device_base[spec.device],
            )
            dev = self.devices[spec.device]
            disk = self.disks[self.device_disk[spec.device]]
            for p in wl.processes:
                p.device = dev
                p.disk = disk
            self.workloads.append(wl)

    # -- running -------------------------------------------------------------------------------

    def run(self) -> Result:
        wall = time.perf_counter()
        self._create_devices()
        for spec in self.scenario.devices:
            for msg in spec.messages:
                if msg.at <= 0:
                    self._message(spec, msg)
                else:
                    self._push(msg.at, MESSAGE, (spec, msg))
        self._setup_workloads()
        for wl in self.workloads:
            for start, _ in wl.phases:
                if start <= 0:
                    self.runnable.extend(wl.processes)
                else:
                    self._push(start, START, wl)
        self._run_ready()
        self._loop()
        result = self._result()
        result.wall_time = time.perf_counter() - wall
        return result

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))

    def _loop(self) -> None:
        heap = self.heap
        heappop = heapq.heappop
        heappush = heapq.heappush
        driver = self.driver
        hz = self.hz
        end = self.end
        run_ready = self._run_ready
        fill = self._fill
        runnable = self.runnable
        events = 0
        while heap:
            entry = heappop(heap)
            t = entry[0]
            if t > end:
                heappush(heap, entry)  # still in flight at the end
                break
            events += 1
            self.now = t
            j = int(t * hz)
            if j > self.now_j:
                self.now_j = j
            kind = entry[2]
            if kind == COMPLETE:
                req: SimRequest = entry[3]
                proc = req.proc
                nxt = proc.disk.finish(req, t)
                proc.workload.disk_time += t - req.t_start
                if nxt is not None:
                    nxt[0].t_start = t
                    self.seq += 1
                    heappush(heap, (nxt[1], self.seq, COMPLETE, nxt[0]))
                driver.complete(req)
                proc.workload.completed(req, t)
                proc.outstanding -= 1
                if runnable:
                    run_ready()
                if proc.workload.think_time > 0:
                    self._push(t + proc.workload.think_time, WAKE, proc)
                else:
                    fill(proc)
                    if runnable:
                        run_ready()
            elif kind == ADVANCE:
                jiffy = entry[3]
                self.pending_advances.remove(jiffy)
                heapq.heapify(self.pending_advances)
                if jiffy > self.now_j:
                    self.now_j = jiffy
                self.advancing = True
                driver.advance()
                self.advancing = False
                run_ready()
            elif kind == START:
                runnable.extend(entry[3].processes)
                run_ready()
            elif kind == WAKE:
                proc = entry[3]
                proc.wake_pending = False
                runnable.append(proc)
                run_ready()
            else:  # MESSAGE
                spec, msg = entry[3]
                self._message(spec, msg)
                run_ready()
        self.events = events

    def _run_ready(self) -> None:
        runnable = self.runnable
        fill = self._fill
        while runnable:
            fill(runnable.popleft())

    def _fill(self, proc: Process) -> None:
        """Let ``proc`` submit until it has ``iodepth`` requests out, sleeps, or must stop."""
        wl = proc.workload
        t = self.now
        if proc.asleep or (not wl.on_from <= t < wl.on_until and not wl.is_on(t)):
            return
        submit = self.driver.submit
        depth = wl.iodepth
        new_request = wl.new_request
        dev = proc.device
        gap = wl.gap
        while proc.outstanding < depth:
            if gap:
                if t < proc.next_ok:
                    if not proc.wake_pending:
                        proc.wake_pending = True
                        self._push(proc.next_ok, WAKE, proc)
                    return
                proc.next_ok = t + gap
            req = new_request(proc, t)
            proc.outstanding += 1
            self.requests += 1
            submit(dev, req)
            if req.state == WAITING:
                proc.asleep = True
                proc.waiting_for = req
                return

    def _dispatch(self, req: Request) -> None:
        """The engine issued ``req``: its disk starts it now, or queues it."""
        sim_req: SimRequest = req  # type: ignore[assignment]  # the simulator submits only these
        t = self.now
        sim_req.t_issue = t
        done = sim_req.proc.disk.submit(sim_req, t)
        if done is not None:
            sim_req.t_start = t
            self.seq += 1
            heapq.heappush(self.heap, (done, self.seq, COMPLETE, sim_req))

    def _admitted(self, req: Request) -> None:
        """The engine admitted the request its submitter slept on: the process may go on."""
        proc = req.proc  # type: ignore[attr-defined]
        if proc.waiting_for is req:
            proc.asleep = False
            proc.waiting_for = None
            self.runnable.append(proc)

    def _schedule_advance(self, jiffy: int) -> None:
        if self.advancing and jiffy <= self.now_j:
            # Still due right after advance(now): retry one jiffy later rather than spin.
            jiffy = self.now_j + 1
        pending = self.pending_advances
        if pending and pending[0] <= jiffy:
            return  # an earlier (or the same) advance is queued; it will reschedule
        heapq.heappush(pending, jiffy)
        self._push(max(self.now, jiffy / self.hz), ADVANCE, jiffy)

    # -- results -------------------------------------------------------------------------------

    def _result(self) -> Result:
        sc = self.scenario
        end = self.end
        eng = self.engine
        overhang: dict[str, float] = dict.fromkeys(self.disks, 0.0)
        for t, _, kind, payload in self.heap:
            if kind == COMPLETE and t > end:
                overhang[payload.proc.disk.name] += t - end

        workloads = []
        per_device: dict[str, list[int]] = {d.name: [0, 0] for d in sc.devices}
        for wl in self.workloads:
            spec = wl.spec
            lat = sorted(wl.latencies)
            delay = sorted(wl.delays)
            active = wl.active_time
            workloads.append(
                WorkloadResult(
                    name=wl.name,
                    device=spec.device,
                    disk=self.device_disk[spec.device],
                    pattern=spec.pattern,
                    processes=spec.processes,
                    block_size=spec.block_size,
                    active_time=active,
                    submitted=wl.submitted,
                    ios=wl.ios,
                    bytes=wl.bytes,
                    reads=wl.reads,
                    writes=wl.writes,
                    read_bytes=wl.read_bytes,
                    write_bytes=wl.write_bytes,
                    iops=wl.ios / active if active > 0 else 0.0,
                    mbps=wl.bytes / 1e6 / active if active > 0 else 0.0,
                    latency_p50=percentile(lat, 50),
                    latency_p99=percentile(lat, 99),
                    latency_p999=percentile(lat, 99.9),
                    latency_mean=sum(lat) / len(lat) if lat else None,
                    latency_max=lat[-1] if lat else None,
                    delay_p50=percentile(delay, 50),
                    delay_p99=percentile(delay, 99),
                    delay_p999=percentile(delay, 99.9),
                    timeline_ios=list(wl.timeline_ios),
                    timeline_bytes=list(wl.timeline_bytes),
                    disk_time=wl.disk_time,
                )
            )
            per_device[spec.device][0] += wl.ios
            per_device[spec.device][1] += wl.bytes

        devices = {}
        for spec in sc.devices:
            table = eng.table(spec.name)
            status = eng.status(spec.name, fmt=sc.status_format)
            devices[spec.name] = DeviceResult(
                name=spec.name,
                disk=self.device_disk[spec.name],
                table=full_line(table, spec.table),
                status=full_line(status, spec.table),
                ios=per_device[spec.name][0],
                bytes=per_device[spec.name][1],
            )

        disks = {}
        for d in sc.disks:
            m = self.disks[d.name]
            disks[d.name] = DiskResult(
                name=d.name,
                model=d.model,
                ios=m.ios,
                bytes=m.bytes,
                iops=m.ios / end,
                mbps=m.bytes / 1e6 / end,
                utilization=m.utilization(end, overhang[d.name]),
            )
        return Result(
            scenario=sc,
            duration=end,
            workloads=workloads,
            devices=devices,
            disks=disks,
            events=self.events,
            requests=self.requests,
            groups=self._groups(),
        )

    def _groups(self) -> list[GroupResult]:
        """Scheduler groups, with the completion times of each workload in them.

        A group is keyed by (device, group id): the group a request was charged to, as the engine
        recorded it (``req.group``), plus the group each workload's processes classify to now, so
        that a group which got nothing still shows up.
        """
        found: dict[tuple[str, int], GroupResult] = {}

        def entry(g: Any) -> GroupResult | None:
            dev = getattr(g, "device", None)
            name = getattr(dev, "name", None)
            gid = getattr(g, "id", None)
            if name is None or gid is None:
                return None
            key = (name, gid)
            if key not in found:
                found[key] = GroupResult(device=name, id=gid)
            return found[key]

        for wl in self.workloads:
            for g in self._classify(wl):
                e = entry(g)
                if e is not None and wl.name not in e.times:
                    e.times[wl.name] = array("d")
                    e.block_size[wl.name] = wl.block_size
            for g, times in wl.group_times.items():
                e = entry(g)
                if e is None:
                    continue
                if e.times.get(wl.name):
                    merged = sorted([*e.times[wl.name], *times])
                    e.times[wl.name] = array("d", merged)
                else:
                    e.times[wl.name] = times
                e.block_size[wl.name] = wl.block_size
        order = {name: i for i, name in enumerate(self.devices)}
        return sorted(found.values(), key=lambda e: (order.get(e.device, len(order)), e.id))

    def _classify(self, wl: Workload) -> list[Any]:
        """The groups ``wl``'s processes map to on its device now (engines with Device objects)."""
        out: list[Any] = []
        for proc in wl.processes:
            dev = proc.device
            head = getattr(dev, "head", None)
            if head is None:
                return []
            id_of = getattr(dev, "id_of", None)
            owners = {proc.owner, proc.write_owner} if wl.read_fraction < 1 else {proc.owner}
            for owner in owners:
                g = head
                if id_of is not None:
                    gid = id_of(owner)
                    if gid is not None:
                        g = dev.groups.get(gid, head)
                if all(g is not o for o in out):
                    out.append(g)
        return out


def full_line(target: str, table: str) -> str:
    """A dmsetup line after ``NAME: ``: ``<start> <length> ioband <target string>``.

    The engine may return the target string alone (as the kernel target does) or with the
    ``<start> <length> ioband`` prefix; the prefix is taken from the device's table line if missing.
    """
    words = target.split()
    if len(words) >= 3 and words[2] == "ioband":
        return target.strip()
    head = table.split()[:2]
    return " ".join([*head, "ioband", target.strip()])
