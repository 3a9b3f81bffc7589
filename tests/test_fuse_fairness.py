"""Fairness with real processes through a FUSE mount: three fio processes, in three real cgroups
(type ``cgroup``) or under three uids (type ``user``), read files in the mount, weights 40/20/10.

The backing store is the bottleneck by real means, as in the NBD test: the backing directory is
an ext4 file system on a loop device, the daemon (and so its FUSE worker, which does the I/O)
runs in a cgroup whose blkio throttle caps the loop device at READ_IOPS, and the device is
``direct = true`` so that every read reaches the loop device. Each fio keeps 32 reads
outstanding and the table's io_limit is 16: ioband holds what the device cannot take and its
policy decides who goes next.

Needs root, losetup, mkfs.ext4, the blkio hierarchy, fio, setpriv and FUSE; under CI
(IOBAND_REQUIRE_REAL=1) their absence fails the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import require_real
from tests.fuse_helpers import fuse_prerequisites, unmount
from tests.test_nbd_fairness import (
    BLKIO,
    UIDS,
    WEIGHTS,
    as_user,
    assert_shares,
    client_cgroups,
    in_cgroup,
    measure,
    remove_cgroups,
    throttled_cgroup,
)

READ_IOPS = 1500
RUNTIME = 11  # as in the NBD test: shares count the window all clients overlap
JOBS = 32  # reads outstanding per client


def prerequisites() -> None:
    fuse_prerequisites()
    for tool in ("losetup", "mkfs.ext4", "fio", "setpriv"):
        require_real(shutil.which(tool) is not None, f"{tool} is not installed")
    require_real((BLKIO / "cgroup.procs").exists(), "the cgroup v1 blkio hierarchy is not mounted")


@pytest.fixture
def bottleneck(tmp_path: Path):
    """An ext4 file system on a throttled loop device, with a file per client."""
    prerequisites()
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(1536 << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    backfs = tmp_path / "backfs"
    backfs.mkdir()
    cgroups: list[Path] = []
    mounted = False
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", loop], check=True, timeout=60)
        subprocess.run(["mount", loop, str(backfs)], check=True, timeout=30)
        mounted = True
        backfs.chmod(0o755)
        for name in WEIGHTS:
            with open(backfs / name, "wb") as f:
                f.write(os.urandom(1 << 20) * 64)
            (backfs / name).chmod(0o644)
        os.sync()
        daemon_cg = throttled_cgroup(
            f"ioband-fuse-test-{os.getpid()}-daemon",
            loop,
            "blkio.throttle.read_iops_device",
            READ_IOPS,
            cgroups,
        )
        yield backfs, daemon_cg, cgroups
    finally:
        remove_cgroups(cgroups)
        if mounted:
            subprocess.run(["umount", "-l", str(backfs)], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)


def start_daemon(tmp_path: Path, daemon_cg: Path, table: str, extra: str = ""
                 ) -> tuple[subprocess.Popen, Path]:  # fmt: skip
    # reachable by the unprivileged clients of the user test (pytest's tmp_path is not)
    public = Path(tempfile.mkdtemp(prefix="ioband-fuse-test-", dir="/tmp"))
    public.chmod(0o755)
    mnt = public / "mnt"
    mnt.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    config = tmp_path / "ioband.toml"
    config.write_text(
        f'[daemon]\ncontrol_socket = ""\nstate_file = ""\n[nbd]\nunix_socket = "{run}/nbd.sock"\n'
        f'[[device]]\nname = "files1"\ntable = "{table}"\nmountpoint = "{mnt}"\ndirect = true\n'
        + extra
    )
    argv = [sys.executable, "-m", "ioband", "daemon", "--config", str(config)]
    proc = subprocess.Popen(in_cgroup(daemon_cg, argv), stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if subprocess.run(["mountpoint", "-q", str(mnt)]).returncode == 0:
            return proc, mnt
        if proc.poll() is not None:
            pytest.fail(f"daemon exited: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the mount did not appear")


def stop_daemon(proc: subprocess.Popen, mnt: Path) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        unmount(mnt)
        for d in (mnt, mnt.parent):  # never rmtree: a failed unmount would reach the backing
            with contextlib.suppress(OSError):
                d.rmdir()


def fio(path: Path, name: str, rw: str = "randread") -> list[str]:
    return [
        "fio", f"--name={name}", f"--filename={path}", f"--rw={rw}", "--bs=4k", "--direct=1",
        "--ioengine=psync", f"--numjobs={JOBS}", "--group_reporting", "--size=64M",
        "--time_based", f"--runtime={RUNTIME}", "--output-format=json", "--status-interval=1",
    ]  # fmt: skip


def test_cgroup_type_shares_follow_weights(bottleneck, tmp_path):
    backfs, daemon_cg, cgroups = bottleneck
    cgs = client_cgroups(f"ioband-fuse-test-{os.getpid()}", cgroups)
    groups = " ".join(f"{cgs[n][1]}:{w}" for n, w in WEIGHTS.items())
    table = f"0 0 ioband {backfs} 1 0 16 cgroup weight 0 :1 {groups}"
    daemon, mnt = start_daemon(tmp_path, daemon_cg, table)
    try:
        ios = measure({n: in_cgroup(cgs[n][0], fio(mnt / n, n)) for n in WEIGHTS})
    finally:
        stop_daemon(daemon, mnt)
    assert_shares(ios)


def test_user_type_shares_follow_weights(bottleneck, tmp_path):
    backfs, daemon_cg, _ = bottleneck
    groups = " ".join(f"{UIDS[n]}:{w}" for n, w in WEIGHTS.items())
    table = f"0 0 ioband {backfs} 1 0 16 user weight 0 :1 {groups}"
    daemon, mnt = start_daemon(tmp_path, daemon_cg, table)
    try:
        ios = measure({n: as_user(n, fio(mnt / n, n)) for n in WEIGHTS})
    finally:
        stop_daemon(daemon, mnt)
    assert_shares(ios)


WRITE_BPS = 12 << 20


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_buffered_writes_charged_to_the_writers_cgroups(bottleneck, tmp_path):
    """Delayed writes: three dd processes, each in its own cgroup, write through the page cache
    (no O_DIRECT, no fsync). ioband answers their writes at once and writes them later, charged
    to each file's opener and admitted by weight; a writer with too much outstanding waits, so
    each goes at its group's pace. Shares are measured where the bytes land: the backing
    files."""
    backfs, daemon_cg, cgroups = bottleneck
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(backfs)], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    rdev = os.stat(source).st_rdev
    throttle = daemon_cg / "blkio.throttle.write_bps_device"
    throttle.write_text(f"{os.major(rdev)}:{os.minor(rdev)} {WRITE_BPS}\n")
    cgs = client_cgroups(f"ioband-fuse-test-{os.getpid()}", cgroups)
    groups = " ".join(f"{cgs[n][1]}:{w}" for n, w in WEIGHTS.items())
    table = f"0 0 ioband {backfs} 1 0 16 cgroup weight 0 :1 {groups}"
    daemon, mnt = start_daemon(tmp_path, daemon_cg, table)
    procs = []
    try:
        for n in WEIGHTS:
            argv = ["dd", "if=/dev/zero", f"of={mnt}/w-{n}", "bs=1M", "count=320"]
            procs.append(subprocess.Popen(in_cgroup(cgs[n][0], argv),
                                          stderr=subprocess.DEVNULL))  # fmt: skip
        time.sleep(2)
        start = {n: allocated(backfs / f"w-{n}") for n in WEIGHTS}
        time.sleep(RUNTIME)
        end = {n: allocated(backfs / f"w-{n}") for n in WEIGHTS}
        running = [p.poll() is None for p in procs]
    finally:
        for p in procs:
            p.kill()
        throttle.write_text(f"{os.major(rdev)}:{os.minor(rdev)} 0\n")  # drain at full speed
        for p in procs:
            p.wait(timeout=60)
        stop_daemon(daemon, mnt)
    written = {n: end[n] - start[n] for n in WEIGHTS}
    total = sum(written.values())
    print("write shares:", {n: round(v / total, 3) for n, v in written.items()}, written)
    assert all(running)  # every writer had more to write all along
    total_w = sum(WEIGHTS.values())
    for name, w in WEIGHTS.items():
        share, want = written[name] / total, w / total_w
        assert abs(share - want) / want <= 0.15, f"{name}: {share:.3f} vs {want:.3f} {written}"
    assert total / RUNTIME > WRITE_BPS * 0.7  # the device was the bottleneck
