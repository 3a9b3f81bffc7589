"""The adaptive dispatch window on its own (core/window.py), against small stores in virtual
jiffies, and its wiring in the engine (io_limit 0 adaptive, io_limit N pinned)."""

from __future__ import annotations

import heapq

from ioband.core.engine import Engine
from ioband.core.window import AdaptiveWindow

HZ = 10_000  # 0.1 ms jiffies, so that service times of a few jiffies are resolved


def drive(window: AdaptiveWindow, *, slots: int, service: int, demand: int, seconds: float,
          change: tuple[float, int, int] | None = None) -> list[int]:  # fmt: skip
    """A store serving ``slots`` requests at a time, ``service`` jiffies each, FIFO beyond;
    clients keeping ``demand`` requests outstanding. Returns the window every 0.1 s.
    ``change``: (at second, slots, service) from then on."""
    now = 0
    queue: list[int] = []  # waiting in the store (issue times)
    busy: list[int] = []  # finish times of the requests being served
    inflight = 0
    trace = []
    end = int(seconds * HZ)
    while now < end:
        if change and now == int(change[0] * HZ):
            slots, service = change[1], change[2]
        while busy and busy[0] <= now:
            heapq.heappop(busy)
            inflight -= 1
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
        now += 1
    return trace


def test_a_parallel_store_gets_what_it_serves_in_parallel():
    w = AdaptiveWindow(HZ, 192)
    trace = drive(w, slots=32, service=40, demand=96, seconds=3)
    assert all(32 <= v <= 40 for v in trace[10:]), trace


def test_clients_that_do_not_fill_it_do_not_grow_it():
    w = AdaptiveWindow(HZ, 192)
    trace = drive(w, slots=32, service=40, demand=4, seconds=2)
    assert max(trace) <= 16, trace  # never above where it started


def test_a_store_that_becomes_slower_shrinks_it():
    w = AdaptiveWindow(HZ, 192)
    trace = drive(w, slots=32, service=40, demand=96, seconds=4, change=(2.0, 8, 40))
    assert trace[19] >= 32  # 32 in parallel before the change
    assert all(v <= 16 for v in trace[30:]), trace  # 8 after it: within a second


def test_the_window_never_exceeds_the_derived_io_limit():
    w = AdaptiveWindow(HZ, 24)
    trace = drive(w, slots=64, service=40, demand=200, seconds=2)
    assert max(trace) == 24


def test_engine_io_limit_0_is_adaptive_and_io_limit_n_pins_it():
    e = Engine()
    e.create("a", "0 8 ioband sda 1 0 0 none weight 0 :1")
    dp = e.devices["a"].dp
    assert dp.adaptive is not None and dp.io_limit == 192 and dp.window == 16
    assert e.table("a") == "0 8 ioband sda 1 4 0 none weight 768 :1"
    e.message("a", "io_limit 32")
    assert dp.adaptive is None and dp.window == 32
    assert e.table("a") == "0 8 ioband sda 1 4 32 none weight 128 :1"
    e.message("a", "io_limit 0")
    assert dp.adaptive is not None and dp.window == 16 and dp.io_limit == 192
