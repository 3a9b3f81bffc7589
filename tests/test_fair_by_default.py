"""Fair by default (issue 12), real I/O: three fio clients in three real cgroups share an ioband
NBD export 40/20/10 with every setting at its default (``io_limit 0``: the adaptive window),
on a loop device that a blkio throttle on the daemon's cgroup caps at READ_IOPS."""

from __future__ import annotations

import os

import pytest

from tests.test_nbd_fairness import (
    READ_IOPS,
    RUNTIME,
    WEIGHTS,
    bottleneck,  # noqa: F401  (a fixture)
    client_cgroups,
    fio,
    in_cgroup,
    measure,
    start_daemon,
)

TOLERANCE = 0.10


def with_depth(argv: list[str], depth: int) -> list[str]:
    return [f"--iodepth={depth}" if a.startswith("--iodepth=") else a for a in argv]


@pytest.mark.parametrize("depths", [(4, 4, 4), (1, 8, 32)], ids=["4-4-4", "1-8-32"])
def test_weights_hold_at_default_settings(bottleneck, tmp_path, depths):  # noqa: F811
    loop, daemon_cg, cgroups = bottleneck
    cgs = client_cgroups(f"ioband-fbd-{os.getpid()}", cgroups)
    groups = " ".join(f"{cgs[n][1]}:{w}" for n, w in WEIGHTS.items())
    table = f"0 {(256 << 20) // 512} ioband {loop} 1 0 0 cgroup weight 0 :1 {groups}"
    daemon, sock = start_daemon(tmp_path, daemon_cg, table)
    try:
        ios = measure({n: in_cgroup(cgs[n][0], with_depth(fio(sock, n), d))
                       for n, d in zip(WEIGHTS, depths)})  # fmt: skip
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    total = sum(ios.values())
    shares = {n: v / total for n, v in ios.items()}
    print("shares", {n: round(s, 3) for n, s in shares.items()}, "IOPS", total / RUNTIME)
    total_w = sum(WEIGHTS.values())
    for name, w in WEIGHTS.items():
        want = w / total_w
        assert abs(shares[name] - want) / want <= TOLERANCE, (name, shares, ios)
    assert total / RUNTIME >= 0.95 * READ_IOPS, total / RUNTIME
