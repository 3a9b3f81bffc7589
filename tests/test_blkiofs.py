"""``ioband blkiofs``: the blkio-cgroup files (interface §6) in a FUSE mirror of the v1 blkio
hierarchy, driven by real processes (bash's ``echo``/``cat``, a real unprivileged user) against a
real daemon; cgroups are made and removed through the mount."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioband.cgroup.proc import Hierarchy, find_hierarchy
from tests.conftest import require_real
from tests.control_helpers import PYTHON, Ctl, backing, control_daemon

UID = 61021
DEVICES = ("vg0 policy=weight io_throttle=4 io_limit=192 token=768 carryover=2\n"
           "  vg0-lv0\n  vg0-lv1\n"
           "vg1 policy=weight io_throttle=4 io_limit=192 token=768 carryover=2\n"
           "  vg1-lv0\n  vg1-lv1\n"
           "vg2 policy=weight io_throttle=4 io_limit=192 token=768 carryover=2\n")  # fmt: skip


def prerequisites() -> Hierarchy:
    require_real(os.geteuid() == 0, "needs root (FUSE allow_other, cgroups)")
    require_real(os.path.exists("/dev/fuse"), "needs /dev/fuse")
    require_real(shutil.which("fusermount3") is not None, "needs fusermount3 (fuse3)")
    require_real(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        require_real(False, "needs pyfuse3")
    h = find_hierarchy("auto")
    require_real(h is not None and h.version == 1, "needs the v1 blkio cgroup hierarchy")
    assert h is not None
    return h


def unmount(mnt: Path) -> None:
    if os.path.ismount(mnt) and subprocess.run(["fusermount3", "-u", str(mnt)],
                                                capture_output=True).returncode:  # fmt: skip
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (waiting for whoever adopted it to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_mounted(mnt: Path, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 10
    while not os.path.ismount(mnt):
        assert proc is None or proc.poll() is None, "blkiofs exited before mounting"
        assert time.monotonic() < deadline, "blkiofs did not mount"
        time.sleep(0.02)


@dataclass
class Mounted:
    ctl: Ctl
    mnt: Path
    real: Path  # the hierarchy's mount point
    prefix: str  # of the cgroups this test makes (removed afterwards)
    made: list[Path] = field(default_factory=list)

    def sh(self, script: str, user: int | None = None) -> subprocess.CompletedProcess:
        """``bash -c SCRIPT`` in the mount point, as root or as ``user`` (bash: its echo names
        the errno of a failed write; dash says "I/O error" for every one)."""
        argv = ["bash", "-c", script]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        return subprocess.run(argv, cwd=self.mnt, capture_output=True, text=True, timeout=20,
                              env={"PATH": "/usr/bin:/bin", "P": self.prefix})  # fmt: skip

    def ok(self, script: str, user: int | None = None) -> str:
        res = self.sh(script, user)
        assert res.returncode == 0, (script, res.stderr)
        return res.stdout

    def table(self, name: str) -> str:
        return self.ctl.ok("table", name).split(": ", 1)[1].strip()

    def tables(self) -> str:
        return self.ctl.ok("table")

    def cgroup(self, name: str) -> Path:
        path = self.real / f"{self.prefix}{name}"
        self.made.append(path)
        return path


@pytest.fixture
def fs(tmp_path):
    """A daemon with two device groups of cgroup-type devices (the §6.7 layout) and one `user`
    device, blkiofs mounted (foreground) on tmp_path/mnt; unmounted and cleaned afterwards."""
    h = prerequisites()
    os.chmod(tmp_path, 0o755)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with control_daemon(None) as ctl:
        for vg in ("vg0", "vg1"):
            for lv in ("lv0", "lv1"):
                img = backing(tmp_path, f"{vg}-{lv}.img", 2048)
                ctl.ok("create", f"{vg}-{lv}", "--table",
                       f"0 2048 ioband {img} {vg} 0 0 cgroup weight 0 :100")  # fmt: skip
        img = backing(tmp_path, "plain.img", 2048)
        ctl.ok("create", "plain", "--table", f"0 2048 ioband {img} vg2 0 0 user weight 0 :100")
        proc = subprocess.Popen([PYTHON, "-m", "ioband", "blkiofs", str(mnt), "--socket",
                                 ctl.socket, "--foreground"], cwd="/")  # fmt: skip
        m = Mounted(ctl, mnt, h.mount, f"bfs-{uuid.uuid4().hex[:8]}-")
        try:
            wait_mounted(mnt, proc)
            yield m
        finally:
            unmount(mnt)
            try:
                assert proc.wait(10) == 0  # fusermount3 -u ends the server
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for path in sorted(set(m.made), key=lambda p: len(p.parts), reverse=True):
                    if path.exists():
                        path.rmdir()


def test_worked_example_through_the_mount(fs):
    """§6.7 with /cgroup replaced by the mount point."""
    grp1, grp2 = fs.cgroup("grp1"), fs.cgroup("grp2")
    assert fs.ok("cat blkio.devices") == DEVICES
    fs.ok('echo "vg1 policy weight-iosize" > blkio.devices')
    assert " weight-iosize " in fs.table("vg1-lv0")
    assert fs.ok("cat blkio.devices").splitlines()[3].startswith("vg1 policy=weight-iosize ")
    fs.ok("mkdir ${P}grp1 ${P}grp2")
    assert grp1.is_dir() and grp2.is_dir()  # real cgroups
    id1, id2 = grp1.stat().st_ino, grp2.stat().st_ino
    assert fs.ok("cat ${P}grp1/blkio.id") == f"{id1}\n"
    assert fs.ok("cat blkio.id") == f"{fs.real.stat().st_ino}\n"
    # echo $$ > tasks moves the shell itself into the real cgroup
    out = fs.ok("echo $$ > ${P}grp1/tasks; grep blkio /proc/$$/cgroup; cat ${P}grp1/tasks")
    assert f":blkio:/{fs.prefix}grp1" in out
    assert fs.ok("cat ${P}grp1/cgroup.procs") == ""  # the shell has exited
    fs.ok('echo "vg0-lv0 40" > ${P}grp1/blkio.settings')
    fs.ok('echo "vg0-lv0 20" > ${P}grp2/blkio.settings')
    assert fs.ok("cat ${P}grp1/blkio.settings") == "vg0-lv0 weight=40%\n"
    assert f" {id1}:40 {id2}:20" in fs.table("vg0-lv0")
    stats = fs.ok("cat ${P}grp1/blkio.stats").split()
    assert stats[0] == "vg0-lv0" and len(stats) == 12 and set(stats[1:]) == {"0"}
    fs.ok('echo "vg0-lv0" > ${P}grp1/blkio.stats')  # zero the counters
    assert fs.ok("cat blkio.settings").startswith("vg0-lv0 weight=100%\n")  # the default group
    names = fs.ok("ls ${P}grp1").split()
    assert {"blkio.id", "blkio.devices", "blkio.settings", "blkio.stats", "tasks"} <= set(names)
    fs.ok('echo "vg0-lv0" > ${P}grp1/blkio.settings')  # detach grp1 from vg0-lv0
    assert fs.ok("cat ${P}grp1/blkio.settings") == ""
    assert f" {id1}:" not in fs.table("vg0-lv0")
    fs.ok("rmdir ${P}grp2")  # grp2's groups disappear everywhere
    assert not grp2.exists()
    deadline = time.monotonic() + 2.0
    while f" {id2}:" in fs.table("vg0-lv0") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f" {id2}:" not in fs.table("vg0-lv0")
    fs.ok("rmdir ${P}grp1")
    assert not grp1.exists()


def test_refused_writes_answer_the_errno_and_change_nothing(fs):
    fs.cgroup("a")
    fs.ok("mkdir ${P}a")
    fs.ok('echo "vg0-lv1 30" > ${P}a/blkio.settings')
    before = fs.tables()
    cases = [
        ('echo "vg0 io_limit 100" > ${P}a/blkio.devices', "Permission denied"),  # non-root level
        ('echo "nothing io_limit 100" > blkio.devices', "No such device"),
        ('echo "vg2 io_limit 100" > blkio.devices', "No such device"),  # not of type cgroup
        ('echo "" > blkio.devices', "Invalid argument"),
        ('echo "vg0 io_limit x" > blkio.devices', "Invalid argument"),
        ('echo "nope 40" > ${P}a/blkio.settings', "No such device"),
        ('echo "plain 40" > ${P}a/blkio.settings', "No such device"),
        ('echo "vg0-lv0 0" > ${P}a/blkio.settings', "Invalid argument"),
        ('echo "vg0-lv1 40000" > ${P}a/blkio.settings', "Invalid argument"),
        ('echo "vg0-lv0 1 2" > ${P}a/blkio.settings', "Invalid argument"),  # > 2 words
        ('echo "" > ${P}a/blkio.settings', "Invalid argument"),  # 0 words
        ('echo "vg0-lv0" > ${P}a/blkio.settings', "Invalid argument"),  # no group to detach
        ('echo "vg0-lv0" > blkio.settings', "Invalid argument"),  # detach the root cgroup
        ('echo "vg0-lv0 x" > ${P}a/blkio.stats', "Invalid argument"),
        ('echo "nope" > ${P}a/blkio.stats', "No such device"),
        ("echo 5 > ${P}a/blkio.id", "Permission denied"),  # read-only
        ("echo 1 > blkio.weight_nope", "Permission denied"),  # cgroupfs creates no files
    ]
    for script, text in cases:
        res = fs.sh(script)
        assert res.returncode != 0 and text in res.stderr, (script, res.stderr)
    assert fs.tables() == before
    assert fs.ok("cat ${P}a/blkio.settings") == "vg0-lv1 weight=30%\n"
    res = fs.sh("cat nothing/blkio.settings")
    assert res.returncode != 0 and "No such file" in res.stderr


def test_rmdir_detaches_from_every_device_within_two_seconds(fs):
    gone = fs.cgroup("gone")
    fs.ok("mkdir ${P}gone")
    cgid = gone.stat().st_ino
    fs.ok('echo "vg0-lv0 40" > ${P}gone/blkio.settings')
    fs.ok('echo "vg1-lv1 10" > ${P}gone/blkio.settings')
    assert f" {cgid}:10" in fs.table("vg1-lv1")
    fs.ok("rmdir ${P}gone")
    deadline = time.monotonic() + 2.0
    while f" {cgid}:" in fs.tables() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f" {cgid}:" not in fs.tables()


def test_an_unprivileged_user_reads_but_may_not_configure(fs):
    fs.cgroup("x")
    fs.ok("mkdir ${P}x")
    before = fs.tables()
    assert fs.ok("cat blkio.devices", user=UID) == DEVICES
    assert fs.ok("cat ${P}x/blkio.id", user=UID).strip().isdigit()
    assert fs.ok("cat blkio.settings ${P}x/blkio.stats tasks >/dev/null", user=UID) == ""
    for script in ('echo "vg0 io_limit 100" > blkio.devices', 'echo "vg0-lv0 40" > blkio.settings',
                   'echo "vg0-lv0 40" > ${P}x/blkio.settings', 'echo vg0-lv0 > blkio.stats',
                   "mkdir ${P}y", "rmdir ${P}x", "echo $$ > ${P}x/tasks"):  # fmt: skip
        res = fs.sh(script, user=UID)
        assert res.returncode != 0 and "Permission denied" in res.stderr, (script, res.stderr)
    assert fs.tables() == before
    assert (fs.real / f"{fs.prefix}x").is_dir() and not (fs.real / f"{fs.prefix}y").exists()


def test_a_delegated_cgroup_is_its_owners_only(fs):
    mine, _ = fs.cgroup("mine"), fs.cgroup("other")
    sub = fs.cgroup("mine/sub")
    fs.ok("mkdir ${P}mine ${P}other")
    for path in (mine, mine / "tasks", mine / "cgroup.procs"):
        os.chown(path, UID, UID)  # delegation, as with cgroupfs
    fs.ok('echo "vg0-lv0 40" > ${P}mine/blkio.settings', user=UID)
    assert fs.ok("cat ${P}mine/blkio.settings") == "vg0-lv0 weight=40%\n"
    fs.ok("echo vg0-lv0 > ${P}mine/blkio.stats", user=UID)
    res = fs.sh('echo "vg0-lv0 40" > ${P}other/blkio.settings', user=UID)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    assert fs.ok("cat ${P}other/blkio.settings") == ""
    res = fs.sh('echo "vg0 io_limit 100" > ${P}mine/blkio.devices', user=UID)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    # the owner makes a sub-cgroup (it is theirs) and moves itself into its own cgroup
    fs.ok("mkdir ${P}mine/sub", user=UID)
    assert sub.stat().st_uid == UID and (sub / "tasks").stat().st_uid == UID
    out = fs.ok("echo $$ > ${P}mine/tasks; grep blkio /proc/$$/cgroup", user=UID)
    assert f":blkio:/{fs.prefix}mine" in out
    res = fs.sh(f"echo {os.getpid()} > ${{P}}mine/tasks", user=UID)  # root's process: no
    assert res.returncode != 0 and "Permission denied" in res.stderr
    fs.ok("rmdir ${P}mine/sub", user=UID)


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(["blkio.devices", "blkio.settings", "blkio.stats"]),
       data=st.one_of(
           st.lists(st.sampled_from(["vg0", "vg0-lv0", "nope", "plain", "0", "-1", "40000", "x:y",
                                     "weight", "io_limit", "attach", "1:2:3", ""]),
                    max_size=4).map(lambda ws: (" ".join(ws) + "\n").encode()),
           st.binary(max_size=40)))  # fmt: skip
def test_malformed_writes_answer_an_errno_and_change_nothing(fs, file, data):
    """Random lines and bytes: accepted, or refused with EINVAL/ENODEV leaving the tables as
    they were (a successful one may change them, as the same dmsetup message would)."""
    before = fs.tables()
    fd = os.open(fs.mnt / file, os.O_WRONLY)
    try:
        try:
            assert os.write(fd, data) == len(data)
        except OSError as err:
            assert err.errno in (errno.EINVAL, errno.ENODEV), (data, err)
            assert fs.tables() == before
    finally:
        os.close(fd)


def test_the_as_field_is_for_root_peers_only(fs):
    """blkiofs (root) may act for a caller; anyone else asking to is refused with EACCES."""
    script = (
        "import json, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "s.sendall(json.dumps({'op': 'cgroup', 'file': 'devices', 'value': 'vg0 io_limit 100',"
        " 'as': {'pid': 1, 'uid': 0, 'gid': 0}}).encode() + b'\\n')\n"
        "print(s.makefile().readline())\n"
    )
    res = subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
                          PYTHON, "-c", script, fs.ctl.socket], capture_output=True, text=True,
                         timeout=20, cwd="/")  # fmt: skip
    reply = json.loads(res.stdout)
    assert reply["ok"] is False and reply["errno"] == "EACCES", reply
    assert "io_limit=192" in fs.ok("cat blkio.devices").splitlines()[0]

    def ask(request: dict) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(fs.ctl.socket)
            s.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(s.makefile().readline())

    req = {"op": "cgroup", "file": "devices", "value": "vg0 io_limit 100"}
    assert ask({**req, "as": {"pid": os.getpid(), "uid": UID, "gid": UID}})["errno"] == "EACCES"
    for bad in ({"uid": 0}, {"pid": 1, "uid": -1, "gid": 0}, [0, 0, 0], {"pid": 1, "uid": True,
                                                                          "gid": 0}):  # fmt: skip
        assert ask({**req, "as": bad})["errno"] == "EINVAL", bad
    assert ask({**req, "as": {"pid": os.getpid(), "uid": 0, "gid": 0}})["ok"] is True
    assert "io_limit=100" in fs.ok("cat blkio.devices").splitlines()[0]


def test_background_start_and_sigterm(tmp_path):
    """Without --foreground the command returns once mounted; SIGTERM unmounts and stops it."""
    prerequisites()
    os.chmod(tmp_path, 0o755)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with control_daemon(None) as ctl:
        res = subprocess.run([PYTHON, "-m", "ioband", "blkiofs", str(mnt), "--socket",
                              ctl.socket], capture_output=True, text=True, timeout=20,
                             cwd="/")  # fmt: skip
        try:
            assert res.returncode == 0, res.stderr
            assert os.path.ismount(mnt)
            pid = int(res.stdout.rsplit("(pid ", 1)[1].rstrip(")\n"))
            assert (mnt / "blkio.devices").read_text() == ""  # no devices yet
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(pid)
            assert not os.path.ismount(mnt)
        finally:
            unmount(mnt)
        res = subprocess.run([PYTHON, "-m", "ioband", "blkiofs", str(tmp_path / "nothing"),
                              "--socket", ctl.socket], capture_output=True, text=True,
                             timeout=20)  # fmt: skip
        assert res.returncode == 1 and "not a directory" in res.stderr
    res = subprocess.run([PYTHON, "-m", "ioband", "blkiofs", str(mnt), "--socket",
                          str(tmp_path / "none.sock")], capture_output=True, text=True,
                         timeout=20)  # fmt: skip
    assert res.returncode == 1 and "cannot reach the ioband daemon" in res.stderr
    assert not os.path.ismount(mnt)
