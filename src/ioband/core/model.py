"""The objects the engine schedules: device groups (shared pools), devices (targets) and groups.

Names follow the original where it helps cross-checking: a ``DeviceGroup`` is dm-ioband's
``ioband_device`` (``dp``, the bandwidth pool shared by every target with the same device-group
id), a ``Device`` is one dm target with its default group (``head``), a ``Group`` is an
``ioband_group``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

from ioband.core.classify import IdOf
from ioband.core.grammar import GroupKey, Rule, key_order, key_text
from ioband.core.histogram import Histogram

if TYPE_CHECKING:
    from ioband.core.engine import Engine
    from ioband.core.request import Request
    from ioband.core.window import AdaptiveWindow
    from ioband.policies.base import Policy


#: A group's think time counts up to this many jiffies (and starts there: a group is waited
#: for only once it has shown that it comes back fast).
THINK_CAP: Final = 1000


class Group:
    """One bandwidth group. Policy fields live here too (flat slots keep the hot path fast)."""

    __slots__ = (  # noqa: RUF023  (grouped by purpose, not sorted)
        # identity and queues
        "id", "by_rule", "cgroup_path", "device", "dp", "seq", "queue", "prio_queue", "prio_sync",
        "blocked", "prio_blocked", "blocked_flag", "waitq", "going_down", "need_up",
        # statistics
        "ios", "sectors", "delayed", "ticks", "io_ticks", "time_in_queue", "active",
        "busy_since", "latency", "hold",
        # anticipation (adaptive window): its last completion and its think time
        "last_done", "think",
        # weight policies
        "weight", "my_epoch", "token", "token_initial", "limit", "limit_bucket",
        "consumed", "sched_ver", "dirty", "index_slot", "heap_key",
        # range-bw
        "min_bw", "max_bw", "io_mode", "slice_expired", "min_bw_token", "max_bw_token",
        "bw_consumed", "over_max", "time_slice", "slice_start", "slice_end", "timer_set",
        "timer_token", "maxbw_waitq",
        # cluster-wide device groups (ioband.cluster): remote service not yet charged
        "remote_carry",
        # a policy's own per-group state (mclock's tags): one attribute read per request
        # where a dict keyed by the group cost a lookup, a cold line at 10,000 groups
        "policy_state",
    )  # fmt: skip

    # Fields the owning policy sets in ``group_added`` (declared here for the type checker).
    my_epoch: int
    token: int
    token_initial: int
    limit_bucket: int
    consumed: int
    min_bw: int
    max_bw: int
    io_mode: int
    slice_expired: bool
    min_bw_token: int
    max_bw_token: int
    bw_consumed: int
    over_max: bool
    time_slice: int
    slice_start: int
    slice_end: int
    timer_set: bool

    def __init__(self, gid: GroupKey, device: Device, seq: int) -> None:
        self.id = gid  # an id, or a cgroup path (type cgroup)
        self.by_rule = False  # attached by a rule, not by the table or a message
        # Its cgroup's path (type cgroup): the key of a group attached by path, else learned from
        # its first request that carries one (None: not yet; "": not a cgroup device's group).
        # The mclock policy nests groups by it.
        self.cgroup_path: str | None = (
            gid if isinstance(gid, str) else None if device.type_name == "cgroup" else ""
        )
        self.device = device
        self.dp = device.dp
        self.seq = seq
        self.queue: deque[Request] = deque()
        self.prio_queue: deque[Request] = deque()
        self.prio_sync = 0
        self.blocked = [0, 0]
        self.prio_blocked = 0
        self.blocked_flag = [False, False]
        self.waitq: list[deque[Request]] = [deque(), deque()]
        self.going_down = False
        self.need_up = False
        self.latency = Histogram()  # arrival at ioband to completion (held + queued + service)
        self.hold = Histogram()  # arrival to dispatch: the time ioband held it
        self.reset_stats()
        self.active = 0
        self.busy_since = 0
        self.limit = 1
        self.weight = 0
        self.sched_ver = 0
        self.index_slot = 0  # where the weight policies' index entries find it (their _slots)
        self.heap_key = 0  # the weight policies' live heap key of it (0: none)
        self.dirty = False
        self.timer_token = 0
        self.maxbw_waitq: deque[Request] = deque()
        self.last_done = -1  # jiffy of its last sync completion (-1: none yet)
        self.think = float(THINK_CAP)  # mean jiffies from a completion to its next request
        self.remote_carry = 0.0  # a cluster-wide group's remote service not yet charged (weight)
        self.policy_state: object = None  # owned by the policy that set it (mclock: _State)

    def reset_stats(self) -> None:
        self.ios = [0, 0]
        self.sectors = [0, 0]
        self.delayed = [0, 0]
        self.ticks = [0, 0]
        self.io_ticks = 0
        self.time_in_queue = 0
        self.latency.reset()
        self.hold.reset()

    @property
    def label(self) -> str:
        """How status, top and metrics name the group: ``-1`` (the default group), its id, or
        ``/<cgroup path>``; as the grammar reads it back."""
        return key_text(self.id)

    @property
    def nr_blocked(self) -> int:
        return self.blocked[0] + self.blocked[1]

    def __repr__(self) -> str:
        return f"<Group {self.device.name}:{self.id} held={self.blocked}>"


class DeviceGroup:
    """The shared pool: policy, io_throttle, io_limit, tokens, in-flight and held counters."""

    policy: Policy  # set right after construction (the policy is built on the device group)

    def __init__(
        self, name: str, engine: Engine, io_throttle: int, io_limit: int, nr_requests: int | None
    ) -> None:
        self.name = name
        self.engine = engine
        self.io_throttle = io_throttle
        self.io_limit = io_limit  # as set, or derived from nr_requests when adaptive
        # The dispatch window: requests of each class in flight at most. io_limit when pinned;
        # with ``io_limit 0`` (adaptive) what ``adaptive`` measures the store needs.
        self.window = io_limit
        self.adaptive: AdaptiveWindow | None = None
        # Anticipation (adaptive window only): the shallow group waited for. Until it comes
        # back or ``idle_until`` passes, the others get one slot less of the window.
        self.anticipating: Group | None = None
        self.idle_until = 0
        self.idle_since = -1  # when the store went idle for the wait (-1: it did not)
        self.idle_seq = 0  # invalidates the timers of earlier waits
        # Groups with requests held or in flight, and when two or more last were: the adaptive
        # window opens (``alone``) while one group has had the store to itself for a moment.
        self.busy_groups = 0
        self.contended_at = -(1 << 62)
        self.alone = False
        self.last_done_ns = 0  # the last completion (a policy that costs the store's time)
        self.nr_requests = nr_requests
        self.policy_name = ""
        self.issued = [0, 0]  # g_issued[ASYNC], g_issued[SYNC]
        self.blocked = [0, 0]  # g_blocked
        self.blocked_flag = [False, False]
        self.waitq: list[deque[Request]] = [deque(), deque()]
        self.urgent: deque[Request] = deque()
        self.groups: list[Group] = []  # every group of every member device, creation order
        self.devices: list[Device] = []
        self.conductor_pending = False
        self.going_down = 0  # number of groups being flushed

    @property
    def nr_issued(self) -> int:
        return self.issued[0] + self.issued[1]

    @property
    def nr_blocked(self) -> int:
        return self.blocked[0] + self.blocked[1]

    def __repr__(self) -> str:
        return (
            f"<DeviceGroup {self.name} {self.policy_name} issued={self.issued} held={self.blocked}>"
        )


class Device:
    """One ioband device (a dm target): its table, group type, default group and attached groups."""

    head: Group  # the default group, made right after the device

    def __init__(
        self, name: str, dp: DeviceGroup, start: int, length: int, backing: str, display: str
    ) -> None:
        self.name = name
        self.dp = dp
        self.start = start
        self.length = length
        self.backing = backing  # the table's <device> field as given
        self.display = display  # how the table shows it (major:minor for block devices)
        self.type_name = "none"
        self.id_of: IdOf | None = None
        self.groups: dict[GroupKey, Group] = {}  # attached groups by id or cgroup path
        self.rules: tuple[Rule, ...] = ()  # attach a new submitter's group by itself
        self.by_path = False  # a group is keyed by a cgroup path, or a cgroup rule exists
        self.suspended = False
        self.removed = False
        self.suspend_waiters: deque[Request] = deque()
        self.inflight = 0

    def all_groups(self) -> list[Group]:
        """The default group, then attached groups in ascending id (status and table order)."""
        return [self.head, *(self.groups[i] for i in sorted(self.groups, key=key_order))]

    def table_groups(self) -> list[Group]:
        """The attached groups a table lists: not those a rule attached (the rule makes them
        again), ids ascending then paths."""
        return [g for g in self.all_groups()[1:] if not g.by_rule]

    def __repr__(self) -> str:
        keys = sorted(self.groups, key=key_order)
        return f"<Device {self.name} type={self.type_name} groups={keys}>"
