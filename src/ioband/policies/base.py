"""The policy interface: dm-ioband's hook table as one small class.

The engine owns queues, counters and wake-ups; a policy decides who may issue (``can_submit``),
charges what is issued (``charge``), starts new rounds (``restart``), caps per-group queues
(``should_block``) and keeps its per-group parameters. Policies never touch the clock: they read
``engine.now`` (jiffies) that the caller passed in.
"""

from __future__ import annotations

from collections import deque
from heapq import heapify, heappop
from typing import TYPE_CHECKING, ClassVar, Final

from ioband.core.grammar import not_a_parameter

if TYPE_CHECKING:
    from ioband.core.grammar import GroupKey
    from ioband.core.model import Device, DeviceGroup, Group
    from ioband.core.request import Request

R_OK: Final = 0
R_BLOCK: Final = 1
R_YIELD: Final = 2

# The indexed policies (weight, range-bw) keep their backlogged groups in a heap of plain ints,
# not tuples holding the group: ints are nothing for the garbage collector (at 10,000 groups
# tuples re-keyed by the thousand made it promote and rescan everything held), and compare
# without unpacking. A key is ``(-priority << SLOT_BITS) | slot``: the highest priority first,
# then the slot, which follows creation order (the policy numbers its groups in ``dp.groups``
# order and appends new ones). The policy's ``slots`` list resolves a slot to its group, and a
# key is live while it is that group's ``heap_key``: a re-keyed group leaves its old key stale
# (dropped when it surfaces), an unchanged key is not pushed twice, a removed group's slot is
# empty. Slots are numbered afresh only when no entry is left.
SLOT_BITS: Final = 32
SLOT_MASK: Final = (1 << SLOT_BITS) - 1


def heap_key(priority: int, g: Group) -> int:
    return (-priority << SLOT_BITS) | g.index_slot


def enrol(slots: list[Group | None], g: Group) -> None:
    """Give ``g`` a slot if its own is not its (a group of a removed device: its slot was
    emptied or renumbered, yet the daemon's last requests to it must still be served)."""
    if g.index_slot >= len(slots) or slots[g.index_slot] is not g:
        g.index_slot = len(slots)
        g.heap_key = 0
        slots.append(g)


def keyed(slots: list[Group | None], key: int) -> Group | None:
    """The group of a heap key (or of a slot entry's low bits); None if the key is stale."""
    g = slots[key & SLOT_MASK]
    return g if g is not None and g.heap_key == key else None


def top_eligible(
    heap: list[int], slots: list[Group | None], issued: list[int], limit: int
) -> Group | None:
    """The group of the best live key in ``heap`` that may issue (the weight policies' and
    range-bw's choice). Stale keys are dropped; a group with nothing held is dropped and
    unkeyed (keyed again when it is backlogged again); a group holding only priority requests
    of a class at ``limit`` is skipped and its key put back."""
    skipped: list[int] | None = None
    best = None
    while heap:
        key = heap[0]
        found = slots[key & SLOT_MASK]
        if found is None or found.heap_key != key:
            heappop(heap)  # stale
            continue
        if found.blocked[0] + found.blocked[1] == 0:
            heappop(heap)
            found.heap_key = 0
            continue
        if found.blocked[0] + found.blocked[1] == found.prio_blocked and (
            issued[found.prio_sync] >= limit
        ):
            if skipped is None:
                skipped = []
            skipped.append(heappop(heap))
            continue
        best = found
        break
    if skipped:
        heap.extend(skipped)
        heapify(heap)
    return best


class Policy:
    """Base class; subclasses implement the hooks. Parameters arrive unparsed (grammar strings)."""

    name: ClassVar[str]
    token_unit: ClassVar[int] = 0

    def __init__(self, dp: DeviceGroup, token_base: object) -> None:
        """``token_base``: what ``parse_token_base`` returned (its type is the policy's)."""
        self.dp = dp
        self.engine = dp.engine
        # The engine reports each completion's store time (``completed``): a policy whose
        # cost is measured time sets it.
        self.timed = False

    # -- construction-time validation (nothing may change before all of it passes) ---------
    @classmethod
    def parse_token_base(cls, text: str | None) -> object:
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

    # Hooks with a default every policy may keep: methods, not ``None`` tested per request (a
    # compiled call through the class's method table costs less than the test did).
    def should_block(self, g: Group, sync: int) -> bool:
        """The per-group queue cap that puts a submitter to sleep."""
        return g.blocked[sync] >= g.limit

    def hold_back(self, g: Group) -> deque[Request] | None:
        """A wait queue the submitter must sleep on before queueing at all (range-bw: a group
        over its max), or None."""
        return None

    def hold(self, g: Group, req: Request) -> None:
        """Queue a held request in its group: one FIFO, as both original policies."""
        g.queue.append(req)

    def pop(self, g: Group) -> Request | None:
        """The group's next held request to release (None: nothing to release)."""
        return g.queue.popleft() if g.queue else None

    # -- cluster-wide device groups (ioband.cluster) ------------------------------------------
    def service_cost(self, g: Group) -> float:
        """The service ``g`` has been given here so far, in this policy's unit of charge (what
        a host publishes for its peers to charge). From the group's counters: requests here."""
        return float(g.ios[0] + g.ios[1])

    def reserved_cost(self, g: Group) -> float:
        """Of ``service_cost``, what was given here to meet ``g``'s reservation (dmClock's
        ``rho``; 0 for policies without reservations)."""
        return 0.0

    def charge_remote(self, g: Group, cost: float, reserved: float = 0.0) -> None:
        """``g`` was given ``cost`` (this policy's unit) on other hosts since the last exchange,
        ``reserved`` of it to meet its reservation: account it as if served here, so that a
        group served on several hosts gets its weight's share (and its reservation) of the
        cluster, not of each host (dmClock's ``delta`` and ``rho``). Policies that account no
        share over time ignore it."""

    def completed(self, g: Group, service_ns: int) -> None:
        """A request of ``g`` completed after ``service_ns`` of the store's time (from its
        dispatch, or from the previous completion if that was later: what it alone occupied
        the store). Called only when ``timed``."""

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
        raise not_a_parameter(cmd, self.name)

    def io_limit_changed(self) -> None:
        """The device group's io_limit changed (already validated and stored)."""

    # -- display ------------------------------------------------------------------------------
    def show_table(self, device: Device) -> str:
        raise NotImplementedError

    def show_device(self) -> str:
        return ""

    def show_group(self, g: Group) -> str:
        raise NotImplementedError
