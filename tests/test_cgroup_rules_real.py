"""Cgroups by path and by rule, on real cgroups (v1 blkio and the v2 hierarchy beside it) with a
real daemon and real NBD clients (fio).

- A group attached by path keeps its weight when its cgroup is removed and made again at the
  same path (a new inode): the next client there is counted in the same group.
- ``[[device.rule]]`` rules attach the groups of cgroups made after the daemon started, the
  first time they do I/O, and the shares follow the rules' weights on a real bottleneck (the
  blkio-throttled loop device of test_nbd_fairness); the groups go when the cgroups do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import test_nbd_fairness as fair
from tests.conftest import require_real

HIERARCHIES = {"v1": Path("/sys/fs/cgroup/blkio"), "v2": Path("/sys/fs/cgroup/unified")}
bottleneck = fair.bottleneck


def hierarchy(version: str) -> Path:
    root = HIERARCHIES[version]
    require_real(os.geteuid() == 0, "needs root (cgroups)")
    require_real((root / "cgroup.procs").exists(), f"no cgroup hierarchy at {root}")
    require_real(shutil.which("fio") is not None, "fio is not installed")
    return root


def start_daemon(tmp_path: Path, table: str, version: str, extra: str = "",
                 cgroup: Path | None = None) -> tuple[subprocess.Popen, str, str]:  # fmt: skip
    sock_dir = Path(tempfile.mkdtemp(prefix="ioband-test-", dir="/tmp"))
    sock, control = str(sock_dir / "nbd.sock"), str(sock_dir / "control.sock")
    config = tmp_path / "ioband.toml"
    config.write_text(
        f'[daemon]\ncgroup_hierarchy = "{version}"\ncontrol_socket = "{control}"\n'
        f'state_file = ""\n[nbd]\nunix_socket = "{sock}"\n'
        f'[[device]]\nname = "ioband1"\ntable = "{table}"\ndirect = true\n{extra}'
    )
    argv = [sys.executable, "-m", "ioband", "daemon", "--config", str(config)]
    if cgroup is not None:
        argv = fair.in_cgroup(cgroup, argv)
    log = tmp_path / "daemon.log"  # a file, not a pipe nobody reads: the daemon never blocks
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out, text=True)
    for _ in range(100):
        if os.path.exists(control):
            return proc, sock, control
        if proc.poll() is not None:
            pytest.fail(f"daemon exited: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("daemon did not start")


def ioband(control: str, *argv: str) -> str:
    cmd = [sys.executable, "-m", "ioband", *argv, "--socket", control]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def group_reads(control: str) -> dict[str, int]:
    """Each group's reads, from ``ioband status`` (7 columns a group, named by label)."""
    words = ioband(control, "status", "ioband1").split()
    blocks = words[words.index("ioband") + 2 :]
    return {blocks[i]: int(blocks[i + 1]) for i in range(0, len(blocks), 7)}


def small_read(sock: str, cgroup: Path) -> None:
    argv = [
        "fio", "--name=probe", "--ioengine=nbd", f"--uri=nbd+unix:///ioband1?socket={sock}",
        "--rw=read", "--bs=4k", "--size=256k", "--output-format=terse",
    ]  # fmt: skip
    subprocess.run(fair.in_cgroup(cgroup, argv), check=True, capture_output=True, timeout=60)


