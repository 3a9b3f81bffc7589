"""The adaptive dispatch window: how many requests a device group keeps in flight.

dm-ioband arbitrated only the requests it held, and it held a request only when ``io_limit``
(192 for a file or a loop device) were already in flight: with realistic client depths it held
nothing, and the backing store's own queue, first come first served, decided the shares. The
right number in flight is a property of the store: a throttle or a disk serves one request at a
time, an NVMe drive needs dozens for its throughput. So this controller measures it.

It is fed only with what the engine sees: requests going out and coming back, at jiffy times
(sans-I/O: the simulator runs the same code). Every period (50 ms, longer when few requests
completed) it computes, by Little's law,

    mean service latency  L = (in flight * time) / completions
    throughput            X = completions / time

and from the least latency of the recent periods (``base``) an estimate of how many requests
wait *inside the store* rather than being served: ``queued = mean in flight - X * base``.

Throughput decides; latency only hints. Latency alone cannot tell a store that serves one
request at a time, kept at depth 16, from one that needs 16 in parallel: both show the latency
of their depth as the least they ever saw (the gap the first version of this controller had).
So the window *probes*, as a hill climber on throughput:

- **slow start**: at first it doubles every period while nothing waits in the store and
  doubling raised the throughput (TCP's slow start; a parallel store is found in a few periods),
  and returns to the last window that paid; if that doubling raised the throughput by less than
  half, the first probe down follows at once, halving;
- **probe down**: now and then it tries a quarter less (half while the last step down won, so a
  serial store goes from 16 to 1 in about two seconds) for two periods after one to settle, and
  keeps it if the throughput held (``KEEP``); else it returns (after one period if it clearly
  lost) and waits eight times longer before the next try (at most ``DOWN_MOST`` periods: a lost
  probe costs some throughput for ~0.1 s);
  latency above ``base`` (``queued > BETA``) makes it probe down sooner, by what waits;
- **probe up**: when requests waited for room, it tries more (double while that pays, then a
  quarter) and keeps it only if the throughput rose (``GAIN``), retrying at most every
  ``UP_MOST`` periods (a lost probe up costs nothing but a little accuracy for a period);
- **bursts**: a probe whose periods differ more than twofold (blk-throttle releases a slice's
  worth at once) is judged lost only over ``BURST_SECONDS``, and a lost probe down stands only
  if the window it returned to serves clearly more than the probe did (else it is retried once);
- **change**: a steady period whose throughput differs from the steady level by a quarter means
  the store changed (a throttle set at run time, another tenant): what was learnt is dropped and it
  explores both ways at once, so it follows within a second or two.

It is judged also when the clients keep at least half of it in flight without filling it, so it
can go below what they keep outstanding (to hold anything, and so apply the weights, it must).
When they use less than half, it comes down to twice what they keep in flight (that holds
nothing), so that a few shallow clients on a serial store are judged too; not under a policy
that paces the groups itself (range-bw), where a smaller window would only slow them. A request
is never held while the window has room (work conserving).

"""

from __future__ import annotations

from collections import deque
from typing import Final

from mypy_extensions import mypyc_attr

#: Slow start doubles the window while fewer than this many requests wait in the store.
ALPHA: Final = 1.0
#: A doubling of the window that raised the throughput by less than this factor means the store
#: serves few requests at a time there: when slow start ends on it, a probe down follows at once.
SERIAL_GAIN: Final = 1.5
#: More than this many waiting in the store makes the window probe down sooner.
BETA: Final = 2.5
#: Periods whose least latency forms ``base`` (at 50 ms: 5 s).
BASE_PERIODS: Final = 100
#: Completions a period needs before it is judged (it is extended up to a second for them).
MIN_COMPLETIONS: Final = 16
#: The window a device group starts with.
START: Final = 16
#: A smaller window is kept if it keeps this fraction of the throughput.
KEEP: Final = 0.95
#: A larger window is kept only if it raises the throughput by this fraction.
GAIN: Final = 1.05
#: Periods a probe is measured for (after one to settle), so that noise decides less.
PROBE_PERIODS: Final = 2
#: A store may serve in bursts: blk-throttle releases a slice's worth (100 ms) at once, so a
#: loop device capped at 1,500 IOPS completed 146, 16, 119, 38 requests in four 50 ms periods
#: at a window of one. A probe judged on two such periods measured 1,298/s, "lost", and kept a
#: QD1 group's window at two for seconds (it got 42 % of the I/Os, not 57). When a probe's
#: periods differ by more than ``BURSTY`` times, a loss is judged only after ``BURST_SECONDS``
#: (two or three such slices); a win, and every verdict on a smooth store, as before.
BURSTY: Final = 2.0
BURST_SECONDS: Final = 0.3
#: Completions a probe needs before it is judged, and half of them before it may end early as
#: a clear loss: on a disk at 140 IOPS a period of 16 completions varies by a fifth, and the
#: window random-walked between 3 and 12 (a QD1 client beside a QD32 one got 21 %, not 50).
PROBE_MIN: Final = 64
#: A steady period whose throughput differs from the reference by more than this fraction
#: means the store changed.
CHANGED: Final = 0.25
#: A probe downwards that serves less than this fraction ends after one period.
CLEAR_LOSS: Final = 0.85
#: Full periods between probes: at first, and at most downwards (a probe down that loses
#: costs throughput: at 50 ms periods, one in 5 s) and upwards (one that loses costs nothing
#: but a little accuracy for a period: a store that became faster is found within a second).
PROBE_FIRST: Final = 8
DOWN_MOST: Final = 100
UP_MOST: Final = 20

