"""The ``range-bw`` policy (ETRI, in dm-ioband 1.12-1.14): a min and a max bandwidth per group.

Per one-second period each group is served first up to its min (priority = min tokens still
missing x 10), then competes in "range" mode up to its max; at its max it stops ("no I/O" mode)
until the period ends and a timer wakes its submitters. When every group has met its min the
device enters "leftover" mode with random priorities 1..9. Units are KB/s; 1 KB = 2 sectors.
"""

from __future__ import annotations

import sys
from array import array
from collections import deque
from heapq import heappush
from typing import TYPE_CHECKING, Final, cast

from ioband.core.grammar import bounded_int, parse_range, parse_range_change
from ioband.policies.base import R_OK, R_YIELD, Policy, enrol, heap_key, top_eligible

if TYPE_CHECKING:
    from ioband.core.model import Device, DeviceGroup, Group
    from ioband.core.request import Request

DEFAULT_BUCKET: Final = 2
DEFAULT_TOKENPOOL: Final = 2048
MINBW_IO_MODE: Final = 0
LEFTOVER_IO_MODE: Final = 1
RANGE_IO_MODE: Final = 2
DEFAULT_IO_MODE: Final = 3
NO_IO_MODE: Final = 4
MINBW_PRIO_BASE: Final = 10
OVER_IO_RATE: Final = 4
TIME_COMPENSATOR: Final = 10
TOKEN_UNIT: Final = 3  # PAGE_SHIFT - 9 with 4 KiB pages: 1 token = 1 sector, 2 tokens per KB

WORD: Final = next(t for t in "IL" if array(t).itemsize == 4)  # an unsigned 32-bit array


def time_after(a: int, b: int) -> bool:
    return b - a < 0


