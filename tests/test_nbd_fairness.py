"""Fairness with real I/O: three fio processes share an ioband NBD export 40/20/10.

The default group gets weight 1: it is idle here, and the original hands an idle group's share to
whichever groups claim new tokens first, the small ones (token_extra).

The backing store is made the bottleneck by real means: a loop device opened with O_DIRECT,
capped at READ_IOPS by the kernel's blkio throttle on the cgroup the daemon runs in (created and
removed here). The three clients are told apart by what ioband classifies on: their real cgroups
(type ``cgroup``) or their uids (type ``user``).

Like dm-ioband, ioband arbitrates the requests it holds: the clients keep 3 x 32 requests
outstanding and the table's io_limit of 16 makes ioband hold what the device cannot take, so the
policy decides who goes next. (With io_limit at its default of 192 every request would pass at
once and the device's FIFO would share it by queue depth: dm-ioband's known shallow-queue
weakness, reproduced by the experiments.)

Needs root, losetup, the blkio hierarchy and fio; under CI (IOBAND_REQUIRE_REAL=1) their absence
fails the test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import require_real

BLKIO = Path("/sys/fs/cgroup/blkio")
READ_IOPS = 1500
RUNTIME = 11  # seconds each fio runs; shares are counted over the window all of them overlap
WEIGHTS = {"g1": 40, "g2": 20, "g3": 10}
TOLERANCE = 0.10


def prerequisites() -> None:
    require_real(os.geteuid() == 0, "needs root (loop devices, cgroups)")
    require_real(shutil.which("losetup") is not None, "losetup is not installed")
    require_real(shutil.which("fio") is not None, "fio is not installed")
    require_real(shutil.which("setpriv") is not None, "setpriv is not installed")
    require_real((BLKIO / "cgroup.procs").exists(), "the cgroup v1 blkio hierarchy is not mounted")


def throttled_cgroup(name: str, device: str, knob: str, value: int, made: list[Path]) -> Path:
    """A new blkio cgroup whose ``knob`` (e.g. ``blkio.throttle.read_iops_device``) caps
    ``device`` at ``value``; appended to ``made`` for ``remove_cgroups``."""
    rdev = os.stat(device).st_rdev
    cg = BLKIO / name
    cg.mkdir()
    made.append(cg)
    (cg / knob).write_text(f"{os.major(rdev)}:{os.minor(rdev)} {value}\n")
    return cg


def client_cgroups(prefix: str, made: list[Path]) -> dict[str, tuple[Path, int]]:
    """One new cgroup per client: its directory and its ioband id (the directory's inode)."""
    out = {}
    for name in WEIGHTS:
        cg = BLKIO / f"{prefix}-{name}"
        cg.mkdir()
        made.append(cg)
        out[name] = (cg, cg.stat().st_ino)
    return out


def remove_cgroups(made: list[Path]) -> None:
    for cg in reversed(made):
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:  # processes still leaving
                time.sleep(0.1)


@contextlib.contextmanager
def throttled_loop(tmp_path: Path, name: str, read_iops: int):
    """A loop device over a 256 MiB file and the cgroup ``name`` the daemon must run in to
    have it capped at ``read_iops``: (loop device, daemon cgroup, cgroups made)."""
    prerequisites()
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    cgroups: list[Path] = []
    try:
        knob = "blkio.throttle.read_iops_device"
        daemon_cg = throttled_cgroup(name, loop, knob, read_iops, cgroups)
        yield loop, daemon_cg, cgroups
    finally:
        remove_cgroups(cgroups)
        subprocess.run(["losetup", "-d", loop], check=False)


@pytest.fixture
def bottleneck(tmp_path: Path):
    """A throttled loop device and the cgroup the daemon must run in to be throttled."""
    with throttled_loop(tmp_path, f"ioband-test-{os.getpid()}-daemon", READ_IOPS) as made:
        yield made


UIDS = {"g1": 61001, "g2": 61002, "g3": 61003}  # the clients of the user-type tests


def as_user(name: str, argv: list[str]) -> list[str]:
    """argv, run as client ``name``'s uid (and gid), without supplementary groups."""
    uid = UIDS[name]
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


def in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    """argv, started inside ``cgroup``."""
    return ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]


