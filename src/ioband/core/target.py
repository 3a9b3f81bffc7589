"""The dm target: devices, groups, classification rules, tables, messages and status.

What ``dmsetup`` does to an ioband device, apart from scheduling its requests: ``create`` and
``remove``, ``suspend`` and ``resume``, ``message``, ``table`` and ``status``. The scheduler
(``ioband.core.engine.Engine``) inherits this half and provides the few services it asks for
(the hooks at the end of ``DmTarget``): the target never touches a request's path itself.

The checks and error texts of ``create`` (``check_table``) and of every message
(``MESSAGE_HANDLERS``, one handler per command word) are shared with the simulator's FIFO and
SFQ(D) baselines (``ioband.sim.baselines``), which implement ``MessageTarget`` on their own
devices: every engine refuses the same input with the same words.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from ioband.core.cint import INT_MAX, SHORT_MAX
from ioband.core.classify import GROUP_TYPES, IdOf
from ioband.core.grammar import (
    ID_ANY,
    MESSAGES,
    RULE_FIELDS,
    GroupKey,
    Message,
    Rule,
    TableSpec,
    bounded_int,
    did_you_mean,
    format_table,
    key_text,
    parse_group_id,
    parse_group_param,
    parse_message,
    parse_table,
    status_block,
)
from ioband.core.model import Device, DeviceGroup, Group
from ioband.core.request import Request, Submitter
from ioband.errors import AlreadyExists, Busy, InvalidArgument, NoQueue, NoSuchDevice
from ioband.policies import POLICIES, Policy

DEFAULT_IO_THROTTLE: Final = 4
DEFAULT_NR_REQUESTS: Final = 128


@dataclass(frozen=True)
class BackingInfo:
    """What the core needs to know of a table's ``<device>``: how tables show it, and the
    request queue size that ``io_limit 0`` derives from (None: no queue, ``Can't get queue
    size``)."""

    display: str
    nr_requests: int | None = DEFAULT_NR_REQUESTS


def default_resolver(device: str) -> BackingInfo:
    return BackingInfo(device, DEFAULT_NR_REQUESTS)


def default_io_limit(nr_requests: int | None, what: str) -> int:
    if nr_requests is None:
        raise NoQueue(f"Can't get queue size: {what} has no request queue; give io_limit")
    return 3 * nr_requests // 2


# ==========================================================================================
# create: the checks every engine runs before anything changes
# ==========================================================================================
class CheckedTable:
    """A table line that passed every check of ``dmsetup create``, its values parsed (a plain
    class: mypyc's dataclasses cannot hold fields typed ``object``)."""

    def __init__(
        self,
        spec: TableSpec,
        info: BackingInfo,
        io_throttle: int,
        io_limit: int,
        policy: type[Policy],
        token_base: object,
        head_value: object,
        groups: dict[GroupKey, object],
    ) -> None:
        self.spec = spec
        self.info = info
        self.io_throttle = io_throttle
        self.io_limit = io_limit  # derived from the queue size for ``io_limit 0``, >= throttle
        self.policy = policy
        self.token_base = token_base  # the policy's parse_token_base
        self.head_value = head_value  # the policy's parse_group_value of the default group
        self.groups = groups  # the same of every ``ID:VALUE`` word


def check_table(
    name: str,
    devices: Collection[str],
    table: str | Sequence[str],
    resolver: Callable[[str], BackingInfo | None],
    policies: Sequence[str] = tuple(POLICIES),
    paths: bool = True,
) -> CheckedTable:
    """``dmsetup create NAME TABLE``'s checks, in dm-ioband's order. ``policies``: the policies
    this engine runs; ``paths``: whether it keys groups by cgroup path (type ``cgroup``)."""
    if not name or "/" in name or any(ch.isspace() for ch in name):
        raise InvalidArgument(f"Invalid device name {name!r}: no '/', no spaces, not empty")
    if name in devices:
        raise Busy(f"Device {name!r} already exists")
    spec = parse_table(table)
    info = resolver(spec.device)
    if info is None:
        raise NoSuchDevice(f"Device lookup failed: {spec.device!r} was not found")
    throttle = spec.io_throttle or DEFAULT_IO_THROTTLE
    limit = spec.io_limit or default_io_limit(info.nr_requests, repr(spec.device))
    limit = max(limit, throttle)
    policy_cls = POLICIES.get(spec.policy)
    if policy_cls is None or spec.policy not in policies:
        raise InvalidArgument(
            f"Invalid policy parameter: unknown policy {spec.policy!r}"
            f"{did_you_mean(spec.policy, list(policies))}"
        )
    token_base = policy_cls.parse_token_base(spec.token_base)
    head_value = policy_cls.parse_group_value(
        spec.default_param, "Cannot create default ioband group"
    )
    if spec.type not in GROUP_TYPES:
        raise InvalidArgument(
            f"Cannot set ioband group type: unknown type {spec.type!r}"
            f"{did_you_mean(spec.type, list(GROUP_TYPES))}"
        )
    extra: dict[GroupKey, object] = {}
    for word in spec.groups:
        err = "Cannot create ioband group"
        gid, value = parse_group_param(word, paths=paths and spec.type == "cgroup")
        if GROUP_TYPES[spec.type] is None:
            raise InvalidArgument(f"{err}: group {gid}: type 'none' has no groups to attach")
        if isinstance(gid, int) and not 0 <= gid <= INT_MAX:
            raise InvalidArgument(f"{err}: invalid id:{gid} (ids are 0..{INT_MAX})")
        if gid in extra:
            raise AlreadyExists(f"{err}: id={gid} already exists.")
        extra[gid] = policy_cls.parse_group_value(value, err)
    policy_cls.check_groups(head_value, extra)
    return CheckedTable(spec, info, throttle, limit, policy_cls, token_base, head_value, extra)


# ==========================================================================================
# message: one table of command words, one set of error texts for every engine
# ==========================================================================================
class StatsGroup(Protocol):
    def reset_stats(self) -> None: ...


class PoolSettings(Protocol):
    """A device group as messages see it."""

    name: str
    io_throttle: int
    io_limit: int
    nr_requests: int | None


class ConfigDevice(Protocol):
    """A device as messages see it."""

    type_name: str
    id_of: IdOf | None

    @property
    def dp(self) -> PoolSettings: ...

    @property
    def groups(self) -> Sized: ...  # the attached groups

    def all_groups(self) -> Sequence[StatsGroup]: ...


DevT = TypeVar("DevT", bound=ConfigDevice, contravariant=True)


class MessageTarget(Protocol[DevT]):
    """What a message changes, once the shared handler has checked it: the engine
    (``DmTarget``) and the simulator's baselines each implement these on their own devices."""

    def group_paths(self, dev: DevT) -> bool:
        """Whether a group key may be a cgroup path on ``dev``."""
        ...

    def policy_names(self) -> Sequence[str]: ...

    def attach_group(self, dev: DevT, key: GroupKey) -> bool:
        """Attach group ``key`` with the policy's default value; False: it is attached."""
        ...

    def detach_group(self, dev: DevT, key: GroupKey) -> bool:
        """Detach group ``key``; False: there is none."""
        ...

    def switch_policy(self, dev: DevT, name: str) -> None:
        """``dev``'s device group runs policy ``name`` (one of ``policy_names``)."""
        ...

    def io_limit_changed(self, dev: DevT, adaptive: bool) -> None:
        """``dev.dp.io_limit`` was set; ``adaptive``: the message said ``io_limit 0``."""
        ...

    def set_group_param(self, dev: DevT, key: GroupKey, cmd: str, value: str | None) -> bool:
        """Set a policy parameter of group ``key`` (``ID_ANY``: the default group); False:
        there is no such group. The policy refuses what it has no parameter for."""
        ...


Handler = Callable[[MessageTarget[Any], Any, Message], None]


def run_message(target: MessageTarget[DevT], dev: DevT, words: str | Sequence[str]) -> None:
    """``dmsetup message NAME 0 WORDS`` on ``dev``. A refused message raises; the checks run
    before anything changes."""
    msg = parse_message(words)
    MESSAGE_HANDLERS[msg.command](target, dev, msg)


def _reset(target: MessageTarget[DevT], dev: DevT, msg: Message) -> None:
    for g in dev.all_groups():
        g.reset_stats()


def _type(target: MessageTarget[DevT], dev: DevT, msg: Message) -> None:
    arg = msg.arg
    assert arg is not None
    if arg not in GROUP_TYPES:
        raise InvalidArgument(
            f"type: {arg} isn't supported. (unknown group type {arg!r};"
            f" one of {', '.join(GROUP_TYPES)})"
        )
    if len(dev.groups):
        raise Busy(f"type: {len(dev.groups)} group(s) still attached; detach them first")
    dev.type_name = arg
    dev.id_of = GROUP_TYPES[arg]


def _attach(target: MessageTarget[DevT], dev: DevT, msg: Message) -> None:
    gid = parse_group_id(msg.arg, "attach", paths=target.group_paths(dev))
    if dev.id_of is None:
        raise InvalidArgument("attach: no ioband group type is specified")
    if not target.attach_group(dev, gid):
        raise AlreadyExists(f"attach: id={key_text(gid)} already exists.")


def _detach(target: MessageTarget[DevT], dev: DevT, msg: Message) -> None:
    gid = parse_group_id(msg.arg, "detach", paths=target.group_paths(dev))
    if not target.detach_group(dev, gid):
        raise InvalidArgument(f"detach: id={key_text(gid)} not found.")


def _policy(target: MessageTarget[DevT], dev: DevT, msg: Message) -> None:
    arg = msg.arg
    assert arg is not None
    known = target.policy_names()
    if arg not in known:
        raise InvalidArgument(f"policy: unknown policy {arg!r}{did_you_mean(arg, list(known))}")
    target.switch_policy(dev, arg)


def _io_throttle(target: MessageTarget[DevT], dev: DevT, msg: Message) -> None:
    dp = dev.dp
    v = bounded_int(msg.arg, 0, SHORT_MAX, "io_throttle", "Invalid io_throttle")
    v = v or DEFAULT_IO_THROTTLE
    if v > dp.io_limit:
        raise InvalidArgument(f"Invalid io_throttle: {v} is above io_limit {dp.io_limit}")
    dp.io_throttle = v


def _io_limit(target: MessageTarget[DevT], dev: DevT, msg: Message) -> None:
    dp = dev.dp
    given = bounded_int(msg.arg, 0, SHORT_MAX, "io_limit", "Invalid io_limit")
    v = given or default_io_limit(dp.nr_requests, f"device group {dp.name!r}")
    if v < dp.io_throttle:
        raise InvalidArgument(f"Invalid io_limit: {v} is below io_throttle {dp.io_throttle}")
    dp.io_limit = v
    target.io_limit_changed(dev, given == 0)


def _group_param(target: MessageTarget[DevT], dev: DevT, msg: Message) -> None:
    """``weight``, ``token``, ``range-bw``, ``reservation``, ...: ``[ID:]VALUE``, the policy's."""
    cmd, arg = msg.command, msg.arg
    assert arg is not None
    gid, value = parse_group_param(arg, f"Invalid {cmd}", target.group_paths(dev))
    if not target.set_group_param(dev, gid, cmd, value):
        raise InvalidArgument(f"{cmd}: id={key_text(gid)} not found.")


#: Command word -> handler. The words ``parse_message`` knows (``grammar.MESSAGES``) that are not
#: the target's own are the policies' group parameters.
MESSAGE_HANDLERS: Final[dict[str, Handler]] = {
    **{word: _group_param for word in MESSAGES},
    "reset": _reset,
    "type": _type,
    "attach": _attach,
    "detach": _detach,
    "policy": _policy,
    "io_throttle": _io_throttle,
    "io_limit": _io_limit,
}


# ==========================================================================================
# The engine's dm target
# ==========================================================================================
class DmTarget:
    """Devices, device groups and groups, and what dmsetup does to them; ``Engine`` inherits
    it and schedules the requests. The scheduler's services it calls are declared at the end."""

    def __init__(
        self,
        *,
        hz: int = 1000,
        resolver: Callable[[str], BackingInfo | None] | None = None,
        linear_scan: bool = False,
    ) -> None:
        if hz <= 0:
            raise InvalidArgument(f"Invalid hz: {hz} must be > 0")
        self.hz = hz
        self.now = 0
        self.resolver = resolver or default_resolver
        self.linear_scan = linear_scan  # reference mode: every policy scans every group
        self.devices: dict[str, Device] = {}
        self.device_groups: dict[str, DeviceGroup] = {}
        self._group_seq = 0

    def _tick(self, now: int) -> None:
        if now > self.now:
            self.now = now

    def ms(self, jiffies: int) -> int:
        return jiffies * 1000 // self.hz

    # ======================================================================================
    # Devices and groups: create, remove, suspend/resume
    # ======================================================================================
    def device(self, name: str) -> Device:
        dev = self.devices.get(name)
        if dev is None:
            raise NoSuchDevice(f"No such device: {name!r}")
        return dev

    def _new_group(self, dev: Device, gid: GroupKey) -> Group:
        self._group_seq += 1
        g = Group(gid, dev, self._group_seq)
        dev.dp.groups.append(g)
        return g

    def create(self, name: str, table: str | Sequence[str], now: int = 0) -> Device:
        """``dmsetup create``: every check runs before anything changes."""
        self._tick(now)
        checked = check_table(name, self.devices, table, self.resolver)
        spec = checked.spec
        dp = self.device_groups.get(spec.group_name)
        if dp is None:
            dp = self._new_device_group(
                spec.group_name, checked.io_throttle, checked.io_limit, checked.info.nr_requests
            )
            self._set_window(dp, adaptive=spec.io_limit == 0)
            dp.policy = checked.policy(dp, checked.token_base)
            dp.policy_name = spec.policy
            self._apply_scan_mode(dp)
            self.device_groups[dp.name] = dp
        elif dp.policy_name != spec.policy:
            self._switch_policy(dp, spec.policy, checked.token_base)
        dev = Device(name, dp, spec.start, spec.length, spec.device, checked.info.display)
        dev.type_name = spec.type
        dev.id_of = GROUP_TYPES[spec.type]
        policy = dp.policy
        dev.head = self._new_group(dev, ID_ANY)
        policy.group_added(dev.head, checked.head_value, reshare=False)
        for gid, group_value in checked.groups.items():
            g = dev.groups[gid] = self._new_group(dev, gid)
            policy.group_added(g, group_value, reshare=False)
        dev.by_path = any(isinstance(k, str) for k in checked.groups)
        policy.reshare()
        dp.devices.append(dev)
        self.devices[name] = dev
        self._settle()
        return dev

    def remove(self, name: str, now: int = 0) -> None:
        """``dmsetup remove``: what the device holds is issued at once (flushed downwards);
        requests in flight complete normally."""
        self._tick(now)
        dev = self.device(name)
        dp = dev.dp
        del self.devices[name]
        dev.removed = True
        leftovers: list[Request] = list(dev.suspend_waiters)
        dev.suspend_waiters.clear()
        groups = dev.all_groups()
        for g in groups:
            leftovers += self._unhold_all(g)
            leftovers += self._sleepers(g)
        for c in (0, 1):  # kernel threads of this device asleep on the device-wide queues
            mine = [r for r in dp.waitq[c] if r.device is dev]
            dp.waitq[c] = deque(r for r in dp.waitq[c] if r.device is not dev)
            leftovers += mine
        urgent = [r for r in dp.urgent if r.device is dev]
        if urgent:
            dp.urgent = deque(r for r in dp.urgent if r.device is not dev)
            for r in urgent:
                dp.blocked[r.sync] -= 1
            leftovers += urgent
        for req in leftovers:
            self._issue_now(req)
        for g in groups:
            dp.policy.group_removed(g, reshare=False)
            if g.going_down:
                dp.going_down -= 1
        gone = set(map(id, groups))
        dp.groups = [g for g in dp.groups if id(g) not in gone]
        dp.devices.remove(dev)
        if dp.devices:
            dp.policy.reshare()
            self._queue_conductor(dp, 0)
        else:
            del self.device_groups[dp.name]
        self._settle()

    def suspend(self, name: str, now: int = 0) -> None:
        """``dmsetup suspend``: new requests wait; what is held drains at once, ignoring tokens."""
        self._tick(now)
        dev = self.device(name)
        if dev.suspended:
            return
        dev.suspended = True
        dp = dev.dp
        for g in dev.all_groups():
            if not g.going_down:
                g.going_down = True
                g.need_up = True
                dp.going_down += 1
            for wq in (*g.waitq, g.maxbw_waitq):
                self.wake(wq)
        for wq in dp.waitq:
            self.wake(wq)
        self._queue_conductor(dp, 0)
        self._settle()

    def resume(self, name: str, now: int = 0) -> None:
        self._tick(now)
        dev = self.device(name)
        if not dev.suspended:
            return
        dp = dev.dp
        for g in dev.all_groups():
            if g.need_up:
                g.need_up = g.going_down = False
                dp.going_down -= 1
                dp.policy.backlogged(g)
        dev.suspended = False
        self.wake(dev.suspend_waiters)
        self._queue_conductor(dp, 0)
        self._settle()

    def quiesced(self, name: str) -> bool:
        """Nothing held, waiting or in flight on this device (a suspend has finished)."""
        dev = self.device(name)
        return (
            dev.inflight == 0
            and not dev.suspend_waiters
            and all(
                g.blocked[0] + g.blocked[1] == 0 and not g.waitq[0] and not g.waitq[1]
                for g in dev.all_groups()
            )
        )

    def _apply_scan_mode(self, dp: DeviceGroup) -> None:
        if self.linear_scan and hasattr(dp.policy, "linear"):
            dp.policy.linear = True
        if dp.adaptive is not None:
            dp.adaptive.paced = dp.policy.paces

    def _switch_policy(self, dp: DeviceGroup, name: str, token_base: object) -> None:
        """Switch the device group's policy. Groups keep their held requests, which the new
        policy releases; parameters reset to defaults, except that weights carry over between
        the weight policies."""
        old = dp.policy
        new_cls = POLICIES[name]
        carry = old.family == new_cls.family
        # Between families only the weight carries over (weight <-> mclock; range-bw has none).
        values = {
            g: old.carried_value(g) if carry else new_cls.value_from_weight(old.carried_weight(g))
            for g in dp.groups
        }
        for g in dp.groups:
            g.timer_token += 1  # cancel range-bw timers
            for wq in (*g.waitq, g.maxbw_waitq):
                self.wake(wq)
        new = new_cls(dp, token_base)
        dp.policy = new
        dp.policy_name = name
        self._apply_scan_mode(dp)
        for g in dp.groups:
            new.group_added(g, values[g], reshare=False)
        new.reshare()
        for g in dp.groups:
            if g.blocked[0] + g.blocked[1]:
                new.backlogged(g)
        self._queue_conductor(dp, 0)

    def _detach(self, dev: Device, g: Group) -> None:
        """Remove group ``g``. Its held requests and sleeping submitters go to the default group
        (the original flushed them downwards uncharged while suspending the whole device)."""
        dp = dev.dp
        head = dev.head
        held = self._unhold_all(g)
        sleepers = self._sleepers(g)
        dp.policy.group_removed(g)
        dp.groups.remove(g)
        del dev.groups[g.id]
        if g.going_down:
            dp.going_down -= 1
        moved = len(held) + len(sleepers)
        if moved:
            g.active -= moved
            if g.active == 0:
                dp.busy_groups -= 1
            if head.active == 0:
                head.busy_since = self.now
                self._became_busy(dp)
            head.active += moved
        for req in held:
            req.group = head
            self._hold(head, req)
        for req in sleepers:
            req.group = head
        if sleepers:
            self.wake(deque(sleepers))
        if held:
            self._queue_conductor(dp, 0)

    def message(self, name: str, words: str | Sequence[str], now: int = 0) -> None:
        """``dmsetup message NAME 0 WORDS``. A refused message raises and changes nothing."""
        self._tick(now)
        dev = self.device(name)
        run_message(self, dev, words)
        dp = dev.dp
        if dp.blocked[0] + dp.blocked[1] > 0:
            self._queue_conductor(dp, 0)
        self._settle()

    # -- MessageTarget: what each message changes, once checked --------------------------------
    def group_paths(self, dev: Device) -> bool:
        return dev.type_name == "cgroup"

    def policy_names(self) -> Sequence[str]:
        return tuple(POLICIES)

    def attach_group(self, dev: Device, key: GroupKey) -> bool:
        found = dev.groups.get(key)
        if found is None:
            self._attach(dev, key, None, by_rule=False)
            return True
        if found.by_rule:
            found.by_rule = False  # attached by hand now: the table lists it
            return True
        return False

    def detach_group(self, dev: Device, key: GroupKey) -> bool:
        gone = dev.groups.get(key)
        if gone is None:
            return False
        self._detach(dev, gone)
        return True

    def switch_policy(self, dev: Device, name: str) -> None:
        if name != dev.dp.policy_name:
            self._switch_policy(dev.dp, name, 0)

    def io_limit_changed(self, dev: Device, adaptive: bool) -> None:
        self._set_window(dev.dp, adaptive)
        dev.dp.policy.io_limit_changed()

    def set_group_param(self, dev: Device, key: GroupKey, cmd: str, value: str | None) -> bool:
        target = dev.head if key == ID_ANY else dev.groups.get(key)
        if target is None:
            return False
        dev.dp.policy.set_param(target, cmd, value)
        return True

    # ======================================================================================
    # Classification rules
    # ======================================================================================
    def _by_path_or_rule(self, dev: Device, owner: Submitter, gid: int) -> Group | None:
        """No group by id: the group attached by the submitter's cgroup path (the same path
        after its cgroup was re-created), else a new group from the first matching rule."""
        path = owner.cgroup_path if dev.type_name == "cgroup" else None
        if path:
            found = dev.groups.get(path)
            if found is not None:
                return found
        field = RULE_FIELDS.get(dev.type_name)
        for rule in dev.rules:
            if rule.field != field:
                continue  # kept from before a 'type' message; the next set_rules replaces it
            if field == "cgroup":
                if path and rule.matches_path(path):
                    return self._attach(dev, path, rule.value, by_rule=True)
            elif gid != ID_ANY and rule.matches_id(gid):
                return self._attach(dev, gid, rule.value, by_rule=True)
        return None

    def _attach(self, dev: Device, key: GroupKey, value: str | None, by_rule: bool) -> Group:
        """A new group on ``dev`` with the policy's ``value`` (None: its default)."""
        dp = dev.dp
        parsed = dp.policy.parse_group_value(value, "Cannot create ioband group")
        g = dev.groups[key] = self._new_group(dev, key)
        g.by_rule = by_rule
        dp.policy.group_added(g, parsed)
        if isinstance(key, str):
            dev.by_path = True
        return g

    def set_rules(self, name: str, rules: Sequence[Rule], now: int = 0) -> None:
        """The device's rules (they replace the old ones). Groups attached by an old rule stay;
        they go when their cgroup does (or by ``detach``)."""
        self._tick(now)
        dev = self.device(name)
        field = RULE_FIELDS.get(dev.type_name)
        for i, rule in enumerate(rules):
            if rule.field != field:
                raise InvalidArgument(
                    f"rule[{i}]: a rule on {rule.field} does not apply to group type"
                    f" {dev.type_name}"
                )
            dev.dp.policy.parse_group_value(rule.value, f"rule[{i}]: Cannot create ioband group")
        dev.rules = tuple(rules)
        dev.by_path = any(isinstance(k, str) for k in dev.groups) or any(
            r.field == "cgroup" for r in dev.rules
        )

    # ======================================================================================
    # Output
    # ======================================================================================
    def table(self, name: str) -> str:
        """``<start> <len> ioband <dev> <id> <io_throttle> <io_limit> <type> <policy> ...``"""
        dev = self.device(name)
        dp = dev.dp
        return format_table(
            dev.start, dev.length, dev.display, dp.name, dp.io_throttle,
            0 if dp.adaptive is not None else dp.io_limit,
            dev.type_name, dp.policy_name, dp.policy.show_table(dev),
        )  # fmt: skip

    def status(self, name: str, fmt: str = "legacy") -> str:
        """``<start> <len> ioband <device-group id>`` then one block per group: the default group
        (-1) first, then attached groups by id. ``legacy``: 7 columns (id, reads, delayed reads,
        read sectors, writes, delayed writes, write sectors); ``diskstats``: 12 columns."""
        dev = self.device(name)
        parts = [f"{dev.start} {dev.length} ioband {dev.dp.name}"]
        parts.extend(self.group_status(g, fmt) for g in dev.all_groups())
        return "".join(parts)

    def group_status(self, g: Group, fmt: str = "legacy") -> str:
        """One group's block of a ``status`` line (`` <id> <counters...>``)."""
        ms = self.ms
        busy = g.io_ticks + (self.now - g.busy_since if g.active else 0)
        return status_block(
            fmt,
            g.label,
            g.ios,
            g.delayed,
            g.sectors,
            (ms(g.ticks[0]), ms(g.ticks[1])),
            g.blocked[0] + g.blocked[1],
            ms(busy),
            ms(g.time_in_queue),
        )

    # ======================================================================================
    # What the target asks of the scheduler (``Engine`` provides them)
    # ======================================================================================
    def _new_device_group(
        self, name: str, io_throttle: int, io_limit: int, nr_requests: int | None
    ) -> DeviceGroup:
        """A new device group (its window and policy are set next)."""
        raise NotImplementedError

    def _settle(self) -> None:
        """Run what the last change made ready (conductors, woken submitters)."""
        raise NotImplementedError

    def _queue_conductor(self, dp: DeviceGroup, delay: int) -> None:
        """Run ``dp``'s conductor ``delay`` jiffies from now (0: when the call settles)."""
        raise NotImplementedError

    def wake(self, waitq: deque[Request], same_group: bool = False) -> None:
        """Every submitter asleep on ``waitq`` re-evaluates its condition."""
        raise NotImplementedError

    def _became_busy(self, dp: DeviceGroup) -> None:
        """A group of ``dp`` has its first request held or in flight."""
        raise NotImplementedError

    def _set_window(self, dp: DeviceGroup, adaptive: bool) -> None:
        """Set up ``dp``'s window for its io_limit: adaptive (``io_limit 0``) or pinned."""
        raise NotImplementedError

    def _hold(self, g: Group, req: Request) -> None:
        """Hold ``req`` in ``g``'s queue."""
        raise NotImplementedError

    def _issue_now(self, req: Request) -> None:
        """Issue ``req`` without scheduling it (its device is going away)."""
        raise NotImplementedError

    def _unhold_all(self, g: Group) -> list[Request]:
        """Take every held request out of ``g``."""
        raise NotImplementedError

    def _sleepers(self, g: Group) -> list[Request]:
        """Take every submitter asleep on ``g``."""
        raise NotImplementedError
