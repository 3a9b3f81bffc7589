"""The mclock policy with real I/O: a reservation beside weights, and an IOPS cap, over NBD.

Same bottleneck as the fairness tests (a loop device capped at READ_IOPS by the kernel's blkio
throttle on the daemon's cgroup), same fio clients (nbd engine, 4 KiB random reads, depth 32,
told apart by uid) and the same counting over the window all of them overlap. The table keeps
the default ``io_limit 0`` (the adaptive window): mclock is meant to work with it.
"""

from __future__ import annotations

import os

from tests.test_nbd_fairness import (
    READ_IOPS,
    UIDS,
    as_user,
    bottleneck,  # noqa: F401  (the fixture)
    fio,
    overlap_counts,
    start_daemon,
)

SECTORS = (256 << 20) // 512
IO_LIMIT = int(os.environ.get("MCLOCK_IO_LIMIT", "0"))
WARMUP = 2  # seconds


def measure_rates(clients: dict[str, list[str]]) -> dict[str, float]:
    """Reads per second of each client over the window all of them ran (see
    ``test_nbd_fairness.overlap_counts``), after the adaptive window's first seconds
    (``WARMUP``: it starts at 16 and finds the throttle's one or two meanwhile; measured per
    second, the transient is in the first one or two)."""
    counts, seconds = overlap_counts(clients, WARMUP)
    return {name: n / seconds for name, n in counts.items()}


def run_table(tmp_path, daemon_cg, table: str, names: list[str]) -> dict[str, float]:
    daemon, sock = start_daemon(tmp_path, daemon_cg, table)
    try:
        rates = measure_rates({n: as_user(n, fio(sock, n)) for n in names})
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    print("rates (IOPS):", {n: round(v) for n, v in rates.items()})
    return rates


def test_reservation_beside_weights(bottleneck, tmp_path):  # noqa: F811
    """g1 reserves 30 % of the device; g2 and g3 (weights 1 and 4) share the rest 1:4."""
    loop, daemon_cg, _ = bottleneck
    reserve = READ_IOPS * 30 // 100
    groups = f"{UIDS['g1']}:{reserve}:1:0 {UIDS['g2']}:0:1:0 {UIDS['g3']}:0:4:0"
    table = f"0 {SECTORS} ioband {loop} 1 0 {IO_LIMIT} user mclock iops :0:1:0 {groups}"
    rates = run_table(tmp_path, daemon_cg, table, ["g1", "g2", "g3"])
    total = sum(rates.values())
    assert total > READ_IOPS * 0.7, rates  # the device was the bottleneck
    # A reservation above the group's weighted share is given exactly (no more). The simulator
    # checks it at >= 99 %; here fio's per-second counts of g1 run 443-456 on a quiet machine
    # (the throttle releases its 100 ms slices at once), so a ~7 s window read from them is off
    # by a few IOPS either way: 448-451 in eight local runs, 444 once in CI. "Met" is >= 97 %.
    assert rates["g1"] >= reserve * 0.97, rates
    ratio = rates["g3"] / rates["g2"]
    assert abs(ratio / 4 - 1) <= 0.10, f"g3:g2 = {ratio:.2f}, want 4 {rates}"


def test_iops_cap_holds(bottleneck, tmp_path):  # noqa: F811
    """g1 is capped at a third of the device's reads; g2, uncapped, takes the rest."""
    loop, daemon_cg, _ = bottleneck
    cap = READ_IOPS // 3
    groups = f"{UIDS['g1']}:0:100:0:riops={cap} {UIDS['g2']}:0:100:0"
    table = f"0 {SECTORS} ioband {loop} 1 0 0 user mclock iops :0:1:0 {groups}"
    rates = run_table(tmp_path, daemon_cg, table, ["g1", "g2"])
    assert abs(rates["g1"] - cap) / cap <= 0.05, rates
    assert rates["g2"] > READ_IOPS * 0.5, rates  # what g1 may not use goes to g2
