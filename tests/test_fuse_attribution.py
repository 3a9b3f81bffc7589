"""Who is charged for I/O through a FUSE mount: the process that opened the file, its cgroup,
also for writes the kernel or ioband delay (page-owner tracking in user space)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_real
from tests.fuse_helpers import mounted
from tests.test_nbd_fairness import BLKIO, in_cgroup

MIB = 1 << 20


@pytest.fixture
def cgroups():
    require_real((BLKIO / "cgroup.procs").exists(), "the cgroup v1 blkio hierarchy is not mounted")
    made = []
    for name in ("a", "b"):
        cg = BLKIO / f"ioband-attr-test-{os.getpid()}-{name}"
        cg.mkdir()
        made.append(cg)
    try:
        yield made
    finally:
        for cg in made:
            cg.rmdir()


def written_sectors(m, ids: list[int]) -> dict[int, int]:
    def read() -> dict[int, int]:
        dev = m.daemon.daemon.engine.devices[m.name]
        out = {-1: dev.head.sectors[1]}
        out.update({i: dev.groups[i].sectors[1] for i in ids})
        return out

    return m.daemon.call(read)


@pytest.mark.parametrize("mode", ["write_behind", "writeback_cache", "write_through"])
def test_delayed_writes_are_charged_to_the_writers_cgroup(tmp_path: Path, cgroups, mode):
    """Two writers in two cgroups write 8 and 4 MiB through the page cache, then sync: each
    cgroup's group is charged its writer's bytes, none go to the default group, whether ioband
    delays the writes (write_behind, the default), the kernel does (writeback_cache: the
    flusher thread sends them) or neither does."""
    ids = [cg.stat().st_ino for cg in cgroups]
    extra = {
        "write_behind": "",
        "writeback_cache": "writeback_cache = true",
        "write_through": "write_behind = false",
    }[mode]
    policy = f"cgroup weight 0 :100 {ids[0]}:40 {ids[1]}:20"
    with mounted(tmp_path, policy=policy, extra=extra) as m:
        for cg, mib in zip(cgroups, (8, 4)):
            argv = ["dd", "if=/dev/zero", f"of={m.mnt}/{cg.name}", "bs=64k", f"count={mib * 16}"]
            subprocess.run(in_cgroup(cg, argv), check=True, capture_output=True, timeout=60)
        os.sync()
        for cg in cgroups:  # close and fsync through the mount: every delayed write has landed
            fd = os.open(m.mnt / cg.name, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        charged = written_sectors(m, ids)
    assert (m.backing / cgroups[0].name).stat().st_size == 8 * MIB
    assert charged[ids[0]] * 512 == 8 * MIB, charged
    assert charged[ids[1]] * 512 == 4 * MIB, charged
    assert charged[-1] == 0, charged


def test_reads_are_charged_to_the_opener(tmp_path: Path):
    """type pid: a read is charged to the process that opened the file."""
    require_real(os.geteuid() == 0, "needs root")
    with mounted(tmp_path) as m:
        (m.backing / "f").write_bytes(os.urandom(MIB))
        proc = subprocess.Popen(["sh", "-c", f"read x; exec dd if={m.mnt}/f of=/dev/null bs=4k"
                                 " iflag=direct"], stdin=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        m.daemon.call(lambda: m.daemon.daemon.engine.message(m.name, ["attach", str(proc.pid)]))
        proc.communicate(b"go\n", timeout=60)
        dev = m.daemon.daemon.engine.devices[m.name]
        reads = m.daemon.call(lambda: dev.groups[proc.pid].ios[0])
    assert reads == 257  # 256 x 4 KiB, and the read that finds the end of the file
