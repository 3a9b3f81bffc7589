"""The sans-I/O engine: dm-ioband's request path and conductor, time passed in.

Callers hand requests in (``submit``), perform the I/O of every request the engine issues (the
``True`` return of ``submit``, then ``take_issued()`` after every call), and report completions
(``complete``). Time is integer jiffies supplied by the caller; ``next_deadline``/``advance`` drive
the engine's timers (the conductor's one-jiffy kick, range-bw's period timers). Where the kernel
puts a submitter to sleep, the request waits inside the engine (state ``WAITING``) and comes out
through ``take_admitted()`` once it is admitted: front ends use that as backpressure.

``Engine`` is the scheduler; the dm target it schedules for (devices, groups, ``create``,
``message``, ``table``, ``status``...) is the base class, ``ioband.core.target.DmTarget``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Final

from ioband.core.model import THINK_CAP, Device, DeviceGroup, Group
from ioband.core.request import DONE, HELD, ISSUED, WAITING, Request
from ioband.core.target import DEFAULT_IO_THROTTLE as DEFAULT_IO_THROTTLE
from ioband.core.target import DEFAULT_NR_REQUESTS as DEFAULT_NR_REQUESTS
from ioband.core.target import BackingInfo as BackingInfo
from ioband.core.target import DmTarget
from ioband.core.target import default_io_limit as default_io_limit
from ioband.core.target import default_resolver as default_resolver
from ioband.core.window import AdaptiveWindow
from ioband.errors import InvalidArgument
from ioband.policies import R_BLOCK, R_OK, R_YIELD

# Conductor runs in a row that release nothing before we suspect a livelock and defer to the
# next jiffy. Legitimate runs of empty epochs are bounded by debt / token_initial (a huge
# request under weight-iosize with 10 000 groups: a few thousand).
_SETTLE_LIMIT: Final = 100_000


class Engine(DmTarget):
    """The scheduler: the request path, the conductor, timers and anticipation."""

    def __init__(
        self,
        *,
        hz: int = 1000,
        resolver: Callable[[str], BackingInfo | None] | None = None,
        seed: int = 0,
        linear_scan: bool = False,
        clock_ns: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(hz=hz, resolver=resolver, linear_scan=linear_scan)
        # The fine clock latencies are measured with (a request is far shorter than a jiffy):
        # front ends inject a monotonic nanosecond clock; the default follows the jiffies.
        ns_per_jiffy = 1_000_000_000 // hz
        self.clock_ns: Callable[[], int] = clock_ns or (lambda: self.now * ns_per_jiffy)
        self.rng = random.Random(seed)
        self._timers: list[tuple[int, int, Callable[..., None], tuple[object, ...]]] = []
        self._timer_seq = 0
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

    def _new_device_group(
        self, name: str, io_throttle: int, io_limit: int, nr_requests: int | None
    ) -> DeviceGroup:
        return DeviceGroup(name, self, io_throttle, io_limit, nr_requests)

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
        if dp.blocked[0] + dp.blocked[1] > 0 and issued[0] < limit and issued[1] < limit:
            if len(out) == before:
                if policy.restart():
                    self._queue_conductor(dp, 0)
            elif dp.adaptive is not None:
                # An adaptive window grows at run time, and a run serves one group: with every
                # group holding one request (the rest of its submitters asleep), each
                # completion then released one request and the room the window gained was
                # never filled (at 1,024 groups the in flight count rose by one a second after
                # a probe down, and the SSD ran at 25 % busy). So while a run released
                # something and room is left, the next group gets the next run. A pinned
                # io_limit keeps the original's one group per completion.
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
    # The window: how the target's io_limit sets it up
    # ======================================================================================
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
