"""Fair by default, on real I/O (issue 12): the table sets no ``io_limit`` and no
``io_throttle``; the adaptive dispatch window finds how many requests the store serves at once
and holds the rest in ioband, where the weights apply.

The method is that of ``test_nbd_fairness``: a loop device opened with O_DIRECT and capped at
READ_IOPS by a blkio throttle on the daemon's cgroup, so the store serves one request at a
time; three fio clients (the nbd engine) in three real cgroups at weights 40/20/10, and here
at the depths real clients use, not deeper than ioband's limit.
"""

from __future__ import annotations

import os

import pytest

from tests.test_nbd_fairness import (
    RUNTIME,
    WEIGHTS,
    assert_shares,
    bottleneck,  # noqa: F401  (a fixture)
    client_cgroups,
    in_cgroup,
    measure,
    start_daemon,
)


def fio(sock: str, name: str, depth: int) -> list[str]:
    return [
        "fio", f"--name={name}", "--ioengine=nbd", f"--uri=nbd+unix:///ioband1?socket={sock}",
        "--rw=randread", "--bs=4k", f"--iodepth={depth}", "--size=200M", "--time_based",
        f"--runtime={RUNTIME}", "--output-format=json", "--status-interval=1",
    ]  # fmt: skip


def shares_at_depths(bottleneck, tmp_path, depths: dict[str, int]) -> dict[str, int]:  # noqa: F811
    loop, daemon_cg, cgroups = bottleneck
    cgs = client_cgroups(f"ioband-fbd-{os.getpid()}", cgroups)
    groups = " ".join(f"{cgs[n][1]}:{w}" for n, w in WEIGHTS.items())
    # defaults: io_throttle 0 and io_limit 0 (adaptive)
    table = f"0 {(256 << 20) // 512} ioband {loop} 1 0 0 cgroup weight 0 :1 {groups}"
    daemon, sock = start_daemon(tmp_path, daemon_cg, table)
    try:
        return measure({n: in_cgroup(cgs[n][0], fio(sock, n, depths[n])) for n in WEIGHTS})
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


@pytest.mark.parametrize("depths", [(4, 4, 4), (1, 8, 32)], ids=["4-4-4", "1-8-32"])
def test_weights_hold_at_default_settings(bottleneck, tmp_path, depths):  # noqa: F811
    ios = shares_at_depths(bottleneck, tmp_path, dict(zip(WEIGHTS, depths)))
    assert_shares(ios)