def wait_for(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_recreated_cgroup_keeps_its_weight(version, tmp_path):
    root = hierarchy(version)
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    slice_dir = root / f"ioband-test-{os.getpid()}-machine.slice"
    path = f"{slice_dir.name}/vm1.scope"
    # the cgroup does not exist yet: the path is accepted and waits for it
    table = f"0 {(8 << 20) // 512} ioband {image} 1 0 0 cgroup weight 0 :100 {path}:200"
    slice_dir.mkdir()
    scope = slice_dir / "vm1.scope"
    daemon, sock, control = start_daemon(tmp_path, table, version)
    try:
        assert ioband(control, "table", "ioband1").endswith(f" /{path}:200")
        scope.mkdir()
        first = scope.stat().st_ino
        small_read(sock, scope)
        before = group_reads(control)[f"/{path}"]
        assert before >= 64  # 256 KiB in 4 KiB reads
        scope.rmdir()  # the VM stops; its scope goes ...
        time.sleep(2 * 0.5)  # ... and the watcher looks (CGROUP_POLL) without detaching it
        scope.mkdir()  # ... and comes back at the same path, as a new cgroup
        assert scope.stat().st_ino != first
        small_read(sock, scope)
        after = group_reads(control)
        assert after[f"/{path}"] >= before + 64, after
        assert after["-1"] == 0, after  # nothing fell to the default group
        assert ioband(control, "table", "ioband1").endswith(f" /{path}:200")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        for d in (scope, slice_dir):
            if d.exists():
                fair.remove_cgroups([d])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_rules_attach_new_cgroups_and_hold_their_shares(version, bottleneck, tmp_path):
    """Three cgroups made after the daemon started, under one slice, attached by three rules
    (the last a catch-all: first match wins) with weights 40/20/10; shares measured as in
    test_nbd_fairness."""
    root = hierarchy(version)
    loop, daemon_cg, _ = bottleneck
    slice_name = f"ioband-test-{os.getpid()}-machine.slice"
    rules = "".join(
        f'[[device.rule]]\ncgroup = "{slice_name}/{pattern}"\nweight = {weight}\n'
        for pattern, weight in (("g1*.scope", 40), ("g2*.scope", 20), ("*.scope", 10))
    )
    table = f"0 {(256 << 20) // 512} ioband {loop} 1 0 16 cgroup weight 0 :1"
    slice_dir = root / slice_name
    scopes = {name: slice_dir / f"{name}-{os.getpid()}.scope" for name in fair.WEIGHTS}
    daemon, sock, control = start_daemon(tmp_path, table, version, rules, daemon_cg)
    try:
        slice_dir.mkdir()
        for scope in scopes.values():
            scope.mkdir()
        assert ioband(control, "table", "ioband1").endswith(":1")  # nothing attached yet
        ios = fair.measure({n: fair.in_cgroup(scopes[n], fair.fio(sock, n)) for n in scopes})
        reads = group_reads(control)
        for scope in scopes.values():
            assert reads[f"/{slice_name}/{scope.name}"] > 0, reads
        assert ioband(control, "table", "ioband1").endswith(":1")  # rule groups: not in it
        fair.remove_cgroups(list(scopes.values()))
        wait_for(lambda: list(group_reads(control)) == ["-1"], "the rule groups to go")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        fair.remove_cgroups([p for p in [*scopes.values(), slice_dir] if p.exists()])
    fair.assert_shares(ios)


def test_fuse_requests_find_path_and_rule_groups(tmp_path):
    """Through a FUSE mount (the workers send a cgroup's inode; the daemon finds its path):
    writes in a scope attached by path and in one a rule attached are charged to their groups,
    also after the first scope is made again."""
    from tests.fuse_helpers import mounted

    root = hierarchy("v1")
    slice_dir = root / f"ioband-test-{os.getpid()}-fuse.slice"
    a, b = slice_dir / "a.scope", slice_dir / "b.scope"
    rule = f'[[device.rule]]\ncgroup = "{slice_dir.name}/*.scope"\nweight = 20\n'
    policy = f"cgroup weight 0 :100 {slice_dir.name}/a.scope:40"

    def charged(m) -> dict[str, int]:
        def read() -> dict[str, int]:
            dev = m.daemon.daemon.engine.devices[m.name]
            return {g.label: g.sectors[1] * 512 for g in dev.all_groups()}

        return m.daemon.call(read)

    def write(m, cgroup: Path, name: str, mib: int) -> None:
        argv = ["dd", "if=/dev/zero", f"of={m.mnt}/{name}", "bs=64k", f"count={mib * 16}",
                "oflag=direct"]  # fmt: skip
        subprocess.run(fair.in_cgroup(cgroup, argv), check=True, capture_output=True, timeout=60)

    slice_dir.mkdir()
    try:
        with mounted(tmp_path, policy=policy, extra=rule) as m:
            a.mkdir()
            b.mkdir()
            write(m, a, "fa", 2)
            write(m, b, "fb", 1)
            got = charged(m)
            assert got[f"/{slice_dir.name}/a.scope"] == 2 << 20, got
            assert got[f"/{slice_dir.name}/b.scope"] == 1 << 20, got
            assert got["-1"] == 0, got
            a.rmdir()
            a.mkdir()
            write(m, a, "fa2", 1)
            got = charged(m)
            assert got[f"/{slice_dir.name}/a.scope"] == 3 << 20, got
            assert got["-1"] == 0, got
    finally:
        fair.remove_cgroups([p for p in (a, b, slice_dir) if p.exists()])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_mclock_takes_parents_from_the_real_cgroup_nesting(version, bottleneck, tmp_path):
    """Type cgroup, mclock, defaults: a slice (attached by path, weight 1) holds two scopes
    attached by inode (weights 3 and 1: their paths are learned from their first requests),
    beside another cgroup of weight 1. No ``parent=`` anywhere: the slice and the other cgroup
    split the device 1:1, the scopes the slice's half 3:1 (37.5 / 12.5 / 50 %)."""
    root = hierarchy(version)
    loop, daemon_cg, _ = bottleneck
    slice_dir = root / f"ioband-test-{os.getpid()}-nest.slice"
    a, b = slice_dir / "a.scope", slice_dir / "b.scope"
    other = root / f"ioband-test-{os.getpid()}-other.slice"
    made = [a, b, slice_dir, other]
    for d in (slice_dir, a, b, other):
        d.mkdir()
    try:
        groups = (
            f"{slice_dir.name}:0:1:0 {a.stat().st_ino}:0:3:0 {b.stat().st_ino}:0:1:0"
            f" {other.name}:0:1:0"
        )
        table = f"0 {(256 << 20) // 512} ioband {loop} 1 0 0 cgroup mclock iops :0:1:0 {groups}"
        daemon, sock, _ = start_daemon(tmp_path, table, version, cgroup=daemon_cg)
        try:
            clients = {"a": a, "b": b, "other": other}
            ios = fair.measure(
                {n: fair.in_cgroup(cg, fair.fio(sock, n)) for n, cg in clients.items()}, 2
            )
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    finally:
        fair.remove_cgroups([p for p in made if p.exists()])
    total = sum(ios.values())
    print("IO shares:", {n: round(v / total, 3) for n, v in ios.items()}, ios)
    for name, want in (("a", 0.375), ("b", 0.125), ("other", 0.5)):
        share = ios[name] / total
        assert abs(share - want) / want <= fair.TOLERANCE, f"{name}: {share:.3f} vs {want} {ios}"
