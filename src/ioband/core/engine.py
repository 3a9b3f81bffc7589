"""The sans-I/O engine: dm-ioband's request path, conductor and configuration, time passed in.

Callers hand requests in (``submit``), perform the I/O of every request the engine issues (the
``True`` return of ``submit``, then ``take_issued()`` after every call), and report completions
(``complete``). Time is integer jiffies supplied by the caller; ``next_deadline``/``advance`` drive
the engine's timers (the conductor's one-jiffy kick, range-bw's period timers). Where the kernel
puts a submitter to sleep, the request waits inside the engine (state ``WAITING``) and comes out
through ``take_admitted()`` once it is admitted: front ends use that as backpressure.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Final

from ioband.core.cint import INT_MAX, SHORT_MAX
from ioband.core.classify import GROUP_TYPES
from ioband.core.grammar import (
    ID_ANY,
    RULE_FIELDS,
    GroupKey,
    Rule,
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
from ioband.core.model import THINK_CAP, Device, DeviceGroup, Group
from ioband.core.request import DONE, HELD, ISSUED, WAITING, Request, Submitter
from ioband.core.window import AdaptiveWindow
from ioband.errors import AlreadyExists, Busy, InvalidArgument, NoQueue, NoSuchDevice
from ioband.policies import POLICIES, R_BLOCK, R_OK, R_YIELD

DEFAULT_IO_THROTTLE: Final = 4
DEFAULT_NR_REQUESTS: Final = 128
# Conductor runs in a row that release nothing before we suspect a livelock and defer to the
# next jiffy. Legitimate runs of empty epochs are bounded by debt / token_initial (a huge
# request under weight-iosize with 10 000 groups: a few thousand).
_SETTLE_LIMIT: Final = 100_000


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


class Engine:
    def __init__(
        self,
        *,
        hz: int = 1000,
        resolver: Callable[[str], BackingInfo | None] | None = None,
        seed: int = 0,
        linear_scan: bool = False,
        clock_ns: Callable[[], int] | None = None,
    ) -> None:
        if hz <= 0:
            raise InvalidArgument(f"Invalid hz: {hz} must be > 0")
        self.hz = hz
        self.now = 0
        # The fine clock latencies are measured with (a request is far shorter than a jiffy):
        # front ends inject a monotonic nanosecond clock; the default follows the jiffies.
        ns_per_jiffy = 1_000_000_000 // hz
        self.clock_ns: Callable[[], int] = clock_ns or (lambda: self.now * ns_per_jiffy)
        self.resolver = resolver or default_resolver
        self.rng = random.Random(seed)
        self.linear_scan = linear_scan  # reference mode: every policy scans every group
        self.devices: dict[str, Device] = {}
        self.device_groups: dict[str, DeviceGroup] = {}
        self._timers: list[tuple[int, int, Callable[..., None], tuple[object, ...]]] = []
        self._timer_seq = 0
        self._group_seq = 0
        # Device groups whose conductor runs once the current call settles, and batches of woken
        # submitters: short FIFOs (lists: the compiled core tests and pops them natively).
        self._ready: list[DeviceGroup] = []
        self._runnable: list[tuple[list[Request], bool]] = []
        self._issued: list[Request] = []
        self._admitted: list[Request] = []
        self.stalls = 0  # conductor livelocks broken by deferring (always 0 unless a bug)
        self.idle_max = max(1, hz * 2 // 1000)  # the longest wait for a shallow group: 2 ms
        # How long one busy group must have had the store to itself before the adaptive window
        # opens (it holds requests only to divide the store; alone, holding costs throughput).
        # Longer than any think time anticipation waits for, so that a shallow client between
        # two requests still counts: 200 ms.
        self.alone_after = max(1, hz // 5)

    # ======================================================================================
    # Outboxes, time and timers
    # ======================================================================================
    def take_issued(self) -> list[Request]:
        """Requests released since the last call, in order. Perform their I/O."""
        out = self._issued
        self._issued = []
        return out

    def take_admitted(self) -> list[Request]:
        """Requests that were WAITING (their submitter asleep) and are now admitted."""
        out = self._admitted
        self._admitted = []
        return out

    def has_output(self) -> bool:
        """Whether ``take_issued`` or ``take_admitted`` would return anything (cheap)."""
        return bool(self._issued or self._admitted)

    def next_deadline(self) -> int | None:
        return self._timers[0][0] if self._timers else None

    def advance(self, now: int) -> None:
        self._tick(now)
        timers = self._timers
        while timers and timers[0][0] <= self.now:
            _, _, fn, args = heappop(timers)
            fn(*args)
        self._settle()

    def set_timer(self, due: int, fn: Callable[..., None], *args: object) -> None:
        self._timer_seq += 1
        heappush(self._timers, (due, self._timer_seq, fn, args))

    def wake(self, waitq: deque[Request], same_group: bool = False) -> None:
        """``wake_up_all``: every sleeper re-evaluates its condition once this call settles.
        ``same_group``: all sleepers are one group's, of one class (a group's own wait queue)."""
        if waitq:
            self._runnable.append((list(waitq), same_group))
            waitq.clear()

    def kick(self, dp: DeviceGroup) -> None:
        """Run ``dp``'s conductor once the current call settles: for a policy whose own timer
        or bookkeeping found a group ready to be served (mclock's limits and caps)."""
        self._queue_conductor(dp, 0)

    def _tick(self, now: int) -> None:
        if now > self.now:
            self.now = now

    def ms(self, jiffies: int) -> int:
        return jiffies * 1000 // self.hz

    # ======================================================================================
    # The request path
    # ======================================================================================
    def submit(self, dev: Device, req: Request, now: int) -> bool:
        """``map``: True when ``req`` is issued now (the caller performs it at once); otherwise it
        is held (or its submitter waits) and comes out of ``take_issued()`` later."""
        if now > self.now:
            self.now = now
        req.device = dev
        req.submit_time = self.now
        if not req.arrival_ns:  # else the front end read it earlier and kept it in order
            req.arrival_ns = self.clock_ns()
        if dev.suspended:
            req.group = None  # classified when it resumes
            req.state = WAITING
            dev.suspend_waiters.append(req)
            return False
        g = self._classify(dev, req)
        dp = g.dp
        if dp.adaptive is not None and g.active == 1 and g.blocked[0] + g.blocked[1] == 0:
            if g.last_done >= 0:  # its think time: from its last completion to this request
                g.think += (min(self.now - g.last_done, THINK_CAP) - g.think) / 4
            if dp.anticipating is g:
                self._end_wait(dp)  # it came back: its request takes the slot kept
        wq = self._burst_wait(g, req)
        if wq is not None:
            req.state = WAITING
            wq.append(req)
            issued = False
        else:
            issued = self._map_admitted(g, req)
        if self._ready or self._runnable:
            self._settle()
        return issued

    def complete(self, req: Request, now: int) -> None:
        """``end_io``: the lower device finished ``req``."""
        if req.state != ISSUED:
            raise InvalidArgument(f"complete: request {req!r} is not in flight")
        if now > self.now:
            self.now = now
        g: Group = req.group
        dp = g.dp
        full = dp.issued[req.sync] >= dp.window
        dp.issued[req.sync] -= 1
        dev: Device = req.device
        dev.inflight -= 1
        req.state = DONE
        took = self.now - req.submit_time
        done_ns = self.clock_ns()
        g.latency.record(done_ns - req.arrival_ns)
        policy = dp.policy
        if policy.timed:
            # What this request alone occupied the store: from its dispatch, or from the
            # previous completion if that came later (the store served it then).
            since = dp.last_done_ns
            if req.dispatch_ns > since:
                since = req.dispatch_ns
            dp.last_done_ns = done_ns
            policy.completed(g, done_ns - since)
        g.ticks[req.dir] += took
        g.time_in_queue += took
        g.active -= 1
        if g.active == 0:
            g.io_ticks += self.now - g.busy_since
            dp.busy_groups -= 1
        adaptive = dp.adaptive
        if adaptive is not None:
            if full and dp.blocked[0] + dp.blocked[1] > 0:
                adaptive.wanted_more()  # a slot frees while requests wait for one
            adaptive.completed(self.now)
            if dp.busy_groups > 1:
                dp.contended_at = self.now
            elif (
                not dp.alone
                and self.now - dp.contended_at > self.alone_after
                and not adaptive.binds_alone
            ):
                self._open_window(dp, adaptive)
            # the conductor below lets held requests use it
            dp.window = dp.io_limit if dp.alone else adaptive.value
        if adaptive is not None and req.sync:
            g.last_done = self.now
            if g.active == 0 and g.blocked[0] + g.blocked[1] == 0:
                self._anticipate(dp, g)
        if dp.blocked[0] + dp.blocked[1] > 0 and not dp.conductor_pending:
            dp.conductor_pending = True  # _queue_conductor(dp, 0), inlined
            self._ready.append(dp)
        if self._ready or self._runnable:
            self._settle()

    # ======================================================================================
    # Anticipation (adaptive window only)
    # ======================================================================================
    def _anticipate(self, dp: DeviceGroup, g: Group) -> None:
        """``g``'s last sync request completed and it has nothing left. If it usually comes
        back within a short think time, and the policy says it is owed service, keep one slot
        of the window for it until it does or ``idle_until`` passes (BFQ's ``slice_idle``).

        Without this a group of one synchronous client (QD1) can never be given more than it
        asks at the moment it asks: on a store that serves one request at a time, its next
        request would go behind whatever the others got in during its think time, and it
        would get about one request in two however large its weight."""
        if (
            dp.blocked[0] + dp.blocked[1] > 0
            and g.think < self.idle_max
            and dp.policy.deserves_anticipation(g)
        ):
            dp.anticipating = g
            # The store idles while it is waited for only if nothing else is in flight: that
            # time is the price of the wait, not the store's speed (the window leaves it out).
            dp.idle_since = self.now if dp.issued[0] + dp.issued[1] == 0 else -1
            dp.idle_seq += 1
            dp.idle_until = self.now + min(self.idle_max, int(2 * g.think) + 2)
            self.set_timer(dp.idle_until, self._idle_expired, dp, dp.idle_seq)
        elif dp.anticipating is g:
            self._end_wait(dp)

    def _end_wait(self, dp: DeviceGroup) -> None:
        dp.anticipating = None
        if dp.idle_since >= 0 and dp.adaptive is not None:
            dp.adaptive.idled(self.now - dp.idle_since)
        dp.idle_since = -1

    def _idle_expired(self, dp: DeviceGroup, seq: int) -> None:
        if seq == dp.idle_seq and dp.anticipating is not None:
            self._end_wait(dp)  # it did not come back in time: the slot is everyone's
            if dp.blocked[0] + dp.blocked[1] > 0:
                self._queue_conductor(dp, 0)

    @staticmethod
    def _room(dp: DeviceGroup, g: Group | None) -> int:
        """The window ``g`` may fill: one slot less while another group is waited for; none
        under a policy that costs the store's time (BFQ's idling: a request let in beside the
        waited group's stream would break it, and cost it a seek that is not its own)."""
        waited = dp.anticipating
        if waited is None or waited is g:
            return dp.window
        return 0 if dp.policy.timed else dp.window - 1

    def _classify(self, dev: Device, req: Request) -> Group:
        id_of = dev.id_of
        g = dev.head
        if id_of is not None:
            gid = id_of(req.owner)
            if gid is not None:
                # An id of -1 falls to the default group (the original picked the rb-tree root).
                found = dev.groups.get(gid)
                if found is not None:
                    g = found
                    if found.cgroup_path is None and req.owner.cgroup_path:
                        found.cgroup_path = req.owner.cgroup_path
                        dev.dp.policy.paths_changed()
                elif dev.by_path or dev.rules:
                    g = self._by_path_or_rule(dev, req.owner, gid) or g
        req.group = g
        if g.active == 0:
            g.busy_since = self.now
            self._became_busy(g.dp)
        g.active += 1
        return g

    # ======================================================================================
    # One group alone (adaptive window only)
    # ======================================================================================
    def _became_busy(self, dp: DeviceGroup) -> None:
        """A group of ``dp`` got its first request held or in flight. A second busy group
        closes an open window at once: from here on the store is shared."""
        dp.busy_groups += 1
        if dp.busy_groups > 1:
            dp.contended_at = self.now
            adaptive = dp.adaptive
            if dp.alone and adaptive is not None:
                dp.alone = False
                adaptive.resume(self.now)
                dp.window = adaptive.value

    def _open_window(self, dp: DeviceGroup, adaptive: AdaptiveWindow) -> None:
        """One group has had the store to itself for ``alone_after``: holding its requests
        would divide nothing and cost throughput (on a store faster than its clients, the
        window reads their own queueing as the store's). The window opens to ``io_limit``; the
        controller keeps what it learnt for the next time the store is shared."""
        dp.alone = True
        adaptive.pause()
        dp.window = dp.io_limit

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

    def _burst_wait(self, g: Group, req: Request) -> deque[Request] | None:
        """``prevent_burst_bios``: the wait queue the submitter must sleep on, or None."""
        sync = req.sync
        if g.going_down:
            return None
        if req.urgent or req.owner.kthread:
            dp = g.dp
            if dp.blocked_flag[sync]:
                return dp.waitq[sync]
            if dp.blocked[sync] >= dp.io_limit:
                dp.blocked_flag[sync] = True
                return dp.waitq[sync]
            return None
        if g.blocked_flag[sync]:
            return g.waitq[sync]
        policy = g.dp.policy
        wq = policy.hold_back(g)
        if wq is not None:
            return wq
        if policy.should_block(g, sync):
            g.blocked_flag[sync] = True
            return g.waitq[sync]
        return None

    def _map_admitted(self, g: Group, req: Request) -> bool:
        dp = g.dp
        sync = req.sync
        if g.blocked[sync] == 0 and dp.issued[sync] < self._room(dp, g):
            policy = dp.policy
            if policy.can_submit(g) != 0:
                dp.issued[sync] += 1
                policy.charge(g, req, False)  # a yield here is ignored, as the original
                g.ios[req.dir] += 1
                g.sectors[req.dir] += req.sectors
                req.state = ISSUED
                req.issue_time = self.now
                req.dispatch_ns = self.clock_ns()
                g.hold.record(req.dispatch_ns - req.arrival_ns)
                dev: Device = req.device
                dev.inflight += 1
                if dp.adaptive is not None:
                    dp.adaptive.issued(self.now)
                return True
            if dp.blocked[0] + dp.blocked[1] == 0 and dp.issued[0] + dp.issued[1] == 0:
                self._queue_conductor(dp, 1)  # nothing will complete to kick it
        elif dp.adaptive is not None and dp.issued[sync] >= dp.window:
            dp.adaptive.wanted_more()
        self._hold(g, req)
        return False

    def _hold(self, g: Group, req: Request) -> None:
        dp = g.dp
        sync = req.sync
        dp.blocked[sync] += 1
        req.state = HELD
        req.delayed = True
        if req.urgent:
            dp.policy.charge(g, req, True)  # charged now, may go into debt; never waits
            dp.urgent.append(req)
        else:
            g.blocked[sync] += 1
            dp.policy.hold(g, req)
            if g.blocked[0] + g.blocked[1] == 1:
                dp.policy.backlogged(g)

    def _run_waiter(self, req: Request) -> deque[Request] | None:
        """A woken submitter re-evaluates where it slept; returns where it sleeps again."""
        dev: Device = req.device
        if dev.removed:
            self._issue_now(req)  # its device was removed while it slept
            return None
        g: Group | None = req.group
        if g is None:
            if dev.suspended:
                dev.suspend_waiters.append(req)
                return dev.suspend_waiters
            g = self._classify(dev, req)
        wq = self._burst_wait(g, req)
        if wq is not None:
            wq.append(req)
            return wq
        if self._map_admitted(g, req):
            self._issued.append(req)
        self._admitted.append(req)
        return None

    # ======================================================================================
    # The conductor
    # ======================================================================================
    def _queue_conductor(self, dp: DeviceGroup, delay: int) -> None:
        """``queue_delayed_work``: a no-op while a run is pending, even with a shorter delay."""
        if dp.conductor_pending:
            return
        dp.conductor_pending = True
        if delay == 0:
            self._ready.append(dp)
        else:
            self.set_timer(self.now + delay, self._ready.append, dp)

    def _settle(self) -> None:
        ready = self._ready
        runnable = self._runnable
        idle_runs = 0
        while ready or runnable:
            while ready:
                before = len(self._issued)
                self._conduct(ready.pop(0))
                idle_runs = 0 if len(self._issued) > before else idle_runs + 1
                if idle_runs > _SETTLE_LIMIT:  # a bug: keep it from hanging a front end
                    self.stalls += 1
                    for dp in ready:
                        dp.conductor_pending = False
                        self._queue_conductor(dp, 1)
                    ready.clear()
            while runnable:
                batch, same_group = runnable.pop(0)
                for i, req in enumerate(batch):
                    wq = self._run_waiter(req)
                    if same_group and wq is not None:
                        waiting_in: Group = req.group
                        if waiting_in.blocked_flag[req.sync] and not waiting_in.going_down:
                            # The rest would stop at the same set flag: skip re-evaluating.
                            wq.extend(batch[i + 1 :])
                            break

    def _conduct(self, dp: DeviceGroup) -> None:
        """``ioband_conduct``: release urgent requests, then one group's batch."""
        dp.conductor_pending = False
        out = self._issued
        before = len(out)
        limit = self._room(dp, None)  # while a group is waited for, one slot is kept for it
        issued = dp.issued
        urgent = dp.urgent
        while urgent and issued[0] < limit:  # the original checks the async class only
            req = urgent.popleft()
            c = req.sync
            dp.blocked[c] -= 1
            issued[c] += 1
            self._mark_issued(req)
        policy = dp.policy
        if dp.blocked[0] + dp.blocked[1] > 0:
            g = policy.choose()
            if g is not None and self._release(g) == R_YIELD:
                self._queue_conductor(dp, 0)
        flags = dp.blocked_flag
        io_limit = dp.io_limit  # urgent submitters sleep on held requests, not the window
        if flags[0] and dp.blocked[0] < io_limit:
            flags[0] = False
            self.wake(dp.waitq[0])
        if flags[1] and dp.blocked[1] < io_limit:
            flags[1] = False
            self.wake(dp.waitq[1])
        if (
            dp.adaptive is not None
            and dp.blocked[0] + dp.blocked[1] > 0
            and (issued[0] >= limit or issued[1] >= limit)
        ):
            dp.adaptive.wanted_more()
        if (
            dp.blocked[0] + dp.blocked[1] > 0
            and issued[0] < limit
            and issued[1] < limit
            and len(out) == before
            and policy.restart()
        ):
            self._queue_conductor(dp, 0)

    def _release(self, g: Group) -> int:
        """``release_bios``: the prio queue first, then the normal queue, until the batch yields,
        tokens run out (R_BLOCK) or there is no room (R_OK)."""
        dp = g.dp
        policy = dp.policy  # its methods called directly: a bound method is a slow path compiled
        issued = dp.issued
        limit = self._room(dp, g)
        if g.prio_queue:
            c = g.prio_sync
            while g.prio_blocked > 0:
                if not policy.may_issue(g):
                    return R_BLOCK
                if issued[c] >= limit:
                    return R_OK
                req = g.prio_queue.popleft()
                g.prio_blocked -= 1
                r = self._make_issue(g, req, c)
                if r != R_OK:
                    return r
        while g.blocked[0] + g.blocked[1] - g.prio_blocked > 0:
            if not policy.may_issue(g):
                return R_BLOCK
            if issued[0] >= limit and issued[1] >= limit:
                return R_OK
            popped = policy.pop(g)
            if popped is None:
                return R_OK
            req = popped
            c = req.sync
            if issued[c] >= limit:
                if not g.prio_queue:
                    g.prio_sync = c
                g.prio_queue.append(req)  # its class is full: it goes first next time
                g.prio_blocked += 1
                continue
            r = self._make_issue(g, req, c)
            if r != R_OK:
                return r
        return R_OK

    def _make_issue(self, g: Group, req: Request, c: int) -> int:
        dp = g.dp
        dp.blocked[c] -= 1
        g.blocked[c] -= 1
        if g.blocked[c] == 0 and g.blocked_flag[c]:
            g.blocked_flag[c] = False
            self.wake(g.waitq[c], True)
        g.ios[req.dir] += 1
        g.sectors[req.dir] += req.sectors
        g.delayed[req.dir] += 1
        req.state = ISSUED
        req.issue_time = self.now
        req.dispatch_ns = self.clock_ns()
        g.hold.record(req.dispatch_ns - req.arrival_ns)
        dev: Device = req.device
        dev.inflight += 1
        self._issued.append(req)
        dp.issued[c] += 1
        if dp.adaptive is not None:
            dp.adaptive.issued(self.now)
        return dp.policy.charge(g, req, False)

    def _mark_issued(self, req: Request) -> None:
        req.state = ISSUED
        req.issue_time = self.now
        req.dispatch_ns = self.clock_ns()
        g: Group = req.group
        g.hold.record(req.dispatch_ns - req.arrival_ns)
        dev: Device = req.device
        dev.inflight += 1
        self._issued.append(req)
        adaptive = g.dp.adaptive
        if adaptive is not None:
            adaptive.issued(self.now)

    def _issue_now(self, req: Request) -> None:
        """Issue without scheduling (device removal): counted in flight, not charged."""
        was_waiting = req.state == WAITING
        dev: Device = req.device
        g: Group | None = req.group
        if g is None:
            g = dev.head
            req.group = g
            if g.active == 0:
                g.busy_since = self.now
                self._became_busy(g.dp)
            g.active += 1
        g.dp.issued[req.sync] += 1
        g.ios[req.dir] += 1
        g.sectors[req.dir] += req.sectors
        if req.delayed:
            g.delayed[req.dir] += 1
        self._mark_issued(req)
        if was_waiting:
            self._admitted.append(req)

    def _unhold_all(self, g: Group) -> list[Request]:
        """Take every held request out of ``g`` (prio queue first), keeping the counters right."""
        dp = g.dp
        reqs = [*g.prio_queue, *g.queue]
        g.prio_queue.clear()
        g.queue.clear()
        g.prio_blocked = 0
        for req in reqs:
            dp.blocked[req.sync] -= 1
        g.blocked[0] = g.blocked[1] = 0
        g.blocked_flag[0] = g.blocked_flag[1] = False
        return reqs

    def _sleepers(self, g: Group) -> list[Request]:
        out = [*g.waitq[0], *g.waitq[1], *g.maxbw_waitq]
        g.waitq[0].clear()
        g.waitq[1].clear()
        g.maxbw_waitq.clear()
        return out

    # ======================================================================================
    # Configuration: create, remove, messages, suspend/resume
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
        if not name or "/" in name or any(ch.isspace() for ch in name):
            raise InvalidArgument(f"Invalid device name {name!r}: no '/', no spaces, not empty")
        if name in self.devices:
            raise Busy(f"Device {name!r} already exists")
        spec = parse_table(table)
        info = self.resolver(spec.device)
        if info is None:
            raise NoSuchDevice(f"Device lookup failed: {spec.device!r} was not found")
        throttle = spec.io_throttle or DEFAULT_IO_THROTTLE
        limit = spec.io_limit or default_io_limit(info.nr_requests, repr(spec.device))
        limit = max(limit, throttle)
        policy_cls = POLICIES.get(spec.policy)
        if policy_cls is None:
            raise InvalidArgument(
                f"Invalid policy parameter: unknown policy {spec.policy!r}"
                f"{did_you_mean(spec.policy, list(POLICIES))}"
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
            gid, value = parse_group_param(word, paths=spec.type == "cgroup")
            if GROUP_TYPES[spec.type] is None:
                raise InvalidArgument(f"{err}: group {gid}: type 'none' has no groups to attach")
            if isinstance(gid, int) and not 0 <= gid <= INT_MAX:
                raise InvalidArgument(f"{err}: invalid id:{gid} (ids are 0..{INT_MAX})")
            if gid in extra:
                raise AlreadyExists(f"{err}: id={gid} already exists.")
            extra[gid] = policy_cls.parse_group_value(value, err)
        policy_cls.check_groups(head_value, extra)

        dp = self.device_groups.get(spec.group_name)
        if dp is None:
            dp = DeviceGroup(spec.group_name, self, throttle, limit, info.nr_requests)
            self._set_window(dp, adaptive=spec.io_limit == 0)
            dp.policy = policy_cls(dp, token_base)
            dp.policy_name = spec.policy
            self._apply_scan_mode(dp)
            self.device_groups[dp.name] = dp
        elif dp.policy_name != spec.policy:
            self._switch_policy(dp, spec.policy, token_base)
        dev = Device(name, dp, spec.start, spec.length, spec.device, info.display)
        dev.type_name = spec.type
        dev.id_of = GROUP_TYPES[spec.type]
        policy = dp.policy
        dev.head = self._new_group(dev, ID_ANY)
        policy.group_added(dev.head, head_value, reshare=False)
        for gid, group_value in extra.items():
            g = dev.groups[gid] = self._new_group(dev, gid)
            policy.group_added(g, group_value, reshare=False)
        dev.by_path = any(isinstance(k, str) for k in extra)
        policy.reshare()
        dp.devices.append(dev)
        self.devices[name] = dev
        self._settle()
        return dev

    def _set_window(self, dp: DeviceGroup, adaptive: bool) -> None:
        """``io_limit 0``: the window adapts (up to the io_limit derived from the queue);
        ``io_limit N``: it is N, dm-ioband's fixed limit."""
        if not adaptive:
            dp.adaptive = None
            dp.alone = False
            dp.window = dp.io_limit
            return
        if dp.adaptive is None:
            dp.adaptive = AdaptiveWindow(self.hz, dp.io_limit, self.now)
            policy = getattr(dp, "policy", None)  # None while the device group is being made
            dp.adaptive.paced = policy is not None and policy.paces
            if dp.busy_groups < 2:  # a new device group, or one pinned until now
                self._open_window(dp, dp.adaptive)
        dp.adaptive.maximum = dp.io_limit
        dp.adaptive.value = min(dp.adaptive.value, dp.io_limit)
        dp.window = dp.io_limit if dp.alone else dp.adaptive.value

    def set_window_controller(self, name: str, window: AdaptiveWindow) -> None:
        """Replace device ``name``'s adaptive window by another controller of its kind (fed
        the same way, read through ``value``): a cluster-wide device group's shared-backend
        window (ioband.cluster). Only an adaptive window (``io_limit 0``) is replaced: a pinned
        one is the user's."""
        dp = self.device(name).dp
        if dp.adaptive is None:
            raise InvalidArgument(f"{name}: the window is pinned (io_limit {dp.io_limit})")
        window.maximum = dp.io_limit
        dp.adaptive = window
        if dp.alone and window.binds_alone:
            dp.alone = False
        if dp.alone:
            window.pause()
        dp.window = dp.io_limit if dp.alone else window.value
        self._queue_conductor(dp, 0)
        self._settle()

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
            self._runnable.append((sleepers, False))
        if held:
            self._queue_conductor(dp, 0)

    def message(self, name: str, words: str | Sequence[str], now: int = 0) -> None:
        """``dmsetup message NAME 0 WORDS``. A refused message raises and changes nothing."""
        self._tick(now)
        dev = self.device(name)
        msg = parse_message(words)
        cmd, arg = msg.command, msg.arg
        dp = dev.dp
        if cmd == "reset":
            for g in dev.all_groups():
                g.reset_stats()
        elif cmd == "type":
            assert arg is not None
            if arg not in GROUP_TYPES:
                raise InvalidArgument(
                    f"type: {arg} isn't supported. (unknown group type {arg!r};"
                    f" one of {', '.join(GROUP_TYPES)})"
                )
            if dev.groups:
                raise Busy(f"type: {len(dev.groups)} group(s) still attached; detach them first")
            dev.type_name = arg
            dev.id_of = GROUP_TYPES[arg]
        elif cmd in ("attach", "detach"):
            gid = parse_group_id(arg, cmd, paths=dev.type_name == "cgroup")
            shown = key_text(gid)
            if cmd == "attach":
                if dev.id_of is None:
                    raise InvalidArgument("attach: no ioband group type is specified")
                found = dev.groups.get(gid)
                if found is not None and not found.by_rule:
                    raise AlreadyExists(f"attach: id={shown} already exists.")
                if found is not None:
                    found.by_rule = False  # attached by hand now: the table lists it
                else:
                    self._attach(dev, gid, None, by_rule=False)
            else:
                gone = dev.groups.get(gid)
                if gone is None:
                    raise InvalidArgument(f"detach: id={shown} not found.")
                self._detach(dev, gone)
        elif cmd == "policy":
            assert arg is not None
            if arg not in POLICIES:
                raise InvalidArgument(
                    f"policy: unknown policy {arg!r}{did_you_mean(arg, list(POLICIES))}"
                )
            if arg != dp.policy_name:
                self._switch_policy(dp, arg, 0)
        elif cmd == "io_throttle":
            v = bounded_int(arg, 0, SHORT_MAX, "io_throttle", "Invalid io_throttle")
            v = v or DEFAULT_IO_THROTTLE
            if v > dp.io_limit:
                raise InvalidArgument(f"Invalid io_throttle: {v} is above io_limit {dp.io_limit}")
            dp.io_throttle = v
        elif cmd == "io_limit":
            given = bounded_int(arg, 0, SHORT_MAX, "io_limit", "Invalid io_limit")
            v = given or default_io_limit(dp.nr_requests, f"device group {dp.name!r}")
            if v < dp.io_throttle:
                raise InvalidArgument(
                    f"Invalid io_limit: {v} is below io_throttle {dp.io_throttle}"
                )
            dp.io_limit = v
            self._set_window(dp, adaptive=given == 0)
            dp.policy.io_limit_changed()
        else:
            assert arg is not None
            gid, value = parse_group_param(arg, f"Invalid {cmd}", dev.type_name == "cgroup")
            target = dev.head if gid == ID_ANY else dev.groups.get(gid)
            if target is None:
                raise InvalidArgument(f"{cmd}: id={key_text(gid)} not found.")
            dp.policy.set_param(target, cmd, value)
        if dp.blocked[0] + dp.blocked[1] > 0:
            self._queue_conductor(dp, 0)
        self._settle()

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