def start_daemon(tmp_path: Path, daemon_cg: Path, table: str) -> tuple[subprocess.Popen, str]:
    # The socket must be reachable by the unprivileged clients of the user test, and the
    # export open to them (root's clients are always allowed).
    sock_dir = Path(tempfile.mkdtemp(prefix="ioband-test-", dir="/tmp"))
    sock_dir.chmod(0o755)
    sock = str(sock_dir / "nbd.sock")
    config = tmp_path / "ioband.toml"
    config.write_text(
        '[daemon]\ncontrol_socket = ""\nstate_file = ""\n'  # no control plane
        f'[nbd]\nunix_socket = "{sock}"\nsocket_mode = "0666"\n'
        f'[[device]]\nname = "ioband1"\ntable = "{table}"\ndirect = true\n'
        f"allow = [{', '.join(repr(f'uid:{u}') for u in UIDS.values())}]\n"
    )
    argv = [sys.executable, "-m", "ioband", "daemon", "--config", str(config)]
    proc = subprocess.Popen(in_cgroup(daemon_cg, argv), stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if os.path.exists(sock):
            return proc, sock
        if proc.poll() is not None:
            pytest.fail(f"daemon exited: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("daemon did not start")


def fio(sock: str, name: str) -> list[str]:
    return [
        "fio", f"--name={name}", "--ioengine=nbd", f"--uri=nbd+unix:///ioband1?socket={sock}",
        "--rw=randread", "--bs=4k", "--iodepth=32", "--size=200M", "--time_based",
        f"--runtime={RUNTIME}", "--output-format=json", "--status-interval=1",
    ]  # fmt: skip


def fio_reports(out: str) -> list[tuple[float, int]]:
    """(wall-clock seconds, reads completed so far) of each report fio printed.

    ``--status-interval`` makes fio print a cumulative JSON report every second, then its final
    one; they are concatenated objects, not one document.
    """
    decoder, reports, at = json.JSONDecoder(), [], out.find("{")
    while at != -1:
        report, end = decoder.raw_decode(out, at)
        job = report["jobs"][0]
        assert job["error"] == 0
        reports.append((report["timestamp_ms"] / 1000, job["read"]["total_ios"]))
        at = out.find("{", end)
    return reports


def count_at(reports: list[tuple[float, int]], when: float) -> float:
    """Reads completed at ``when``, interpolated between the two reports around it."""
    for (t0, n0), (t1, n1) in itertools.pairwise(reports):
        if t0 <= when <= t1:
            return n0 + (n1 - n0) * (when - t0) / (t1 - t0) if t1 > t0 else n1
    raise AssertionError(f"{when} is outside the reports {reports[0][0]}..{reports[-1][0]}")


def overlap_counts(clients: dict[str, list[str]], warmup: float = 0
                   ) -> tuple[dict[str, float], float]:  # fmt: skip
    """Runs the clients; the reads each completed while all of them ran, and for how long.

    The clients start one after another and so end one after another; counting each one's own
    run would hand the last one a tail alone on the device (and the first one a head). The
    window starts at the latest first report (a second after the last client started), plus
    ``warmup`` seconds, and ends at the earliest last one.
    """
    procs = {
        name: subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        for name, argv in clients.items()
    }
    reports = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=RUNTIME + 60)
        assert proc.returncode == 0
        reports[name] = fio_reports(out)
    start = max(r[0][0] for r in reports.values()) + warmup
    end = min(r[-1][0] for r in reports.values())
    overlap = end - start
    assert overlap >= RUNTIME - 3 - warmup, f"the clients overlapped for only {overlap:.1f} s"
    return {name: count_at(r, end) - count_at(r, start) for name, r in reports.items()}, overlap


def measure(clients: dict[str, list[str]], warmup: float = 0) -> dict[str, int]:
    """Reads each client completed while all of them ran (see :func:`overlap_counts`)."""
    counts, _ = overlap_counts(clients, warmup)
    return {name: round(n) for name, n in counts.items()}


def assert_shares(ios: dict[str, int]) -> None:
    total_io = sum(ios.values())
    print("IO shares:", {n: round(v / total_io, 3) for n, v in ios.items()}, ios)
    total_w = sum(WEIGHTS.values())
    for name, w in WEIGHTS.items():
        share, want = ios[name] / total_io, w / total_w
        assert abs(share - want) / want <= TOLERANCE, f"{name}: {share:.3f} vs {want:.3f} {ios}"
    # the device was the bottleneck: the clients together got about READ_IOPS (over a window
    # shorter than RUNTIME, so this errs on the strict side)
    assert total_io / RUNTIME > READ_IOPS * 0.7


def test_cgroup_type_shares_follow_weights(bottleneck, tmp_path):
    loop, daemon_cg, cgroups = bottleneck
    cgs = client_cgroups(f"ioband-test-{os.getpid()}", cgroups)
    groups = " ".join(f"{cgs[n][1]}:{w}" for n, w in WEIGHTS.items())
    table = f"0 {(256 << 20) // 512} ioband {loop} 1 0 16 cgroup weight 0 :1 {groups}"
    daemon, sock = start_daemon(tmp_path, daemon_cg, table)
    try:
        ios = measure({n: in_cgroup(cgs[n][0], fio(sock, n)) for n in WEIGHTS})
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    assert_shares(ios)


def test_user_type_shares_follow_weights(bottleneck, tmp_path):
    loop, daemon_cg, _ = bottleneck
    groups = " ".join(f"{UIDS[n]}:{w}" for n, w in WEIGHTS.items())
    table = f"0 {(256 << 20) // 512} ioband {loop} 1 0 16 user weight 0 :1 {groups}"
    daemon, sock = start_daemon(tmp_path, daemon_cg, table)
    try:
        ios = measure({n: as_user(n, fio(sock, n)) for n in WEIGHTS})
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    assert_shares(ios)
