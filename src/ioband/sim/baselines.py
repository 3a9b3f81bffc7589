"""Baseline schedulers with the ``Engine``'s API, so the simulator runs them unchanged.

- ``FifoEngine`` (``scheduler = "none"``): the uncontrolled device. Every request is issued the
  moment it is submitted; the disk model serves what it gets in its own order.
- ``SFQDEngine`` (``scheduler = "sfq"``): start-time fair queueing with depth D, SFQ(D) (Jin,
  Chase, Kaur, "Interposed proportional sharing for a storage service utility", SIGMETRICS 2004).
  A request of group f arriving at time t gets the start tag ``S = max(v(t), F_f)`` and the finish
  tag ``F_f = S + cost / weight_f``; up to D requests are outstanding at the device, dispatched in
  increasing start-tag order (ties in arrival order). ``v(t)`` is the start tag of the last
  dispatched request; when the pool goes idle it jumps to the largest finish tag handed out, so a
  returning group neither gets credit for its idle time nor is penalised.

Both read the same table lines and messages as ioband, with the engine's checks and error texts
(``ioband.core.target``: ``check_table`` and the message table, ``run_message``), classify
requests into the same groups (``ioband.core.classify.GROUP_TYPES``) and print the same
``table``/``status`` lines, so results compare group by group. Devices with the same device-group
id share one SFQ(D) queue, as they share one ioband pool. Weights: the table's weights (default
100); cost per request 1 under ``weight``/``default``, the request's sectors under
``weight-iosize``. Under ``range-bw`` SFQ(D) shares by bytes with each group's min as its weight
(1 for a group without a min); it has no max caps.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

from ioband.core.classify import GROUP_TYPES, IdOf
from ioband.core.grammar import (
    ID_ANY,
    GroupKey,
    format_table,
    not_a_parameter,
    parse_range,
    parse_range_change,
    parse_token_param,
    parse_weight,
    status_block,
)
from ioband.core.request import DONE, HELD, ISSUED, Request
from ioband.core.target import BackingInfo, check_table, default_resolver, run_message
from ioband.errors import InvalidArgument, NoSuchDevice
from ioband.policies import POLICIES as ENGINE_POLICIES

WEIGHT_POLICIES = ("weight", "weight-iosize", "default")
POLICIES = (*WEIGHT_POLICIES, "range-bw")
DEFAULT_WEIGHT = 100


class BaselineGroup:
    """A group as the simulator and the metrics see it: ``device`` (with ``.name``) and ``id``."""

    __slots__ = ("_value", "delayed", "device", "finish", "id", "ios", "sectors", "weight")

    def __init__(self, device: BaselineDevice, gid: int, value: str) -> None:
        self.device = device
        self.id = gid
        self.value = value
        self.ios = [0, 0]
        self.sectors = [0, 0]
        self.delayed = [0, 0]
        self.finish = 0.0  # SFQ: finish tag of the group's last request

    def reset_stats(self) -> None:
        self.ios, self.sectors, self.delayed = [0, 0], [0, 0], [0, 0]

    @property
    def value(self) -> str:
        """As the table shows it: ``40`` (a weight) or ``5000:6000`` (a range-bw band)."""
        return self._value

    @value.setter
    def value(self, text: str) -> None:
        self._value = text
        # The share weight: the weight, or the min bandwidth under range-bw (at least 1).
        if ":" in text:
            self.weight = float(max(parse_range(text)[0], 1))
        else:
            w = parse_weight(text)
            self.weight = float(DEFAULT_WEIGHT if w is None else w)


class Pool:
    """Devices sharing one device-group id: one policy, one queue (SFQ)."""

    def __init__(
        self,
        name: str,
        policy: str,
        token: str | None,
        throttle: int,
        limit: int,
        nr_requests: int | None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.token = token
        self.io_throttle = throttle
        self.io_limit = limit
        self.nr_requests = nr_requests  # what ``io_limit 0`` derives the limit from
        self.devices: list[BaselineDevice] = []
        # SFQ(D) state
        self.queue: list[tuple[float, int, Request]] = []
        self.outstanding = 0
        self.vtime = 0.0
        self.max_finish = 0.0

    @property
    def by_size(self) -> bool:
        return self.policy in ("weight-iosize", "range-bw")


class BaselineDevice:
    def __init__(self, name: str, pool: Pool, start: int, length: int, backing: str) -> None:
        self.name = name
        self.dp = pool
        self.start = start
        self.length = length
        self.backing = backing
        self.type_name = "none"
        self.id_of: IdOf | None = None
        self.head: BaselineGroup = None  # type: ignore[assignment]
        self.groups: dict[int, BaselineGroup] = {}

    def all_groups(self) -> list[BaselineGroup]:
        return [self.head, *(self.groups[i] for i in sorted(self.groups))]


def _shown(value: object) -> str:
    """A group value the policy parsed (a weight, or range-bw's ``(min, max)``) as the table
    shows it."""
    if isinstance(value, tuple):
        return f"{value[0]}:{value[1]}"
    return str(value)


def _default_value(policy: str) -> str:
    return "0:0" if policy == "range-bw" else str(DEFAULT_WEIGHT)


class BaselineEngine:
    """What the baselines share: configuration, classification, counters and output."""

    name = "baseline"

    def __init__(
        self,
        *,
        hz: int = 1000,
        resolver: Callable[[str], BackingInfo | None] | None = None,
        seed: int = 0,
    ) -> None:
        self.hz = hz
        self.resolver = resolver or default_resolver
        self.seed = seed
        self.devices: dict[str, BaselineDevice] = {}
        self.pools: dict[str, Pool] = {}
        self._issued: list[Request] = []

    # -- outboxes and time (no timers) -------------------------------------------------------
    def take_issued(self) -> list[Request]:
        out = self._issued
        self._issued = []
        return out

    def take_admitted(self) -> list[Request]:
        return []  # no submitter ever sleeps

    def has_output(self) -> bool:
        return bool(self._issued)

    def next_deadline(self) -> int | None:
        return None

    def advance(self, now: int) -> None:
        pass

    # -- configuration -------------------------------------------------------------------------
    def device(self, name: str) -> BaselineDevice:
        dev = self.devices.get(name)
        if dev is None:
            raise NoSuchDevice(f"No such device: {name!r}")
        return dev

    def create(self, name: str, table: str | Sequence[str], now: int = 0) -> BaselineDevice:
        """``dmsetup create`` with the engine's checks and error texts (``check_table``)."""
        checked = check_table(name, self.devices, table, self.resolver, POLICIES, paths=False)
        spec = checked.spec
        pool = self.pools.get(spec.group_name)
        if pool is None:
            pool = Pool(
                spec.group_name,
                spec.policy,
                spec.token_base,
                checked.io_throttle,
                checked.io_limit,
                checked.info.nr_requests,
            )
            self.pools[pool.name] = pool
        dev = BaselineDevice(name, pool, spec.start, spec.length, checked.info.display)
        dev.type_name = spec.type
        dev.id_of = GROUP_TYPES[spec.type]
        dev.head = BaselineGroup(dev, ID_ANY, _shown(checked.head_value))
        for gid, value in checked.groups.items():
            assert isinstance(gid, int)  # paths=False: no cgroup path keys
            dev.groups[gid] = BaselineGroup(dev, gid, _shown(value))
        pool.devices.append(dev)
        self.devices[name] = dev
        return dev

    def message(self, name: str, words: str | Sequence[str], now: int = 0) -> None:
        """``dmsetup message``: the engine's message table (``ioband.core.target``), its checks
        and error texts; what each message changes is below (the ``MessageTarget`` methods)."""
        run_message(self, self.device(name), words)

    # -- MessageTarget -------------------------------------------------------------------------
    def group_paths(self, dev: BaselineDevice) -> bool:
        return False  # groups are keyed by id only

    def policy_names(self) -> Sequence[str]:
        return POLICIES

    def attach_group(self, dev: BaselineDevice, key: GroupKey) -> bool:
        assert isinstance(key, int)
        if key in dev.groups:
            return False
        dev.groups[key] = BaselineGroup(dev, key, _default_value(dev.dp.policy))
        return True

    def detach_group(self, dev: BaselineDevice, key: GroupKey) -> bool:
        assert isinstance(key, int)
        return dev.groups.pop(key, None) is not None  # requests in flight keep their group

    def switch_policy(self, dev: BaselineDevice, name: str) -> None:
        pool = dev.dp
        if (name == "range-bw") != (pool.policy == "range-bw"):
            for d in pool.devices:
                for g in d.all_groups():
                    g.value = _default_value(name)
        pool.policy = name

    def io_limit_changed(self, dev: BaselineDevice, adaptive: bool) -> None:
        pass  # no window: FIFO issues everything, SFQ(D) keeps its depth

    def set_group_param(
        self, dev: BaselineDevice, key: GroupKey, cmd: str, value: str | None
    ) -> bool:
        assert isinstance(key, int)
        g = dev.head if key == ID_ANY else dev.groups.get(key)
        if g is None:
            return False
        pool = dev.dp
        by_band = pool.policy == "range-bw"
        if cmd == "weight" and not by_band:
            weight = ENGINE_POLICIES[pool.policy].parse_group_value(value, "Invalid weight")
            g.value = _shown(weight)
        elif cmd in ("token", "carryover") and not by_band:
            parse_token_param(cmd, value)
            if cmd == "token":
                pool.token = value
        elif cmd in ("range-bw", "min-bw", "max-bw") and by_band:
            lo, hi = parse_range(g.value)
            g.value = _shown(parse_range_change(cmd, value, lo, hi))
        else:
            raise not_a_parameter(cmd, pool.policy)
        return True

    # -- the request path ----------------------------------------------------------------------
    def classify(self, dev: BaselineDevice, req: Request) -> BaselineGroup:
        g = dev.head
        if dev.id_of is not None:
            gid = dev.id_of(req.owner)
            if gid is not None:
                g = dev.groups.get(gid, g)
        req.group = g
        req.device = dev
        return g

    def issue(self, req: Request, now: int) -> None:
        g = req.group
        g.ios[req.dir] += 1
        g.sectors[req.dir] += req.sectors
        req.state = ISSUED
        req.issue_time = now

    def submit(self, dev: BaselineDevice, req: Request, now: int) -> bool:
        raise NotImplementedError

    def complete(self, req: Request, now: int) -> None:
        if req.state != ISSUED:
            raise InvalidArgument(f"complete: request {req!r} is not in flight")
        req.state = DONE

    # -- output --------------------------------------------------------------------------------
    def table(self, name: str) -> str:
        dev = self.device(name)
        p = dev.dp
        token = f" {p.token}" if p.token is not None else ""
        groups = "".join(f" {gid}:{dev.groups[gid].value}" for gid in sorted(dev.groups))
        return format_table(
            dev.start, dev.length, dev.backing, p.name, p.io_throttle, p.io_limit,
            dev.type_name, p.policy, f"{token} :{dev.head.value}{groups}",
        )  # fmt: skip

    def status(self, name: str, fmt: str = "legacy") -> str:
        dev = self.device(name)
        parts = [f"{dev.start} {dev.length} ioband {dev.dp.name}"]
        for g in dev.all_groups():
            parts.append(status_block(fmt, g.id, g.ios, g.delayed, g.sectors))
        return "".join(parts)


class FifoEngine(BaselineEngine):
    """``scheduler = "none"``: no control; every request goes to the disk at once."""

    name = "none"

    def submit(self, dev: BaselineDevice, req: Request, now: int) -> bool:
        self.classify(dev, req)
        req.submit_time = now
        self.issue(req, now)
        return True


class SFQDEngine(BaselineEngine):
    """``scheduler = "sfq"``: SFQ(D), start-time fair queueing with at most ``depth``
    requests outstanding per pool."""

    name = "sfq"

    def __init__(self, *, depth: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if depth < 1:
            raise InvalidArgument(f"SFQ(D): depth must be at least 1 (got {depth})")
        self.depth = depth
        self._seq = 0

    def submit(self, dev: BaselineDevice, req: Request, now: int) -> bool:
        g = self.classify(dev, req)
        req.submit_time = now
        pool = dev.dp
        cost = req.sectors if pool.by_size else 1
        start = max(pool.vtime, g.finish)
        g.finish = finish = start + cost / g.weight
        if finish > pool.max_finish:
            pool.max_finish = finish
        if pool.outstanding < self.depth:  # then the queue is empty: dispatch at once
            pool.outstanding += 1
            pool.vtime = start
            self.issue(req, now)
            return True
        self._seq += 1
        heapq.heappush(pool.queue, (start, self._seq, req))
        req.state = HELD
        req.delayed = True
        g.delayed[req.dir] += 1
        return False

    def complete(self, req: Request, now: int) -> None:
        super().complete(req, now)
        pool = req.device.dp
        pool.outstanding -= 1
        queue = pool.queue
        if queue:
            start, _, nxt = heapq.heappop(queue)
            pool.outstanding += 1
            pool.vtime = start
            self.issue(nxt, now)
            self._issued.append(nxt)
        elif pool.outstanding == 0:
            pool.vtime = pool.max_finish  # end of a busy period
