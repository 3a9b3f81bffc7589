"""Latency histograms with fixed log-linear buckets: O(1) to record, no allocation.

Every group keeps two (``Group.latency``: arrival at ioband to completion; ``Group.hold``:
arrival to dispatch). A value is kept in whole microseconds in one of ``BUCKETS`` buckets: below
8 µs one bucket per microsecond, then every power of two is cut into 8 equal buckets (each
1/8 of an octave wide, so a bucket is at most 12.5 % of its value: percentiles interpolated
inside one are good to a few per cent), up to 2**28 µs (268 s); the last bucket takes anything
longer. The index is found with ``int.bit_length`` (no search), like HdrHistogram's.

Prometheus gets the cumulative counts at the octave edges (``EXPORT_EDGES_US``, 16 µs to 33.6 s:
a factor-2 exponential layout, what ``histogram_quantile`` expects).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Final, cast

SUB_BITS: Final = 3
SUB: Final = 1 << SUB_BITS  # buckets per octave
TOP_BITS: Final = 27  # the octave [2**27, 2**28) µs, up to 268 s, is the last
BUCKETS: Final = (TOP_BITS - SUB_BITS + 1) * SUB + SUB  # 208
LAST: Final = BUCKETS - 1


def bucket_of(us: int) -> int:
    """The bucket of a value in microseconds (negative values, from a clock that went
    backwards, count as 0)."""
    if us < SUB:
        return us if us > 0 else 0
    bits = us.bit_length()
    index = (bits - SUB_BITS) * SUB + (us >> (bits - SUB_BITS - 1)) - SUB
    return index if index < LAST else LAST


def bucket_bounds(index: int) -> tuple[int, int]:
    """``[low, high)`` of a bucket in microseconds."""
    if index < SUB:
        return index, index + 1
    octave, step = divmod(index, SUB)
    return (SUB + step) << (octave - 1), (SUB + step + 1) << (octave - 1)


# Octave edges exported to Prometheus: bucket_of(2**k) == (k - SUB_BITS + 1) * SUB.
EXPORT_EDGES_US = tuple(1 << k for k in range(4, 26))
_EXPORT_INDEX = tuple((k - SUB_BITS + 1) * SUB for k in range(4, 26))


def zeros() -> array[int]:
    """Bucket counts: an ``array`` of machine integers, not a list of Python ints. Every group
    keeps two histograms; as lists their 416 references per group were what the cyclic garbage
    collector spent most of its time on at 10 000 groups (an array holds no references)."""
    return array("q", bytes(8 * BUCKETS))


class Histogram:
    """Counts per bucket, their total and the exact sum of the values (nanoseconds)."""

    __slots__ = ("count", "counts", "sum_ns")

    def __init__(self) -> None:
        self.counts = zeros()
        self.count = 0
        self.sum_ns = 0

    def record(self, ns: int) -> None:
        us = ns // 1000
        if us < SUB:  # bucket_of, inlined: this runs twice per request
            index = us if us > 0 else 0
        else:
            bits = us.bit_length()
            index = (bits - SUB_BITS) * SUB + (us >> (bits - SUB_BITS - 1)) - SUB
            if index > LAST:
                index = LAST
        self.counts[index] += 1
        self.count += 1
        self.sum_ns += ns

    def reset(self) -> None:
        self.counts = zeros()
        self.count = 0
        self.sum_ns = 0

    def sparse(self) -> dict[str, int | list[list[int]]]:
        """A compact, JSON-ready copy: the non-empty buckets as ``[[index, count], ...]``."""
        return {
            "count": self.count,
            "sum_ns": self.sum_ns,
            "buckets": [[i, n] for i, n in enumerate(self.counts) if n],
        }


def prometheus_buckets(counts: Sequence[int]) -> list[tuple[str, int]]:
    """Cumulative ``(le, count)`` pairs at the octave edges in seconds, ending in ``+Inf``."""
    out = []
    running = 0
    start = 0
    for edge, stop in zip(EXPORT_EDGES_US, _EXPORT_INDEX):
        running += sum(counts[start:stop])
        start = stop
        out.append((repr(edge / 1e6), running))
    out.append(("+Inf", running + sum(counts[start:])))
    return out


def counts_from_sparse(data: Mapping[str, object]) -> array[int]:
    """Dense counts from ``Histogram.sparse()`` (as read back from JSON)."""
    counts = zeros()
    buckets = cast("list[list[int]]", data.get("buckets", []))
    for index, n in buckets:
        if 0 <= index < BUCKETS:
            counts[index] = n
    return counts


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) in microseconds, interpolated linearly inside its bucket;
    None when there is nothing counted."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, n in enumerate(counts):
        if n and seen + n >= rank:
            low, high = bucket_bounds(index)
            return low + (high - low) * max(rank - seen, 0) / n
        seen += n
    low, high = bucket_bounds(LAST)
    return float(high)
