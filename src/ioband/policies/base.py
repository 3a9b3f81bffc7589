"""The policy interface: dm-ioband's hook table as one small class.

The engine owns queues, counters and wake-ups; a policy decides who may issue (``can_submit``),
charges what is issued (``charge``), starts new rounds (``restart``), caps per-group queues
(``should_block``) and keeps its per-group parameters. Policies never touch the clock: they read
``engine.now`` (jiffies) that the caller passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from ioband.errors import InvalidArgument

if TYPE_CHECKING:
    from ioband.core.grammar import GroupKey
    from ioband.core.model import Device, DeviceGroup, Group
    from ioband.core.request import Request

R_OK = 0
R_BLOCK = 1
R_YIELD = 2


class Policy:
    """Base class; subclasses implement the hooks. Parameters arrive unparsed (grammar strings)."""

    name: ClassVar[str]
    token_unit: ClassVar[int] = 0

    def __init__(self, dp: DeviceGroup, token_base: int) -> None:
        self.dp = dp
        self.engine = dp.engine

    # -- construction-time validation (nothing may change before all of it passes) ---------
    @classmethod
    def parse_token_base(cls, text: str | None) -> int:
        raise NotImplementedError

    @classmethod
    def parse_group_value(cls, text: str | None, error: str) -> object:
        """Validate a group's parameter (table ``:VALUE``/``ID:VALUE``, ``attach`` default)."""
        raise NotImplementedError

    @classmethod
    def check_groups(cls, head: object, groups: dict[GroupKey, object]) -> None:
        """Validate the parsed group values of a table together (mclock: parents exist, no
        cycle), before anything is created. Most policies' values are independent."""

    # -- group life cycle -------------------------------------------------------------------
    def group_added(self, g: Group, value: object, *, reshare: bool = True) -> None:
        raise NotImplementedError

    def group_removed(self, g: Group, *, reshare: bool = True) -> None:
        raise NotImplementedError

    def reshare(self) -> None:
        """Recompute every group's derived share after a batch of ``group_added(reshare=False)``."""

    def paths_changed(self) -> None:
        """A group's cgroup path became known (type cgroup, a group attached by id): a policy
        with a hierarchy takes parents from the cgroup nesting."""

    def carried_value(self, g: Group) -> object:
        """The group parameter that survives a switch to a policy of the same family."""
        return None

    def carried_weight(self, g: Group) -> int | None:
        """The group's weight, carried to a policy of another family that has weights."""
        return None

    @classmethod
    def value_from_weight(cls, weight: int | None) -> object:
        """The group value a switch from another family starts from, given the group's weight
        there (None: none, or that policy has no weights): the policy's default if None."""
        return None

    family: ClassVar[str] = ""
    #: The policy paces groups in time itself (range-bw): the adaptive window must not come
    #: down to what they keep in flight, which would only slow them.
    paces: ClassVar[bool] = False

    # -- scheduling hooks -------------------------------------------------------------------
    def can_submit(self, g: Group) -> int:
        raise NotImplementedError

    def charge(self, g: Group, req: Request, urgent: bool) -> int:
        raise NotImplementedError

    def restart(self) -> bool:
        raise NotImplementedError

    def may_issue(self, g: Group) -> bool:
        """``can_submit(g) != 0`` (release loops need no priority); policies may shortcut it."""
        return self.can_submit(g) != 0

    #: ``should_block(g, sync)``: the per-group queue cap that puts a submitter to sleep.
    #: None means the usual ``g.blocked[sync] >= g.limit``, which the engine checks inline.
    should_block: Callable[[Group, int], bool] | None = None

    #: ``hold_back(g)``: a wait queue the submitter must sleep on before queueing at all
    #: (range-bw: a group over its max), or None. None here: the policy has no such wait.
    hold_back: Callable[[Group], deque[Request] | None] | None = None

    #: ``hold(g, req)`` / ``pop(g)``: how a group queues what it holds. None: one FIFO
    #: (``g.queue``), as both original policies; the engine then does it inline.
    hold: Callable[[Group, Request], None] | None = None
    pop: Callable[[Group], Request | None] | None = None

    # -- cluster-wide device groups (ioband.cluster) ------------------------------------------
    def service_cost(self, g: Group) -> float:
        """The service ``g`` has been given here so far, in this policy's unit of charge (what
        a host publishes for its peers to charge). From the group's counters: requests here."""
        return float(g.ios[0] + g.ios[1])

    def charge_remote(self, g: Group, cost: float) -> None:
        """``g`` was given ``cost`` (this policy's unit) on other hosts since the last exchange:
        account it as if served here, so that a group served on several hosts gets its
        weight's share of the cluster, not of each host (dmClock's ``delta``). Policies that
        account no share over time ignore it."""

    def deserves_anticipation(self, g: Group) -> bool:
        """Whether the adaptive window should keep a slot for ``g``, which just completed its
        last request and usually comes back soon: only policies that account shares over time
        say yes, when ``g`` has not had its share yet."""
        return False

    def backlogged(self, g: Group) -> None:
        """``g`` went from no held requests to some, or its held set changed outside a charge."""

    def choose(self) -> Group | None:
        """``choose_best_group``: the backlogged group with the highest ``can_submit``, the first
        in creation order on a tie. This reference version scans every group, as the original."""
        dp = self.dp
        limit = dp.window  # the dispatch cap: io_limit, or the adaptive window
        issued = dp.issued
        if issued[0] >= limit and issued[1] >= limit:
            return None
        best = None
        highest = 0
        can_submit = self.can_submit
        for g in dp.groups:
            n = g.blocked[0] + g.blocked[1]
            if n == 0 or (n == g.prio_blocked and issued[g.prio_sync] >= limit):
                continue
            pri = can_submit(g)
            if pri > highest:
                highest = pri
                best = g
        return best

    # -- parameters ---------------------------------------------------------------------------
    def set_param(self, g: Group, cmd: str, value: str | None) -> None:
        raise InvalidArgument(f"{cmd}: not a parameter of the {self.name} policy")

    def io_limit_changed(self) -> None:
        """The device group's io_limit changed (already validated and stored)."""

    # -- display ------------------------------------------------------------------------------
    def show_table(self, device: Device) -> str:
        raise NotImplementedError

    def show_device(self) -> str:
        return ""

    def show_group(self, g: Group) -> str:
        raise NotImplementedError