STEADY, PROBE_DOWN, PROBE_UP = 0, 1, 2


@mypyc_attr(allow_interpreted_subclasses=True)  # the cluster's shared-backend window
class AdaptiveWindow:
    """One device group's window (``value``) and what it was decided from.

    The engine calls :meth:`issued` and :meth:`completed` as requests go out and come back,
    and :meth:`wanted_more` when a request had to wait for room, then reads ``value``."""

    __slots__ = (
        "area",
        "base",
        "binds_alone",
        "done",
        "down_streak",
        "down_wait",
        "full",
        "gain",
        "hz",
        "idle",
        "inflight",
        "last",
        "latency",
        "level",
        "lost",
        "maximum",
        "minima",
        "noise",
        "paced",
        "paused",
        "period",
        "period_done",
        "period_start",
        "probe_done",
        "probe_from",
        "probe_hi",
        "probe_least",
        "probe_lo",
        "probe_time",
        "queued",
        "rechecked",
        "reference",
        "settling",
        "since_down",
        "since_up",
        "slow_start",
        "state",
        "throughput",
        "up_streak",
        "up_wait",
        "value",
    )

    def __init__(self, hz: int, maximum: int, now: int = 0) -> None:
        self.hz = hz
        self.maximum = max(1, maximum)
        self.value = min(START, self.maximum)
        self.period = max(1, hz // 20)
        self.probe_least = max(PROBE_PERIODS * self.period, int(hz * BURST_SECONDS))
        self.probe_lo = 0.0  # the least and most completions per jiffy of a probe's periods
        self.probe_hi = 0.0
        self.period_start = now
        self.last = now
        self.area = 0  # requests in flight * jiffies, this period
        self.inflight = 0
        self.done = 0  # completions this period
        self.full = False  # a request waited for room this period
        self.idle = 0  # jiffies the store idled this period while a shallow group was waited for
        self.minima: deque[float] = deque(maxlen=BASE_PERIODS)
        self.base = 0.0  # least recent latency, jiffies (0: nothing measured yet)
        self.latency = 0.0  # last period's mean service latency, jiffies
        self.throughput = 0.0  # last period's completions per second
        self.queued = 0.0  # last period's estimate of requests waiting in the store
        self.state = STEADY
        self.settling = False  # the window just changed: this period shows the transition
        self.slow_start = True
        self.gain = 0.0  # what slow start's last kept doubling raised the throughput by (0: none)
        self.reference = 0.0  # throughput at ``value`` while clients filled it (0: unknown)
        # The store's throughput over the steady periods, whatever the window: a change of a
        # quarter means the store changed (probes reset ``reference``, never this).
        self.level = 0.0
        self.probe_from = 0  # the window a probe left, to return to if it lost
        self.probe_done = 0  # completions and jiffies measured so far in a probe
        # A probe down that lost, and what it served: the loss stands only if the window it
        # returned to serves clearly more (see ``_recheck``). ``rechecked``: the probe now
        # running is the retry of one whose loss did not stand (no second retry).
        self.lost = 0.0
        self.rechecked = False
        self.probe_time = 0
        self.since_down = 0  # judged periods since the last probe down ended
        self.since_up = 0  # and up
        self.down_streak = False  # the last probe downwards won: the next one halves
        self.down_wait = PROBE_FIRST  # full periods between probes downwards
        self.up_wait = 1  # and upwards (at once at the start: a slow start)
        self.up_streak = True
        self.paced = False  # the policy paces the groups (range-bw): see ``_evaluate``
        # How much one steady period's throughput strays from the level (mean relative
        # deviation), and how many completions such a period has: a probe's verdict must be
        # more than its noise (a disk at 140 IOPS varies by a fifth per period, an SSD by 1 %).
        self.noise = 0.0
        self.period_done = 0.0
        # The engine opens the window while one group alone is busy (nothing to arbitrate):
        # then the controller only watches (``paused``), and what it learnt waits for the next
        # time two groups share the store. A window that divides a store between hosts (the
        # cluster's) binds even one group: ``binds_alone``.
        self.binds_alone = False
        self.paused = False

    def issued(self, now: int) -> None:
        if now != self.last:
            self.area += self.inflight * (now - self.last)
            self.last = now
        self.inflight += 1

    def wanted_more(self) -> None:
        self.full = True

    def idled(self, jiffies: int) -> None:
        """The store idled ``jiffies`` because a shallow group was waited for (anticipation):
        the price of its share, not a sign of the store's speed, so throughput leaves it out."""
        self.idle += jiffies

    def completed(self, now: int) -> None:
        if now != self.last:
            self.area += self.inflight * (now - self.last)
            self.last = now
        self.inflight -= 1
        self.done += 1
        if now - self.period_start >= self.period:
            if self.paused:
                self._watch(now)
            else:
                self._evaluate(now)

    def pause(self) -> None:
        """One group alone is busy: the engine does not apply the window. Probes and verdicts
        stop (what the clients keep in flight is not the window: a probe would measure
        nothing); latency and throughput are still measured, for the operator."""
        self.paused = True
        if self.state != STEADY:  # a probe cut short: back to the window it left
            self.value = self.probe_from
            self.state = STEADY

    def resume(self, now: int) -> None:
        """Two groups share the store again: the window applies from here, as learnt. The
        first period shows the requests in flight under the open window draining."""
        self.paused = False
        self._restart(now)
        # Not while slow start has yet to find the store: a period lost there is half the
        # store's throughput for its length (the first requests of a second group come at once).
        self.settling = not self.slow_start

    def _watch(self, now: int) -> None:
        """A period while paused: measured for display, judged never."""
        elapsed = now - self.period_start
        done = self.done
        if done < MIN_COMPLETIONS and elapsed < self.hz:
            return
        self.latency = self.area / done
        self.throughput = done * self.hz / max(1, elapsed)
        self.queued = max(0.0, (self.area - done * self.base) / elapsed) if self.base else 0.0
        self._restart(now)

    def _restart(self, now: int) -> None:
        """A new period from ``now``."""
        self.last = now
        self.period_start = now
        self.area = 0
        self.done = 0
        self.full = False
        self.idle = 0

    def _evaluate(self, now: int) -> None:
        elapsed = now - self.period_start
        done = self.done
        if done < MIN_COMPLETIONS and elapsed < self.hz:
            return  # too few to judge: extend the period
        latency = self.area / done
        minima = self.minima
        minima.append(latency)
        base = min(minima)
        self.base = base
        self.latency = latency
        busy = max(1, elapsed - self.idle)  # the store's time, less what anticipation idled
        throughput = done * self.hz / busy
        self.throughput = throughput
        queued = (self.area - done * base) / elapsed
        self.queued = queued
        if self.settling:
            self.settling = False  # what was in flight under the old window drains or fills
            if (
                self.state == PROBE_DOWN
                and done >= PROBE_MIN // 2
                and throughput < self.reference * CLEAR_LOSS
            ):
                # Even while the old window's requests drained (which flatters a smaller
                # window) it served clearly less: lost, without paying for another period.
                self._end_probe(False, throughput)
        elif self.full or self.state == PROBE_DOWN or 2 * self.area >= self.value * elapsed:
            # Judged too when the clients kept at least half the window in flight without
            # filling it: to hold anything (and so apply the weights), the window must go
            # below what they keep outstanding. Not when they use little of it (paced by the
            # policy, as range-bw, or light): a smaller window would only slow them.
            self._decide(throughput, queued, done, busy)
        elif self.state == PROBE_UP:
            # The clients did not fill the larger window: nothing learnt. Return.
            self.value = self.probe_from
            self.state = STEADY
            self.since_up = 0
        elif self.value > 1 and not self.paced:
            # They use little of it: come down to twice what they keep in flight (it holds
            # nothing, so it costs nothing), and so to where they are judged. Without it a few
            # shallow clients (three QD1 VMs on a serial store) never filled the starting 16,
            # nothing was ever held, and their weights never applied.
            self.value = max(1, -(-2 * self.area // elapsed))
            self.slow_start = False
        self._restart(now)

    def _decide(self, throughput: float, queued: float, done: int, elapsed: int) -> None:
        """One full period's verdict: judge a probe, or react, or start a probe.

        Throughput decides, latency only hints: a smaller window is kept when it serves as
        much (the store was queueing, not working in parallel), a larger one when it serves
        more. Latency alone cannot tell a serial store at depth 16 from one that needs 16:
        both show the latency of their depth as the least they ever saw."""
        state = self.state
        if state != STEADY:
            self.probe_done += done
            self.probe_time += elapsed
            rate = done / elapsed
            if self.probe_hi == 0.0:
                self.probe_lo = self.probe_hi = rate
            else:
                self.probe_lo = min(self.probe_lo, rate)
                self.probe_hi = max(self.probe_hi, rate)
            bursty = self.probe_hi > BURSTY * self.probe_lo and self.probe_time < self.probe_least
            measured = self.probe_done * self.hz / self.probe_time
            if self.probe_time >= PROBE_PERIODS * self.period and self.probe_done >= PROBE_MIN:
                spread = 2 * self._spread()
                if state == PROBE_DOWN:
                    won = measured >= self.reference * KEEP
                    if not won and bursty:
                        return  # a loss only over a longer time: the store serves in bursts
                    # A loss within the noise is no verdict: try again soon, not 8 x later.
                    self._end_probe(won, measured, clear=measured < self.reference * (1 - spread))
                else:  # a gain must be more than the noise: a random walk upwards loses control
                    self._end_probe(measured >= self.reference * max(GAIN, 1 + spread), measured)
            elif (
                state == PROBE_DOWN
                and self.probe_done >= PROBE_MIN // 2
                and not bursty
                and measured < self.reference * CLEAR_LOSS
            ):
                self._end_probe(False, measured)  # lost by far: do not pay for another period
            return
        old = self.value
        ref = self.reference
        self.since_down += 1
        self.since_up += 1
        if self.slow_start:
            # At the start, double at once while nothing waits in the store and doubling pays
            # (TCP's slow start): a parallel store is found in a few periods, not probes.
            if self.full and queued < ALPHA and old < self.maximum and throughput >= ref * GAIN:
                if ref:
                    self.gain = throughput / ref  # what doubling into this window paid
                self.reference = throughput
                self.value = min(self.maximum, old * 2)
                return
            self.slow_start = False
            self.reference = 0.0
            failed = ref and self.value > START and throughput < ref * GAIN
            if failed:  # it returns to the window the last kept doubling reached
                kept, evidence = self.gain, self.full or self.gain > 0.0
            else:  # requests began to wait in the store: it stays where this doubling led
                kept, evidence = (throughput / ref if ref else 0.0), self.full
            if not self.paced and evidence and kept < SERIAL_GAIN:
                # The window kept came from a doubling that raised the throughput by less than
                # half (or from none: not even the first doubling paid, though requests waited
                # for room). The store serves few requests at a time (a throttle, a disk), the
                # window is far above what it needs, and the weights apply only once it is that
                # small: probe down at once, halving, and not up for a while. Without this a
                # doubling that "paid" against a first period still ramping up left the window
                # at 32, probing up by noise, for seconds. (Not after a doubling that paid in
                # full: there a probe down would lose, and cost throughput, at once.)
                self.down_streak = True
                self.since_down = self.down_wait = 1
                self.up_streak = False
                self.since_up = 0
                self.up_wait = PROBE_FIRST
            if failed:
                # The last doubling did not pay: return to where it started.
                self.value //= 2
                self.settling = True
                return
            ref = 0.0
        level = self.level
        self.level = throughput if level == 0.0 else (3 * level + throughput) / 4
        if level:
            dev = min(CHANGED, abs(throughput - level) / level)
            self.noise = dev if self.noise == 0.0 else 0.9 * self.noise + 0.1 * dev
            self.period_done = 0.9 * self.period_done + 0.1 * done if self.period_done else done
        if level and abs(throughput - level) > CHANGED * level:
            # The store changed (a throttle was set, another tenant came or went): what was
            # learnt about it is void. Measure again and probe at once, halving if it got
            # slower (doubling if faster): the old window is likely far from the new one.
            self.down_streak = throughput < level
            self.up_streak = throughput > level
            self.level = self.reference = throughput
            self.minima.clear()
            self.lost = 0.0
            self.down_wait = self.up_wait = 1
            self.since_down = self.since_up = 0
            return
        if ref == 0.0:
            self.reference = throughput
            if self.lost:
                self._recheck(throughput)
            return  # the first clean measurement at this window: the bar for a probe
        self.reference = (3 * ref + throughput) / 4
        if old > 1 and self.since_down >= self.down_wait:
            # A quarter down; half while the last step down won (a serial store found fast).
            step = max(1, old // 2 if self.down_streak else old // 4)
            self._start_probe(PROBE_DOWN, old - step)
        elif queued > BETA and old > 1 and self.since_down >= min(self.down_wait, PROBE_FIRST):
            # Requests seem to wait in the store (latency above the least seen): probe down
            # soon, by what waits (at most half).
            self._start_probe(PROBE_DOWN, max(1, old // 2, int(old - (queued - BETA))))
        elif self.full and old < self.maximum and self.since_up >= self.up_wait:
            # Double while doubling pays (a slow start), then a quarter at a time.
            step = old if self.up_streak else max(1, old // 4)
            self._start_probe(PROBE_UP, min(self.maximum, old + step))

    def _recheck(self, throughput: float) -> None:
        """The first clean period back at the window a probe down left. If it serves no more
        than the probe did, the loss was not the smaller window's: the reference it was judged
        against was high (taken during a throttle's initial burst, or a lucky period under CPU
        contention). Then the loss does not stand: probe down again at once, once. Without this
        one noisy verdict kept a serial store's window at 3 or 4 for seconds (down_wait grows
        eightfold per loss), and a QD1 group there waits behind the others' requests."""
        lost = self.lost
        self.lost = 0.0
        # Not under a policy that paces the groups (range-bw): its throughput is the policy's,
        # so a retry measures nothing new, and each change of the window let a band's group
        # cross its maximum by a few more requests (16 KB/s over, not one request's 4).
        if lost >= throughput * KEEP and not self.rechecked and not self.paced:
            self.rechecked = True
            self.down_wait = 1
            self.since_down = 1  # the next full period starts the retry
        else:
            self.rechecked = False

    def _spread(self) -> float:
        """The relative noise of a probe's measurement (one period's, shrinking with the square
        root of the completions the probe measured)."""
        if not self.probe_done or not self.period_done:
            return 0.0
        return float(self.noise * (self.period_done / self.probe_done) ** 0.5)

    def _start_probe(self, state: int, value: int) -> None:
        # What is in flight under the old window drains or fills: the next period shows the
        # transition, not the window.
        self.settling = True
        self.state = state
        self.lost = 0.0  # a recheck is due only at the first clean period after a loss
        self.probe_done = 0
        self.probe_time = 0
        self.probe_lo = self.probe_hi = 0.0
        self.probe_from = self.value
        self.value = value

    def _end_probe(self, won: bool, throughput: float = 0.0, clear: bool = True) -> None:
        """Keep the probed window if it ``won`` (and probe that way again soon), else return."""
        down = self.state == PROBE_DOWN
        self.state = STEADY
        if down:
            self.since_down = 0
        else:
            self.since_up = 0
        if down:
            self.lost = 0.0 if won else throughput
            if won:
                self.rechecked = False
        if won:
            # The probe measured the window kept: the bar for the next probe, at once (never
            # lower than before after a step down, or small losses would add up).
            self.reference = max(self.reference, throughput) if down else throughput
            if down:
                self.down_wait = 1
                self.down_streak = True
            else:
                self.up_wait = 1
                self.up_streak = True
            return
        self.value = self.probe_from
        self.settling = True
        self.reference = 0.0  # measured anew at the window returned to
        if down:
            self.down_streak = False
            self.down_wait = min(DOWN_MOST, self.down_wait * (8 if clear else 2))
            # The latency that suggested it was from another time (the store changed since):
            # learn the least latency anew.
            self.minima.clear()
        else:
            self.up_streak = False
            self.up_wait = min(UP_MOST, max(PROBE_FIRST, self.up_wait * 2))

    def latency_ms(self) -> float:
        return self.latency * 1000 / self.hz
