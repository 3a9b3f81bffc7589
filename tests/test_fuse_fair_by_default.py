"""Fair by default through the FUSE mount (issue 12): the table sets no ``io_limit`` and no
``io_throttle``. The method is that of ``test_fuse_fairness`` (an ext4 file system on a loop
device throttled by blkio on the daemon's cgroup, ``direct = true``), with three fio processes
in three real cgroups at weights 40/20/10 keeping four reads each outstanding: twelve, fewer
than dm-ioband's io_limit of 192 and than the window the controller starts with.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_fair_by_default import WARMUP
from tests.test_fuse_fairness import (
    RUNTIME,
    WEIGHTS,
    assert_shares,
    bottleneck,  # noqa: F401  (a fixture)
    client_cgroups,
    in_cgroup,
    measure,
    start_daemon,
    stop_daemon,
)


def fio(path: Path, name: str, jobs: int) -> list[str]:
    return [
        "fio", f"--name={name}", f"--filename={path}", "--rw=randread", "--bs=4k", "--direct=1",
        "--ioengine=psync", f"--numjobs={jobs}", "--group_reporting", "--size=64M",
        "--time_based", f"--runtime={RUNTIME + WARMUP}", "--output-format=json",
        "--status-interval=1",
    ]  # fmt: skip


@pytest.mark.parametrize("jobs", [(4, 4, 4), (1, 8, 32)], ids=["4-4-4", "1-8-32"])
def test_weights_hold_at_default_settings(bottleneck, tmp_path, jobs):  # noqa: F811
    """Processes per group (each keeps one read outstanding): 4/4/4, and 1/8/32."""
    backfs, daemon_cg, cgroups = bottleneck
    cgs = client_cgroups(f"ioband-fuse-fbd-{os.getpid()}", cgroups)
    groups = " ".join(f"{cgs[n][1]}:{w}" for n, w in WEIGHTS.items())
    table = f"0 0 ioband {backfs} 1 0 0 cgroup weight 0 :1 {groups}"  # defaults
    daemon, mnt = start_daemon(tmp_path, daemon_cg, table)
    try:
        clients = {
            n: in_cgroup(cgs[n][0], fio(mnt / n, n, k)) for n, k in zip(WEIGHTS, jobs, strict=True)
        }
        ios = measure(clients, warmup=WARMUP)
    finally:
        stop_daemon(daemon, mnt)
    assert_shares(ios)
