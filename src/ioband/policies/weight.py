"""The ``weight`` and ``weight-iosize`` policies (dm-ioband v1.14), flat groups.

Tokens are handed out per epoch in proportion to weight; a request costs one token (``weight``)
or one token per sector (``weight-iosize``). The decisions are the original's (epochs, the
dominant group, carryover, token_extra, batches of TOKEN_BATCH_UNIT, iopriority, queue caps); only
``choose`` differs in *how* it finds the best group: an indexed heap instead of a scan of every
group, which gives the same answer (see ``WeightPolicy.choose``).
"""

from __future__ import annotations

from heapq import heappush
from typing import TYPE_CHECKING, Final, cast

from ioband.core.cint import INT_MAX, cdiv
from ioband.core.grammar import bounded_int, parse_token_param, parse_weight
from ioband.policies.base import (
    R_OK,
    R_YIELD,
    SLOT_BITS,
    SLOT_MASK,
    Policy,
    enrol,
    heap_key,
    keyed,
    top_eligible,
)

if TYPE_CHECKING:
    from ioband.core.model import Device, DeviceGroup, Group
    from ioband.core.request import Request

DEFAULT_WEIGHT: Final = 100
DEFAULT_TOKENPOOL: Final = 2048
DEFAULT_BUCKET: Final = 2
IOBAND_IOPRIO_BASE: Final = 100
TOKEN_BATCH_UNIT: Final = 20
PROCEED_THRESHOLD: Final = 8
LOCAL_ACTIVE_RATIO: Final = 8
GLOBAL_ACTIVE_RATIO: Final = 16
OVERCOMMIT_RATE: Final = 4
PAGE_TOKEN_UNIT: Final = 3  # PAGE_SHIFT - 9 with 4 KiB pages


