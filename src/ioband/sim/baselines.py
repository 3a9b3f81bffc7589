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

Both read the same table lines and messages as ioband (parsed with ``ioband.core.grammar``),
classify requests into the same groups (``ioband.core.classify.GROUP_TYPES``) and print the same
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

from ioband.core.cint import SHORT_MAX
from ioband.core.classify import GROUP_TYPES, IdOf
from ioband.core.engine import DEFAULT_IO_THROTTLE, BackingInfo, default_io_limit, default_resolver
from ioband.core.grammar import (
    ID_ANY,
    bounded_int,
    parse_group_id,
    parse_group_param,
    parse_message,
    parse_range,
    parse_table,
    parse_weight,
    status_block,
)
from ioband.core.request import DONE, HELD, ISSUED, Request
from ioband.errors import AlreadyExists, Busy, InvalidArgument, NoSuchDevice

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

    def __init__(self, name: str, policy: str, token: str | None, throttle: int, limit: int):
        self.name = name
        self.policy = policy
        self.token = token
        self.io_throttle = throttle
        self.io_limit = limit
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


def _check_value(policy: str, text: str | None, error: str) -> str:
    """Validate a group value with ioband's own parsers; return it as the table shows it."""
    if policy == "range-bw":
        lo, hi = parse_range(text, error)
        return f"{lo}:{hi}"
    w = parse_weight(text, error)
    return str(DEFAULT_WEIGHT if w is None else w)


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
        if name in self.devices:
            raise Busy(f"Device {name!r} already exists")
        spec = parse_table(table)
        info = self.resolver(spec.device)
        if info is None:
            raise NoSuchDevice(f"Device lookup failed: {spec.device!r} was not found")
        if spec.policy not in POLICIES:
            raise InvalidArgument(
                f"Invalid policy parameter: unknown policy {spec.policy!r}"
                f" (one of {', '.join(POLICIES)})"
            )
        if spec.type not in GROUP_TYPES:
            raise InvalidArgument(f"Cannot set ioband group type: unknown type {spec.type!r}")
        head_value = _check_value(spec.policy, spec.default_param, "Cannot create default group")
        extra: dict[int, str] = {}
        for word in spec.groups:
            gid, value = parse_group_param(word)
            if GROUP_TYPES[spec.type] is None:
                raise InvalidArgument(f"Cannot create ioband group {gid}: type 'none'")
            if gid in extra:
                raise AlreadyExists(f"Cannot create ioband group: id={gid} already exists.")
            extra[gid] = _check_value(spec.policy, value, "Cannot create ioband group")
        throttle = spec.io_throttle or DEFAULT_IO_THROTTLE
        limit = spec.io_limit or default_io_limit(info.nr_requests, repr(spec.device))
        pool = self.pools.get(spec.group_name)
        if pool is None:
            limit = max(limit, throttle)
            pool = Pool(spec.group_name, spec.policy, spec.token_base, throttle, limit)
            self.pools[pool.name] = pool
        dev = BaselineDevice(name, pool, spec.start, spec.length, info.display)
        dev.type_name = spec.type
        dev.id_of = GROUP_TYPES[spec.type]
        dev.head = BaselineGroup(dev, ID_ANY, head_value)
        for gid, value in extra.items():
            dev.groups[gid] = BaselineGroup(dev, gid, value)
        pool.devices.append(dev)
        self.devices[name] = dev
        return dev

    def message(self, name: str, words: str | Sequence[str], now: int = 0) -> None:
        dev = self.device(name)
        pool = dev.dp
        msg = parse_message(words)
        cmd, arg = msg.command, msg.arg
        if cmd == "reset":
            for g in dev.all_groups():
                g.ios, g.sectors, g.delayed = [0, 0], [0, 0], [0, 0]
        elif cmd == "type":
            if arg not in GROUP_TYPES:
                raise InvalidArgument(f"type: {arg} isn't supported.")
            if dev.groups:
                raise Busy(f"type: {len(dev.groups)} group(s) still attached; detach them first")
            dev.type_name = arg
            dev.id_of = GROUP_TYPES[arg]
        elif cmd == "attach":
            gid = parse_group_id(arg, cmd)
            if dev.id_of is None:
                raise InvalidArgument("attach: no ioband group type is specified")
            if gid in dev.groups:
                raise AlreadyExists(f"attach: id={gid} already exists.")
            default = "0:0" if pool.policy == "range-bw" else str(DEFAULT_WEIGHT)
            dev.groups[gid] = BaselineGroup(dev, gid, default)
        elif cmd == "detach":
            gid = parse_group_id(arg, cmd)
            if gid not in dev.groups:
                raise InvalidArgument(f"detach: id={gid} not found.")
            del dev.groups[gid]  # requests in flight keep their group object
        elif cmd == "policy":
            if arg not in POLICIES:
                raise InvalidArgument(f"policy: unknown policy {arg!r}")
            if (arg == "range-bw") != (pool.policy == "range-bw"):
                default = "0:0" if arg == "range-bw" else str(DEFAULT_WEIGHT)
                for d in pool.devices:
                    for g in d.all_groups():
                        g.value = default
            pool.policy = arg
        elif cmd == "io_throttle":
            pool.io_throttle = bounded_int(arg, 0, SHORT_MAX, "io_throttle", "Invalid io_throttle")
        elif cmd == "io_limit":
            pool.io_limit = bounded_int(arg, 0, SHORT_MAX, "io_limit", "Invalid io_limit")
        elif cmd in ("token", "carryover"):
            bounded_int(arg, 0, 2**31 - 1, cmd, f"Invalid {cmd}")
            if cmd == "token":
                pool.token = arg
        else:  # weight, range-bw, min-bw, max-bw
            assert arg is not None
            gid, value = parse_group_param(arg, f"Invalid {cmd}")
            g = dev.head if gid == ID_ANY else dev.groups.get(gid)
            if g is None:
                raise InvalidArgument(f"{cmd}: id={gid} not found.")
            g.value = self._new_value(pool.policy, cmd, g.value, value)

    @staticmethod
    def _new_value(policy: str, cmd: str, old: str, value: str | None) -> str:
        if cmd == "weight":
            if policy == "range-bw":
                raise InvalidArgument("weight: not a parameter of the range-bw policy")
            return _check_value(policy, value, "Invalid weight")
        if policy != "range-bw":
            raise InvalidArgument(f"{cmd}: not a parameter of the {policy} policy")
        if cmd == "range-bw":
            return _check_value(policy, value, "Invalid range-bw")
        lo, hi = parse_range(old)
        n = bounded_int(value, 0, 2**30, cmd, f"Invalid {cmd}")
        return f"{n}:{hi}" if cmd == "min-bw" else f"{lo}:{n}"

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
        return (
            f"{dev.start} {dev.length} ioband {dev.backing} {p.name} {p.io_throttle} {p.io_limit}"
            f" {dev.type_name} {p.policy}{token} :{dev.head.value}{groups}"
        )

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
