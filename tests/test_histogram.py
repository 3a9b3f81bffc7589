"""Latency histograms: the log-linear buckets, percentiles, the Prometheus edges, and the
engine recording arrival to dispatch (hold) and arrival to completion with its injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioband.core.engine import Engine
from ioband.core.histogram import (
    BUCKETS,
    LAST,
    Histogram,
    bucket_bounds,
    bucket_of,
    counts_from_sparse,
    percentile,
    prometheus_buckets,
)
from ioband.core.request import HELD, ISSUED, Request


@given(st.integers(min_value=0, max_value=(1 << 28) - 1))
def test_a_value_falls_in_its_bucket_and_buckets_are_narrow(us):
    index = bucket_of(us)
    low, high = bucket_bounds(index)
    assert low <= us < high
    assert high - low <= max(1, low // 8)  # 1/8 of an octave at most


def test_bucket_edges_are_contiguous_and_the_last_takes_the_rest():
    for index in range(1, BUCKETS):
        assert bucket_bounds(index)[0] == bucket_bounds(index - 1)[1]
    assert bucket_of(-5) == 0
    assert bucket_of(1 << 40) == LAST


def test_percentiles_interpolate_inside_buckets():
    h = Histogram()
    for us in range(1, 10_001):  # 1 µs .. 10 ms, uniform
        h.record(us * 1000)
    assert percentile(h.counts, 0.5) == pytest.approx(5000, rel=0.02)
    assert percentile(h.counts, 0.99) == pytest.approx(9900, rel=0.03)
    assert h.sum_ns == sum(range(1, 10_001)) * 1000
    assert percentile([0] * BUCKETS, 0.5) is None
    assert counts_from_sparse(h.sparse()) == h.counts


def test_prometheus_buckets_are_cumulative_and_end_in_inf():
    h = Histogram()
    for us in (5, 1000, 1500, 2_000_000, 10**9):
        h.record(us * 1000)
    pairs = prometheus_buckets(h.counts)
    assert pairs[-1] == ("+Inf", 5)
    counts = [n for _, n in pairs]
    assert counts == sorted(counts)
    edges = dict(pairs)
    assert edges["1.6e-05"] == 1 and edges["0.001024"] == 2 and edges["0.002048"] == 3
    assert edges["33.554432"] == 4  # 1000 s is above the last edge


class FakeClock:
    def __init__(self) -> None:
        self.ns = 1_000_000

    def __call__(self) -> int:
        return self.ns


def test_engine_records_hold_and_latency_with_the_injected_clock():
    clock = FakeClock()
    e = Engine(clock_ns=clock)
    dev = e.create("a", "0 100 ioband sda 1 1 1 none weight 0 :100")  # one request at a time
    first, second = Request(False, 0, 4096), Request(False, 8, 4096)
    assert e.submit(dev, first, 0) and first.state == ISSUED
    clock.ns += 300_000
    assert not e.submit(dev, second, 0) and second.state == HELD
    clock.ns += 2_000_000  # the first completes after 2.3 ms; the second was held 2 ms
    e.complete(first, 0)
    assert second.state == ISSUED
    clock.ns += 1_000_000
    e.complete(second, 0)
    g = dev.head
    assert g.hold.count == 2 and g.hold.sum_ns == 0 + 2_000_000
    assert g.latency.count == 2 and g.latency.sum_ns == 2_300_000 + 3_000_000
    assert (first.arrival_ns, first.dispatch_ns) == (1_000_000, 1_000_000)
    assert second.dispatch_ns - second.arrival_ns == 2_000_000
    e.message("a", "reset")  # the statistics reset clears them too
    assert g.latency.count == 0 and g.hold.sum_ns == 0


def test_a_front_end_may_stamp_the_arrival_itself():
    """The NBD front end reads commands behind a waiting one and stamps them as they arrive."""
    clock = FakeClock()
    e = Engine(clock_ns=clock)
    dev = e.create("a", "0 100 ioband sda 1 4 4 none weight 0 :100")
    req = Request(False, 0, 4096)
    req.arrival_ns = clock.ns - 5_000_000
    assert e.submit(dev, req, 0)
    assert dev.head.hold.sum_ns == 5_000_000


def test_the_default_clock_follows_the_jiffies():
    e = Engine(hz=1000)
    dev = e.create("a", "0 100 ioband sda 1 4 4 none weight 0 :100")
    req = Request(False, 0, 4096)
    e.submit(dev, req, 3)
    e.complete(req, 10)
    assert dev.head.latency.sum_ns == 7_000_000