class WeightPolicy(Policy):
    name = "weight"
    family = "weight"
    token_unit = 0

    def __init__(self, dp: DeviceGroup, token_base: object) -> None:
        super().__init__(dp, token_base)
        base = token_base if isinstance(token_base, int) else 0  # parse_token_base's int
        self.epoch = 0
        self.current: Group | None = None
        self.dominant: Group | None = None
        self.expired: Group | None = None  # write-only in the original; kept for inspection
        self.token_extra = 0
        self.yield_mark = 0
        self.weight_total = 0
        # What the user set (0 = default), so that a later io_limit change keeps them.
        self.token_set = base
        self.carryover_set = 0
        self.token_bucket = 0
        self.carryover = 1
        self.token_left = 0
        self.init_token_bucket(base, 0)
        self.token_left = self.token_bucket
        # Index of backlogged groups (see choose): a heap of groups with tokens, by iopriority
        # then creation order, plus groups out of tokens this epoch and groups whose refill is
        # due. All entries are ints (base.heap_key; at 10,000 groups an epoch re-keys
        # thousands, and as tuples they had weight-iosize spend 60 % of its time in full
        # collections). A refill entry is ``(sched_ver << SLOT_BITS) | slot``: live while the
        # version is the group's.
        self.linear = False  # True: scan every group like the original (reference mode)
        self._heap: list[int] = []
        self._exhausted: list[int] = []
        self._refill: list[int] = []
        self._dirty: list[Group] = []
        # A group's index_slot -> the group, in creation order. Slots are numbered afresh only
        # when no entry is left (_reindex_all); a removed group's slot stays empty until then.
        self._slots: list[Group | None] = []

    # -- parameters --------------------------------------------------------------------------
    @classmethod
    def parse_token_base(cls, text: str | None) -> int:
        if text is None:
            return 0
        return bounded_int(text, 0, INT_MAX, "token_base", "Invalid policy parameter")

    @classmethod
    def parse_group_value(cls, text: str | None, error: str) -> int:
        weight = parse_weight(text, error)
        return DEFAULT_WEIGHT if weight is None else weight

    def init_token_bucket(self, token_bucket: int, carryover: int) -> None:
        dp = self.dp
        self.token_bucket = token_bucket or (dp.io_limit * 2 * DEFAULT_BUCKET) << self.token_unit
        self.carryover = max(
            1, carryover or (DEFAULT_TOKENPOOL << self.token_unit) // self.token_bucket
        )
        self.token_left = 0

    def set_param(self, g: Group, cmd: str, value: str | None) -> None:
        if cmd == "weight":
            self.set_weight(g, self.parse_group_value(value, "Invalid weight"))
        elif cmd == "token":
            v = parse_token_param(cmd, value)
            self.token_set = v
            self.init_token_bucket(v, self.carryover_set)
            self.reshare()
            self.token_extra = 0
        elif cmd == "carryover":
            v = parse_token_param(cmd, value)
            self.carryover_set = v
            self.init_token_bucket(self.token_bucket, v)
            self.reshare()
            self.token_extra = 0
        else:
            super().set_param(g, cmd, value)

    def io_limit_changed(self) -> None:
        # The original recomputed both from defaults here, silently dropping what the user had
        # set; we recompute only the defaulted ones (docs/deviations.md).
        self.init_token_bucket(self.token_set, self.carryover_set)
        self.reshare()
        # Leftover credit was counted in the old bucket's tokens; against a smaller bucket it
        # could make the refill divisor (bucket - extra/2) zero or negative.
        self.token_extra = 0

    # -- groups ------------------------------------------------------------------------------
    def group_added(self, g: Group, value: object, *, reshare: bool = True) -> None:
        g.index_slot = len(self._slots)
        g.heap_key = 0  # a key left by a previous policy instance is not in this heap
        self._slots.append(g)
        g.my_epoch = self.epoch
        g.consumed = 0
        g.token = g.token_initial = 1
        g.limit_bucket = 1
        g.weight = 0
        self._store_weight(g, cast(int, value) if value is not None else DEFAULT_WEIGHT)
        if reshare:
            self.reshare()

    def group_removed(self, g: Group, *, reshare: bool = True) -> None:
        self._store_weight(g, 0)
        if reshare:
            self.reshare()
        self.dominant = None
        self.expired = None
        if self.current is g:
            self.current = None
        g.sched_ver += 1  # its entries go stale
        g.heap_key = 0
        if self._slots[g.index_slot] is g:
            self._slots[g.index_slot] = None

    def carried_value(self, g: Group) -> object:
        return g.weight

    def carried_weight(self, g: Group) -> int | None:
        return g.weight

    @classmethod
    def value_from_weight(cls, weight: int | None) -> object:
        return weight

    def _store_weight(self, g: Group, weight: int) -> None:
        self.weight_total += weight - g.weight
        g.weight = weight

    def set_weight(self, g: Group, weight: int) -> None:
        self._store_weight(g, weight)
        self.reshare()

    def reshare(self) -> None:
        """``set_weight``/``__set_weight`` for flat groups: every group of the device group is a
        sibling, and each one's balance is reset to its new per-epoch share (as the original)."""
        total = self.weight_total
        bucket = self.token_bucket
        io_limit = self.dp.io_limit
        for g in self.dp.groups:
            if total > 0:
                token = max(1, bucket * g.weight // total)
                limit = max(1, io_limit * g.weight // total)
            else:
                token = limit = 1
            g.token = g.token_initial = token
            g.limit_bucket = limit
            g.limit = max(1, limit // OVERCOMMIT_RATE)
        self._reindex_all()

    # -- tokens ------------------------------------------------------------------------------
    def get_token(self, g: Group) -> int:
        token = g.token
        lag = self.epoch - g.my_epoch
        if lag:
            token += g.token_initial * min(lag, self.carryover)
        if g.going_down:
            token += g.token_initial * self.carryover * 2
        return token

    def iopriority(self, g: Group) -> int:
        token = self.get_token(g)
        if token >= 0:
            return token * IOBAND_IOPRIO_BASE // g.token_initial + 1
        return cdiv(token * IOBAND_IOPRIO_BASE, g.token_initial) + 1

    def may_issue(self, g: Group) -> bool:
        # can_submit's value is only tested against 0 here: with tokens left it is >= 1.
        return g.token > 0 or self.can_submit(g) != 0

    def can_submit(self, g: Group) -> int:
        """``is_token_left``: the group's priority, 0 if it may not issue; refills lazily."""
        if g.token > 0:
            return self.iopriority(g)
        if g.going_down:
            g.token = g.token_initial
            self._touch(g)
            return self.iopriority(g)
        lag = self.epoch - g.my_epoch
        if lag == 0:
            return 0
        g.my_epoch = self.epoch
        delta = g.token_initial * min(lag, self.carryover)
        self.token_left -= delta
        extra = self.token_extra * g.token_initial // (self.token_bucket - self.token_extra // 2)
        delta += extra
        g.token += delta
        g.consumed = 0
        if g is self.current:
            self.yield_mark += delta
        self._touch(g)
        return self.iopriority(g) if g.token > 0 else 0

    def charge(self, g: Group, req: Request, urgent: bool) -> int:
        return self.consume(g, 1, urgent)

    def consume(self, g: Group, count: int, urgent: bool) -> int:
        """``consume_token``: dominant tracking, expiry, then the batch (yield) accounting."""
        if (
            g.consumed * LOCAL_ACTIVE_RATIO >= g.token_initial
            or g.consumed * GLOBAL_ACTIVE_RATIO >= self.token_bucket
        ):
            dominant = self.dominant
            if dominant is None or self.get_token(g) > self.get_token(dominant):
                self.dominant = g
        token = g.token
        if token > 0 and token - count <= 0 and self.epoch == g.my_epoch:
            self.expired = g
            if self.dominant is g:
                self.dominant = None
        if g is not self.current:
            self.current = g
            self.yield_mark = token - (TOKEN_BATCH_UNIT << self.token_unit)
        g.token = token = token - count
        g.consumed += count
        if not g.dirty:
            g.dirty = True
            self._dirty.append(g)
        if token <= self.yield_mark and not urgent:
            self.current = None
            return R_YIELD
        return R_OK

    def charge_remote(self, g: Group, cost: float, reserved: float = 0.0) -> None:
        """Service received elsewhere spends the group's tokens as local service would (without
        the batch and dominant bookkeeping of a local charge, which concern this host's turn).
        The debt is bounded by what the carryover lets a group bank (``token_initial x
        carryover``), so a group served mostly elsewhere is not starved here for longer than an
        idle one may bank. Fractions carry over to the next exchange."""
        owed = cost + g.remote_carry
        whole = int(owed)
        g.remote_carry = owed - whole
        if whole <= 0:
            return
        g.token = max(g.token - whole, -g.token_initial * self.carryover)
        self._touch(g)

    def deserves_anticipation(self, g: Group) -> bool:
        """It has tokens left in this epoch (or an epoch began since it last charged)."""
        return g.token > 0 or self.epoch != g.my_epoch

    def restart(self) -> bool:
        """``make_global_epoch``: start a new epoch unless the dominant group still holds more
        than ~1/8 of its share while the device is busy (in-flight >= io_throttle, or the
        whole dispatch window when that is smaller: an adaptive window may be below it)."""
        dp = self.dp
        d = self.dominant
        if (
            d is not None
            and self.iopriority(d) * PROCEED_THRESHOLD > IOBAND_IOPRIO_BASE
            and dp.issued[0] + dp.issued[1] >= min(dp.io_throttle, dp.window)
        ):
            return False
        self.epoch += 1
        self.token_extra = max(0, self.token_left)
        self.token_left = self.token_bucket
        self.expired = None
        self.dominant = None
        # Every group out of tokens may now be refilled; groups still holding tokens (rare:
        # see choose) see their lag bonus grow, so their keys are recomputed.
        refill = self._refill
        for e in self._exhausted:
            if self._due(e) is not None:
                refill.append(e)
        self._exhausted = []
        slots = self._slots
        live = [key for key in self._heap if keyed(slots, key) is not None]
        self._heap = live
        for key in live:
            self._touch(cast("Group", keyed(slots, key)))
        return True

    # -- choosing the best group in O(log n) ---------------------------------------------------
    def _due(self, e: int) -> Group | None:
        """The group of a refill entry, None if it is stale (re-keyed, or removed)."""
        g = self._slots[e & SLOT_MASK]
        return g if g is not None and g.sched_ver == e >> SLOT_BITS else None

    def _touch(self, g: Group) -> None:
        if not g.dirty:
            g.dirty = True
            self._dirty.append(g)

    def backlogged(self, g: Group) -> None:
        self._touch(g)

    def _reindex_all(self) -> None:
        self._heap = []
        self._exhausted = []
        self._refill = []
        groups = self.dp.groups
        for i, g in enumerate(groups):
            g.sched_ver += 1
            g.dirty = True  # also clears a flag left by a previous policy instance
            g.index_slot = i  # no entry is left: the slots are numbered afresh
            g.heap_key = 0
        self._slots = list(groups)
        self._dirty = list(groups)

    def _index(self, g: Group) -> None:
        g.dirty = False
        g.sched_ver += 1
        if g.blocked[0] + g.blocked[1] == 0:
            g.heap_key = 0
            return
        enrol(self._slots, g)
        token = g.token
        if token > 0:
            if self.epoch != g.my_epoch or g.going_down:
                pri = self.iopriority(g)
            else:
                pri = token * IOBAND_IOPRIO_BASE // g.token_initial + 1
            key = heap_key(pri, g)
            if key != g.heap_key:  # else its live key is in the heap already
                g.heap_key = key
                heappush(self._heap, key)
            return
        g.heap_key = 0
        if g.my_epoch != self.epoch:
            self._refill.append((g.sched_ver << SLOT_BITS) | g.index_slot)
        else:
            self._exhausted.append((g.sched_ver << SLOT_BITS) | g.index_slot)

    def _flush_dirty(self) -> None:
        dirty = self._dirty
        self._dirty = []
        for g in dirty:
            self._index(g)

    def choose(self) -> Group | None:
        """Same answer as the original's scan of every group, found through an index.

        Why it is the same: ``can_submit`` only has a side effect for a backlogged group with no
        tokens and a new epoch to claim (the refill), and those refills do not depend on one
        another's order; so we refill exactly those groups, in one pass, then take the highest
        ``iopriority`` (first created on a tie) from a heap. A group's key changes only when its
        tokens change (we re-key it: ``_dirty``), when shares are recomputed (re-key all) or at a
        new epoch, which the conductor only starts when no backlogged group has tokens left.
        Groups being flushed get a priority boost: then we scan, as the original.
        """
        dp = self.dp
        limit = dp.window  # the dispatch cap: io_limit, or the adaptive window
        issued = dp.issued
        if issued[0] >= limit and issued[1] >= limit:
            return None
        if self.linear or dp.going_down:
            self._flush_dirty()
            return super().choose()
        if self._dirty:
            dirty = self._dirty
            self._dirty = []
            for g in dirty:
                self._index(g)
        if self._refill:
            pending = self._refill
            self._refill = []
            for e in pending:
                due = self._due(e)
                if due is None:
                    continue
                g = due
                if g.blocked[0] + g.blocked[1] == g.prio_blocked and issued[g.prio_sync] >= limit:
                    self._refill.append(e)  # skipped by the scan: no refill yet
                    continue
                self.can_submit(g)
                self._touch(g)
            self._flush_dirty()
        heap = self._heap
        return top_eligible(heap, self._slots, issued, limit)

    # -- display -----------------------------------------------------------------------------
    def show_table(self, device: Device) -> str:
        parts = [f" {self.token_bucket} :{device.head.weight}"]
        parts.extend(f" {g.label}:{g.weight}" for g in device.table_groups())
        return "".join(parts)

    def show_device(self) -> str:
        return f" token={self.token_bucket} carryover={self.carryover}"

    def show_group(self, g: Group) -> str:
        return f" weight={g.weight}%"


class WeightIosizePolicy(WeightPolicy):
    """``weight-iosize``: one token per 512-byte sector; everything token-sized scales by 8."""

    name = "weight-iosize"
    token_unit = PAGE_TOKEN_UNIT

    def charge(self, g: Group, req: Request, urgent: bool) -> int:
        return self.consume(g, req.sectors, urgent)

    def service_cost(self, g: Group) -> float:
        return float(g.sectors[0] + g.sectors[1])


class DefaultPolicy(WeightPolicy):
    """``default``: an alias of ``weight`` that keeps its own name in table output."""

    name = "default"
