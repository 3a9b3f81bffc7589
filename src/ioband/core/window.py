"""The adaptive dispatch window: how many requests a device group keeps in flight.

dm-ioband arbitrated only the requests it held, and it held a request only when ``io_limit``
(192 for a file or a loop device) were already in flight: with realistic client depths it held
nothing, and the backing store's own queue, first come first served, decided the shares. The
right number in flight is a property of the store: a throttle or a disk serves one request at a
time, an NVMe drive needs dozens for its throughput. So this controller measures it.

It is a delay-based controller in the spirit of TCP Vegas, fed only with what the engine sees:
requests going out and coming back, at jiffy times (sans-I/O: the simulator runs the same code).
Every period (50 ms, longer when few requests completed) it computes, by Little's law,

    mean service latency  L = (in flight * time) / completions
    throughput            X = completions / time

keeps ``base``, the least latency of the recent periods (what a request costs without queueing
in the store), and estimates how many requests were *waiting inside the store* rather than being
served:  ``queued = mean in flight - X * base``. Then:

- ``queued`` above ``BETA``: requests wait in the store, where no weight applies: shrink the
  window (at most halving it per period), so that they wait in ioband instead;
- ``queued`` below ``ALPHA`` while requests waited for room in the window: the store serves more
  in parallel than it is given: grow it by a quarter (double it while nothing waits at all);
- otherwise keep it. It never grows while clients do not fill it (no knee to find at low load),
  and a request is never held while the window has room (work conserving).

A parallel store keeps ``L`` flat as the window grows, so ``queued`` stays near zero and the
window grows to what the clients use; when the store's parallelism drops the latency grows and
the window follows it down. ``base`` is the minimum over the last ``BASE_PERIODS`` periods.

Known gap (issue 12): ``base`` is only ever measured at the window in use, so on a store that
serves one request at a time the window stays near where it started (``START``) instead of
settling at two or three: it holds what goes beyond, so the weights apply, but a group that
keeps one request outstanding still waits behind ``START`` others. Probing at a window of one
(measured in the simulator: it finds the serial store's window) cost too much throughput on
parallel stores as written; anticipation is not built yet either.
"""

from __future__ import annotations

from collections import deque

#: Grow when fewer than this many requests wait in the store (and clients want more).
ALPHA = 1.0
#: Shrink when more than this many requests wait in the store.
BETA = 2.5
#: Periods whose least latency forms ``base`` (at 50 ms: 5 s).
BASE_PERIODS = 100
#: Completions a period needs before it is judged (it is extended up to a second for them).
MIN_COMPLETIONS = 8
#: The window a device group starts with.
START = 16


class AdaptiveWindow:
    """One device group's window (``value``) and what it was decided from.

    The engine calls :meth:`issued` and :meth:`completed` as requests go out and come back,
    and :meth:`wanted_more` when a request had to wait for room, then reads ``value``."""

    __slots__ = (
        "area",
        "base",
        "done",
        "full",
        "hz",
        "inflight",
        "last",
        "latency",
        "maximum",
        "minima",
        "period",
        "period_start",
        "queued",
        "throughput",
        "value",
    )

    def __init__(self, hz: int, maximum: int, now: int = 0) -> None:
        self.hz = hz
        self.maximum = max(1, maximum)
        self.value = min(START, self.maximum)
        self.period = max(1, hz // 20)
        self.period_start = now
        self.last = now
        self.area = 0  # requests in flight * jiffies, this period
        self.inflight = 0
        self.done = 0  # completions this period
        self.full = False  # a request waited for room this period
        self.minima: deque[float] = deque(maxlen=BASE_PERIODS)
        self.base = 0.0  # least recent latency, jiffies (0: nothing measured yet)
        self.latency = 0.0  # last period's mean service latency, jiffies
        self.throughput = 0.0  # last period's completions per second
        self.queued = 0.0  # last period's estimate of requests waiting in the store

    def issued(self, now: int) -> None:
        if now != self.last:
            self.area += self.inflight * (now - self.last)
            self.last = now
        self.inflight += 1

    def wanted_more(self) -> None:
        self.full = True

    def completed(self, now: int) -> None:
        if now != self.last:
            self.area += self.inflight * (now - self.last)
            self.last = now
        self.inflight -= 1
        self.done += 1
        if now - self.period_start >= self.period:
            self._evaluate(now)

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
        self.throughput = done * self.hz / elapsed
        queued = (self.area - done * base) / elapsed
        self.queued = queued
        old = self.value
        if queued > BETA:
            self.value = max(1, old // 2, int(old - (queued - BETA)))
        elif queued < ALPHA and self.full:
            # Nothing waits in the store at all: it has room to spare, double (slow start).
            step = old if queued < ALPHA / 4 else max(1, old // 4)
            self.value = min(self.maximum, old + step)
        self.period_start = now
        self.area = 0
        self.done = 0
        self.full = False

    def latency_ms(self) -> float:
        return self.latency * 1000 / self.hz
