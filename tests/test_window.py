"""The adaptive dispatch window on its own (core/window.py), against small stores in virtual
jiffies, and its wiring in the engine (io_limit 0 adaptive, io_limit N pinned)."""

from __future__ import annotations

import heapq

from ioband.core.engine import Engine
from ioband.core.request import Request, Submitter
from ioband.core.window import AdaptiveWindow

HZ = 10_000  # 0.1 ms jiffies, so that service times of a few jiffies are resolved


def drive(window: AdaptiveWindow, *, slots: int, service: int, demand: int, seconds: float,
          change: tuple[float, int, int] | None = None, served: list[int] | None = None,
          ) -> list[int]:  # fmt: skip
    """A store serving ``slots`` requests at a time, ``service`` jiffies each, FIFO beyond;
    clients keeping ``demand`` requests outstanding. Returns the window every 0.1 s, and
    appends the completions of each 0.1 s to ``served``.
    ``change``: (at second, slots, service) from then on."""
    now = 0
    queue: list[int] = []  # waiting in the store (issue times)
    busy: list[int] = []  # finish times of the requests being served
    inflight = 0
    trace = []
    end = int(seconds * HZ)
    done = 0
    while now < end:
        if change and now == int(change[0] * HZ):
            slots, service = change[1], change[2]
        while busy and busy[0] <= now:
            heapq.heappop(busy)
            inflight -= 1
            done += 1
            window.completed(now)
        while queue and len(busy) < slots:
            queue.pop(0)
            heapq.heappush(busy, now + service)
        while inflight < min(window.value, demand):
            window.issued(now)
            inflight += 1
            if len(busy) < slots:
                heapq.heappush(busy, now + service)
            else:
                queue.append(now)
        if demand > window.value:
            window.wanted_more()
        if now % (HZ // 10) == 0:
            trace.append(window.value)
            if served is not None and now:
                served.append(done)
                done = 0
        now += 1
    return trace


def test_a_parallel_store_gets_what_it_serves_in_parallel():
    w = AdaptiveWindow(HZ, 192)
    served: list[int] = []
    trace = drive(w, slots=32, service=40, demand=96, seconds=5, served=served)
    settled = trace[10:]
    # probes try less and more now and then; the window returns to the store's parallelism
    assert sorted(settled)[len(settled) // 2] in range(32, 41), trace
    assert sum(v >= 32 for v in settled) >= 0.9 * len(settled), trace
    full = 32 * (HZ // 10) / 40  # what 32 slots serve in 0.1 s
    assert sum(served[10:]) >= 0.97 * full * len(served[10:]), served  # eta of the probes


def test_a_serial_store_gets_a_window_of_one_or_two():
    """A store that serves one request at a time (a throttle, a disk head) serves as much at
    a window of one as at sixteen: everything beyond it would only wait inside the store,
    where no weight applies. Latency cannot show this (the least latency ever seen is the
    latency of the window in use); probing a smaller window and keeping it when the
    throughput holds does."""
    w = AdaptiveWindow(HZ, 192)
    served: list[int] = []
    trace = drive(w, slots=1, service=7, demand=96, seconds=6, served=served)
    settled = trace[30:]  # within three seconds: at one, but for probes of two now and then
    assert max(settled) <= 2 and sum(v == 1 for v in settled) >= 0.8 * len(settled), trace
    full = (HZ // 10) / 7
    assert min(served[5:]) >= 0.95 * full - 1, served  # it never starved the store


def test_a_serial_store_that_becomes_parallel_opens_it_again():
    w = AdaptiveWindow(HZ, 192)
    trace = drive(w, slots=1, service=7, demand=96, seconds=8, change=(4.0, 16, 40))
    assert trace[39] <= 2, trace
    after = trace[60:]  # two seconds after the change: most of the time at 16 or more (probes
    assert sum(v >= 16 for v in after) >= 0.8 * len(after), trace  # try less now and then)


def test_a_first_period_still_ramping_up_does_not_hold_it_high():
    """Clients that start together need a period to fill the store: slow start's first
    measurement is low (here 70 % of what the store serves), so its first doubling "pays"
    (by 1.4x, where a store that serves 32 at once would give 2x) and it stops only at the
    second. A kept doubling that raised the throughput by less than half means a store that
    serves few at a time: the window probes down at once, halving, rather than after eight
    periods of probing up by noise. It reaches two within a second (the rule before: 1.5 s)."""
    w = AdaptiveWindow(HZ, 192)
    trace = drive(w, slots=1, service=10, demand=41, seconds=3, change=(0.05, 1, 7))
    assert min(trace[:11]) <= 2, trace


def feed(w: AdaptiveWindow, now: int, periods: list[tuple[int, int]]) -> int:
    """Periods of (completions, jiffies) with the window's requests in flight and more waiting:
    the completions of each in a burst over its first half but the last, at its end (which
    ends the period). Returns the time after them."""
    for done, span in periods:
        w.wanted_more()
        for i in range(done):
            t = now + span if i == done - 1 else now + (i + 1) * span // (2 * done)
            w.completed(t)
            w.issued(t)
        now += span
    return now


def test_a_probe_over_bursts_is_not_lost_to_them():
    """blk-throttle releases a slice's worth (100 ms) of requests at once, and the periods of a
    probe to a window of one caught 146, 16, 119 and 38 completions (a real trace at 1,500 IOPS):
    two of them alone measure 1,298/s against the 1,522 before, a loss, and the window stayed at
    two for seconds. Periods that differ that much are judged over 0.3 s, which serves as much."""
    hz = 1000
    w = AdaptiveWindow(hz, 192)
    w.slow_start = False
    w.value = 2
    for _ in range(2):
        w.issued(0)
    w.reference = w.level = 1522.0
    w.down_wait = w.since_down = 1
    now = feed(w, 0, [(150, 100)])  # steady at two: the probe down starts
    assert w.value == 1
    feed(w, now, [(146, 51), (16, 53), (119, 51), (38, 50), (146, 51), (16, 53), (119, 51)])
    assert w.value == 1 and w.state == 0  # kept: the probe won


def test_clients_that_do_not_fill_it_do_not_grow_it():
    w = AdaptiveWindow(HZ, 192)
    trace = drive(w, slots=32, service=40, demand=4, seconds=2)
    assert max(trace) <= 16, trace  # never above where it started


def test_a_few_shallow_clients_on_a_serial_store_bring_it_down():
    """Three QD1 clients never fill the starting 16: the window comes down to twice what they
    keep in flight (which holds nothing), is judged there, and probes down to the store's one,
    so that something is held and the weights apply; the store never starves meanwhile."""
    w = AdaptiveWindow(HZ, 192)
    served: list[int] = []
    trace = drive(w, slots=1, service=7, demand=3, seconds=4, served=served)
    settled = trace[20:]
    assert max(settled) <= 2 and sum(v == 1 for v in settled) >= 0.8 * len(settled), trace
    full = (HZ // 10) / 7
    assert min(served[2:]) >= 0.95 * full - 1, served


def test_shallow_clients_on_a_parallel_store_are_not_slowed():
    """Four outstanding on a store that serves 32 at once: the window comes down near what
    they use, but a probe below it loses throughput and is not kept."""
    w = AdaptiveWindow(HZ, 192)
    served: list[int] = []
    trace = drive(w, slots=32, service=40, demand=4, seconds=4, served=served)
    assert sum(v >= 4 for v in trace[10:]) >= 0.9 * len(trace[10:]), trace
    full = 4 * (HZ // 10) / 40
    assert sum(served[10:]) >= 0.95 * full * len(served[10:]), served  # eta >= 0.95


def test_a_store_that_becomes_slower_shrinks_it():
    w = AdaptiveWindow(HZ, 192)
    trace = drive(w, slots=32, service=40, demand=96, seconds=4, change=(2.0, 8, 40))
    assert trace[19] >= 32  # 32 in parallel before the change
    assert all(v <= 12 for v in trace[40:]), trace  # 8 after it: within two seconds


def test_the_window_never_exceeds_the_derived_io_limit():
    w = AdaptiveWindow(HZ, 24)
    trace = drive(w, slots=64, service=40, demand=200, seconds=2)
    assert max(trace) == 24


def test_engine_io_limit_0_is_adaptive_and_io_limit_n_pins_it():
    e = Engine()
    e.create("a", "0 8 ioband sda 1 0 0 none weight 0 :1")
    dp = e.devices["a"].dp
    assert dp.adaptive is not None and dp.io_limit == 192 and dp.adaptive.value == 16
    assert dp.alone and dp.window == 192  # no group busy yet: nothing to divide
    assert e.table("a") == "0 8 ioband sda 1 4 0 none weight 768 :1"
    e.message("a", "io_limit 32")
    assert dp.adaptive is None and dp.window == 32
    assert e.table("a") == "0 8 ioband sda 1 4 32 none weight 128 :1"
    e.message("a", "io_limit 0")
    assert dp.adaptive is not None and dp.adaptive.value == 16 and dp.io_limit == 192
    assert dp.alone and dp.window == 192


def test_one_group_alone_opens_the_window_and_a_second_closes_it():
    """Holding requests only divides the store: one busy group alone keeps what it asks in
    flight (up to io_limit), a second busy group closes the window to what was learnt at once,
    and the window opens again once one group has had the store alone for ``alone_after``."""
    e = Engine()
    dev = e.create("a", "0 8 ioband sda 1 0 0 user weight 0 :1 1:1 2:1")
    dp = dev.dp
    a, b = Submitter(pid=1, uid=1), Submitter(pid=2, uid=2)
    first = [Request(False, 4096 * k, 4096, a) for k in range(40)]
    assert all(e.submit(dev, r, 0) for r in first)  # alone: 40 in flight, none held
    late = Request(False, 0, 4096, b)
    assert not e.submit(dev, late, 1)  # b is busy too: the window (16) applies at once
    assert not dp.alone and dp.window == 16 and dp.adaptive is not None
    for r in first[:25]:
        e.complete(r, 2)
    assert late in e.take_issued()  # 15 in flight: room under the window again
    e.complete(late, 3)
    for r in first[25:]:
        e.complete(r, 3)
    again = [Request(False, 0, 4096, a) for _ in range(32)]
    issued = [e.submit(dev, r, 4) for r in again]
    assert issued.count(True) == 16 and not dp.alone  # b was busy a moment ago: still shared
    now = 4 + e.alone_after + 1
    for r in e.take_issued() + again[:16]:
        e.complete(r, now)
    assert dp.alone and dp.window == 192  # a alone for alone_after: open
    assert e.take_issued() == again[16:]  # its held requests go out