def bw_to_token(kbps: int) -> int:
    return kbps * ((1 << TOKEN_UNIT) // 4)


class RangeBwPolicy(Policy):
    name = "range-bw"
    family = "range-bw"
    paces = True
    token_unit = TOKEN_UNIT

    def __init__(self, dp: DeviceGroup, token_base: object) -> None:
        super().__init__(dp, token_base)
        base = token_base if isinstance(token_base, int) else 0  # parse_token_base's int
        hz = self.engine.hz
        self.slice_base = hz // 10
        self.range_slice = hz // 50
        self.period = hz
        self.min_bw_total = 0
        self.max_bw_total = 0
        self.running: Group | None = None
        self.total_min_bw_token = 0
        self.consumed_min_bw_token = 0
        self.io_mode = MINBW_IO_MODE
        self.current: Group | None = None
        self.next_period = 0
        self.below_min = 0  # groups in MINBW or NO_IO mode (the leftover test, kept in O(1))
        # Only for display: the table shows token bucket x carryover, as the original.
        self.token_bucket = (dp.io_limit * 2 * DEFAULT_BUCKET) << TOKEN_UNIT
        pool = max(base or (DEFAULT_TOKENPOOL << TOKEN_UNIT), self.token_bucket)
        self.carryover = pool // self.token_bucket
        # Index of backlogged groups (see choose): a heap keyed by (-priority, creation order),
        # one int per entry (base.heap_key; ``_slots`` resolves it, a stale one is skipped).
        # ``_dirty``: groups whose priority may have changed since they were keyed.
        self.linear = False  # True: scan every group like the original (reference mode)
        self._heap: list[int] = []
        self._dirty: list[Group] = []
        self._slots: list[Group | None] = []  # index_slot -> group, in creation order

    @classmethod
    def parse_token_base(cls, text: str | None) -> int:
        if text is None:
            return 0
        return bounded_int(text, 0, 2**63 - 1, "token_base", "Invalid policy parameter")

    @classmethod
    def parse_group_value(cls, text: str | None, error: str) -> tuple[int, int]:
        return parse_range(text, error)

    # -- modes ---------------------------------------------------------------------------------
    def _set_mode(self, g: Group, mode: int) -> None:
        was_below = g.io_mode in (MINBW_IO_MODE, NO_IO_MODE)
        now_below = mode in (MINBW_IO_MODE, NO_IO_MODE)
        self.below_min += now_below - was_below
        g.io_mode = mode
        if not g.dirty:  # its priority follows its mode
            g.dirty = True
            self._dirty.append(g)

    # -- groups ------------------------------------------------------------------------------
    def group_added(self, g: Group, value: object, *, reshare: bool = True) -> None:
        g.index_slot = len(self._slots)
        g.heap_key = 0  # a key left by a previous policy instance is not in this heap
        self._slots.append(g)
        g.min_bw = g.max_bw = 0
        g.io_mode = DEFAULT_IO_MODE
        g.slice_expired = False
        g.min_bw_token = g.max_bw_token = 0
        g.bw_consumed = 0
        g.over_max = False
        g.slice_start = g.slice_end = 0
        g.time_slice = self.slice_base
        g.timer_set = False
        lo, hi = cast(tuple[int, int], value) if value is not None else (0, 0)
        self.set_range_bw(g, lo, hi, reshare=reshare)

    def group_removed(self, g: Group, *, reshare: bool = True) -> None:
        g.time_slice = 0
        self.set_range_bw(g, 0, 0, reshare=reshare)
        if self.running is g:
            self.running = None
        g.timer_token += 1  # cancels its timer
        g.timer_set = False
        g.heap_key = 0  # its index entries go stale
        if self._slots[g.index_slot] is g:
            self._slots[g.index_slot] = None
        # The original left over-max sleepers asleep until some other I/O rolled the period.
        self.engine.wake(g.maxbw_waitq)

    def carried_value(self, g: Group) -> object:
        return (g.min_bw, g.max_bw)

    def set_range_bw(self, g: Group, lo: int, hi: int, *, reshare: bool = True) -> None:
        self.min_bw_total += lo - g.min_bw
        g.min_bw = lo
        self.max_bw_total += hi - g.max_bw
        g.max_bw = hi
        self._set_mode(g, MINBW_IO_MODE if lo else DEFAULT_IO_MODE)
        g.min_bw_token = bw_to_token(lo)
        g.max_bw_token = bw_to_token(hi)
        self.total_min_bw_token = bw_to_token(self.min_bw_total)
        self.backlogged(g)
        if reshare:
            self.reshare()

    def reshare(self) -> None:
        """``time_slice_init`` and the per-group queue caps, for every group."""
        total = self.min_bw_total
        base = self.slice_base
        io_limit = self.dp.io_limit
        for p in self.dp.groups:
            if total == 0:
                p.time_slice = base
                p.limit = 1
            else:
                p.time_slice = base + (base * ((p.min_bw + p.max_bw) // 2)) // total
                p.limit = (io_limit * 2 * p.min_bw // total) // OVER_IO_RATE + 1
        self._reindex_all()

    def io_limit_changed(self) -> None:
        self.reshare()  # the original left the caps stale (docs/deviations.md)

    def set_param(self, g: Group, cmd: str, value: str | None) -> None:
        if cmd in ("range-bw", "min-bw", "max-bw"):
            lo, hi = parse_range_change(cmd, value, g.min_bw, g.max_bw)
            self.set_range_bw(g, lo, hi)
        else:
            super().set_param(g, cmd, value)

    # -- scheduling --------------------------------------------------------------------------
    def priority(self, g: Group) -> int:
        if self.io_mode == LEFTOVER_IO_MODE:
            return self.engine.rng.getrandbits(32) % 10 or 1
        mode = g.io_mode
        if mode == MINBW_IO_MODE:
            return (g.min_bw_token - g.bw_consumed) * MINBW_PRIO_BASE
        if mode == DEFAULT_IO_MODE:
            return MINBW_PRIO_BASE
        if mode == RANGE_IO_MODE:
            return MINBW_PRIO_BASE // 2
        return 0

    def set_time_slice(self, g: Group) -> None:
        now = self.engine.now
        g.slice_start = now
        if self.io_mode == LEFTOVER_IO_MODE:
            g.slice_end = now + g.time_slice
            return
        mode = g.io_mode
        if mode == MINBW_IO_MODE:
            g.slice_end = now + g.time_slice
        elif mode == RANGE_IO_MODE:
            g.slice_end = now + self.range_slice
        elif mode == DEFAULT_IO_MODE:
            g.slice_end = now + self.slice_base
        else:
            g.slice_end = 0
            g.slice_expired = True
            return
        g.slice_expired = False

    def can_submit(self, g: Group) -> int:
        """``has_right_to_issue``: a backlogged group always may (priority >= 1); otherwise the
        arrival takes over the time slice."""
        if g.blocked[0] + g.blocked[1] > 0:
            p = self.priority(g)
            return p if p > 0 else 1
        if g is self.running:
            if g.slice_expired:
                g.slice_expired = False
                g.slice_end = 0
                return 0
            if g.slice_end == 0:
                self.set_time_slice(g)
            return self.priority(g)
        self.running = g
        self.set_time_slice(g)
        return self.priority(g)

    def charge(self, g: Group, req: Request, urgent: bool) -> int:
        return self.consume(g, req.sectors)

    def consume(self, g: Group, count: int) -> int:
        now = self.engine.now
        self.current = g
        if self.next_period == 0:
            self.next_period = now + self.period
        if time_after(now, self.next_period):
            self.reset_period(now)  # as the original, this request's count is not charged
        else:
            g.bw_consumed += count
            self.consumed_min_bw_token += count
            if not g.dirty:  # a group below its min: its priority is the min still missing
                g.dirty = True
                self._dirty.append(g)
            if g.max_bw > 0 and g.bw_consumed >= g.max_bw_token:
                g.over_max = True
                self._set_mode(g, NO_IO_MODE)
                return R_YIELD
            if g.io_mode != RANGE_IO_MODE and g.min_bw_token <= g.bw_consumed:
                self._set_mode(g, RANGE_IO_MODE)
                if (
                    self.total_min_bw_token <= self.consumed_min_bw_token
                    and self.below_min == 0
                    and self.io_mode == MINBW_IO_MODE
                ):
                    self.io_mode = LEFTOVER_IO_MODE
        if g.slice_end != 0 and time_after(now, g.slice_end):
            g.slice_expired = True
            return R_YIELD
        return R_OK

    def reset_period(self, now: int) -> None:
        engine = self.engine
        for p in self.dp.groups:
            p.bw_consumed = 0
            p.over_max = False
            if p.io_mode != DEFAULT_IO_MODE:
                self._set_mode(p, MINBW_IO_MODE)
            engine.wake(p.maxbw_waitq)
        self.consumed_min_bw_token = 0
        self.next_period = now + self.period
        self.io_mode = MINBW_IO_MODE
        self._reindex_all()  # once a period: every group's priority starts again

    def restart(self) -> bool:
        return True

    # -- choosing the best group in O(log n) ---------------------------------------------------
    def backlogged(self, g: Group) -> None:
        if not g.dirty:
            g.dirty = True
            self._dirty.append(g)

    def _reindex_all(self) -> None:
        self._heap = []
        groups = self.dp.groups
        for i, g in enumerate(groups):
            g.heap_key = 0
            g.index_slot = i  # no entry is left: the slots are numbered afresh
            g.dirty = True  # also clears a flag left by a previous policy instance
        self._slots = list(groups)
        self._dirty = list(groups)

    def choose(self) -> Group | None:
        """Same answer as the original's scan of every group, found through a heap.

        Why it is the same: outside leftover mode ``can_submit`` of a backlogged group is its
        ``priority`` (at least 1) and has no side effect, and a priority changes only with the
        group's mode, its min or what it consumed (each of which re-keys it: ``_dirty``) or at a
        new period (re-key all). In leftover mode every backlogged group draws a random
        priority, in creation order, as the original: that draw is a scan, and stays one.
        """
        dp = self.dp
        limit = dp.window
        issued = dp.issued
        if issued[0] >= limit and issued[1] >= limit:
            return None
        if self.linear:
            return super().choose()
        if self.io_mode == LEFTOVER_IO_MODE:
            return self._choose_leftover(issued, limit)
        heap = self._heap
        if self._dirty:
            dirty = self._dirty
            for g in dirty:
                g.dirty = False
                if g.blocked[0] + g.blocked[1]:
                    enrol(self._slots, g)
                    pri = self.priority(g)
                    key = heap_key(pri if pri > 0 else 1, g)
                    if key != g.heap_key:  # else its live key is in the heap already
                        g.heap_key = key
                        heappush(heap, key)
                else:
                    g.heap_key = 0
            dirty.clear()
        return top_eligible(heap, self._slots, issued, limit)

    def _choose_leftover(self, issued: list[int], limit: int) -> Group | None:
        """The original's leftover scan, with its random draws made in one call: each
        backlogged group that may issue draws ``getrandbits(32) % 10 or 1`` in creation order
        and the first highest wins. ``getrandbits(32 * k)`` is the same k draws (the generator's
        32-bit words, least significant first), so the choice and the generator's state are the
        original's; only the Python call per group is gone."""
        eligible = []
        for g in self.dp.groups:
            n = g.blocked[0] + g.blocked[1]
            if n == 0 or (n == g.prio_blocked and issued[g.prio_sync] >= limit):
                continue
            eligible.append(g)
        k = len(eligible)
        if k == 0:
            return None
        words = array(WORD)
        words.frombytes(self.engine.rng.getrandbits(32 * k).to_bytes(4 * k, "little"))
        if sys.byteorder == "big":
            words.byteswap()
        best = 0
        highest = 0
        for i in range(k):
            pri = words[i] % 10 or 1
            if pri > highest:
                highest = pri
                best = i
                if pri == 9:
                    break  # the highest a draw gives: no later group beats it
        return eligible[best]

    def hold_back(self, g: Group) -> deque[Request] | None:
        """``range_bw_queue_full``'s sleep: an over-max group's submitters wait for the period."""
        if g.io_mode != NO_IO_MODE:
            return None
        now = self.engine.now
        if not time_after(self.next_period, now):
            return None
        if not g.timer_set:
            g.timer_set = True
            g.timer_token += 1
            due = now + (self.next_period - now) + TIME_COMPENSATOR
            self.engine.set_timer(due, self._timeover, g, g.timer_token)
        return g.maxbw_waitq

    def _timeover(self, g: Group, token: int) -> None:
        if token != g.timer_token:
            return
        g.over_max = False
        if g.io_mode == NO_IO_MODE:
            self._set_mode(g, MINBW_IO_MODE)  # even for a group with min 0, as the original
        g.timer_set = False
        self.engine.wake(g.maxbw_waitq)

    # -- display -----------------------------------------------------------------------------
    def show_table(self, device: Device) -> str:
        head = device.head
        parts = [f" {self.token_bucket * self.carryover} :{head.min_bw}:{head.max_bw}"]
        for g in device.table_groups():
            parts.append(f" {g.label}:{g.min_bw}:{g.max_bw}")
        return "".join(parts)

    def show_group(self, g: Group) -> str:
        return f" range-bw={g.min_bw}:{g.max_bw}"
