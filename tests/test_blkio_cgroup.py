"""``ioband cgroup id|devices|settings|stats``: the blkio-cgroup files (interface §6) against a
running daemon, with real cgroups in the v1 blkio hierarchy created and removed by the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ioband.cgroup import blkio
from ioband.cgroup.proc import find_hierarchy
from ioband.errors import EXIT_STATUS
from tests.conftest import require_real
from tests.control_helpers import PYTHON, backing, control_daemon

UID = 61020
EINVAL, ENODEV, EACCES = EXIT_STATUS["EINVAL"], EXIT_STATUS["ENODEV"], EXIT_STATUS["EACCES"]


def hierarchy():
    require_real(os.geteuid() == 0, "needs root to create cgroups")
    h = find_hierarchy("auto")
    require_real(h is not None and h.version == 1, "needs the v1 blkio cgroup hierarchy")
    return h


@pytest.fixture
def cgroups():
    """make(name) -> (relative path, directory); everything made is removed afterwards."""
    h = hierarchy()
    top = f"ioband-test-{uuid.uuid4().hex[:8]}"
    made: list[Path] = []

    def make(name: str) -> tuple[str, Path]:
        rel = f"/{top}-{name}"
        path = h.mount / rel.lstrip("/")
        path.mkdir()
        made.append(path)
        return rel, path

    yield make
    for path in reversed(made):
        if path.exists():
            path.rmdir()


@pytest.fixture
def ctl(tmp_path):
    hierarchy()
    os.chmod(tmp_path, 0o755)
    with control_daemon(str(tmp_path / "state.json")) as c:
        for name in ("vg0-lv0", "vg0-lv1"):
            path = backing(tmp_path, f"{name}.img", 2048)
            c.ok("create", name, "--table", f"0 2048 ioband {path} vg0 0 0 cgroup weight 0 :100")
        path = backing(tmp_path, "other.img", 2048)
        c.ok("create", "plain", "--table", f"0 2048 ioband {path} vg1 0 0 user weight 0 :100")
        yield c


def table(ctl, name):
    return ctl.ok("table", name).split(": ", 1)[1].strip()


def test_id_is_the_directory_inode(ctl, cgroups):
    rel, path = cgroups("a")
    assert ctl.ok("cgroup", "id", rel) == f"{os.stat(path).st_ino}\n"
    assert ctl.ok("cgroup", "id") == f"{os.stat(find_hierarchy('auto').mount).st_ino}\n"
    assert ctl.run("cgroup", "id", "/no-such-cgroup-here")[0] == EXIT_STATUS["ENOENT"]
    assert ctl.run("cgroup", "id", "/../etc")[0] == EINVAL
    assert ctl.run("cgroup", "id", rel, "5")[0] == EACCES  # read-only


def test_devices_read_lists_groups_and_cgroup_members(ctl):
    assert ctl.ok("cgroup", "devices") == (
        "vg0 policy=weight io_throttle=4 io_limit=192 token=768 carryover=2\n"
        "  vg0-lv0\n  vg0-lv1\n"
        "vg1 policy=weight io_throttle=4 io_limit=192 token=768 carryover=2\n"
    )


def test_devices_write(ctl, cgroups):
    ctl.ok("cgroup", "devices", "/", "vg0", "policy", "weight-iosize")  # first-created device
    assert " weight-iosize " in table(ctl, "vg0-lv0")
    assert ctl.ok("cgroup", "devices").startswith("vg0 policy=weight-iosize ")
    ctl.ok("cgroup", "devices", "/", "vg0-lv1", "io_limit", "128")
    assert ctl.ok("cgroup", "devices").splitlines()[0].split()[3] == "io_limit=128"
    before = table(ctl, "plain")
    assert ctl.run("cgroup", "devices", "/", "vg1", "io_limit", "100")[0] == ENODEV
    assert ctl.run("cgroup", "devices", "/", "plain", "io_limit", "100")[0] == ENODEV
    assert ctl.run("cgroup", "devices", "/", "nothing", "io_limit", "100")[0] == ENODEV
    assert ctl.run("cgroup", "devices", "/", "")[0] == EINVAL
    assert ctl.run("cgroup", "devices", "/", "vg0", "io_limit", "x")[0] == EINVAL
    rel, _ = cgroups("a")
    assert ctl.run("cgroup", "devices", rel, "vg0", "io_limit", "100")[0] == EACCES
    assert table(ctl, "plain") == before
    assert ctl.ok("cgroup", "devices").splitlines()[0].split()[3] == "io_limit=128"


def test_settings_stats_and_the_worked_example(ctl, cgroups):
    r1, p1 = cgroups("grp1")
    r2, p2 = cgroups("grp2")
    id1, id2 = os.stat(p1).st_ino, os.stat(p2).st_ino
    ctl.ok("cgroup", "settings", r1, "vg0-lv0", "40")
    ctl.ok("cgroup", "settings", r2, "vg0-lv0", "20")
    assert ctl.ok("cgroup", "settings", r1) == "vg0-lv0 weight=40%\n"
    assert ctl.ok("cgroup", "settings", r2) == "vg0-lv0 weight=20%\n"
    assert f" {id1}:40 {id2}:20" in table(ctl, "vg0-lv0")
    ctl.ok("cgroup", "settings", r1, "vg0-lv0", "30")  # update
    assert ctl.ok("cgroup", "settings", r1) == "vg0-lv0 weight=30%\n"
    assert ctl.ok("cgroup", "settings") == "vg0-lv0 weight=100%\nvg0-lv1 weight=100%\n"
    ctl.ok("cgroup", "settings", "/", "vg0-lv1", "70")  # the default group
    assert ":70" in table(ctl, "vg0-lv1")
    stats = ctl.ok("cgroup", "stats", r1).split()
    assert stats[0] == "vg0-lv0" and len(stats) == 12 and set(stats[1:]) == {"0"}
    assert ctl.ok("cgroup", "stats", "/").splitlines()[1].split()[0] == "vg0-lv1"
    ctl.ok("cgroup", "stats", r1, "vg0-lv0")  # reset
    ctl.ok("cgroup", "stats", r1, "vg0-lv1")  # no group there: nothing to do
    # errors change nothing
    before = table(ctl, "vg0-lv0")
    for words, rc in ((("vg0-lv0", "0"), EINVAL), (("vg0-lv0", "40000"), EINVAL),
                      (("vg0-lv0", "1", "2"), EINVAL), (("",), EINVAL), (("plain", "40"), ENODEV),
                      (("nothing", "40"), ENODEV), (("vg0-lv1",), EINVAL)):  # fmt: skip
        assert ctl.run("cgroup", "settings", r1, *words)[0] == rc, words
    assert ctl.run("cgroup", "settings", "/", "vg0-lv0")[0] == EINVAL  # detach the root
    r3, _ = cgroups("grp3")
    assert ctl.run("cgroup", "settings", r3, "vg0-lv0", "abc")[0] == EINVAL
    assert table(ctl, "vg0-lv0") == before
    for words, rc in ((("plain",), ENODEV), (("nothing",), ENODEV), (("vg0-lv0", "x"), EINVAL),
                      (("",), EINVAL)):  # fmt: skip
        assert ctl.run("cgroup", "stats", r1, *words)[0] == rc, words
    # detach grp1, then rmdir grp2: its groups disappear
    ctl.ok("cgroup", "settings", r1, "vg0-lv0")
    assert ctl.ok("cgroup", "settings", r1) == ""
    assert f" {id1}:" not in table(ctl, "vg0-lv0")
    p2.rmdir()
    deadline = time.monotonic() + 2.0
    while f" {id2}:" in table(ctl, "vg0-lv0") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f" {id2}:" not in table(ctl, "vg0-lv0")


def test_range_bw_settings(ctl, cgroups):
    rel, path = cgroups("r")
    ctl.ok("cgroup", "devices", "/", "vg0", "policy", "range-bw")
    ctl.ok("cgroup", "settings", rel, "vg0-lv1", "100:500")
    assert ctl.ok("cgroup", "settings", rel) == "vg0-lv1 range-bw=100:500\n"
    assert f" {os.stat(path).st_ino}:100:500" in table(ctl, "vg0-lv1")
    ctl.ok("cgroup", "settings", "/", "vg0-lv1", "10:20")
    assert ctl.ok("cgroup", "settings").splitlines()[1] == "vg0-lv1 range-bw=10:20"
    assert ctl.run("cgroup", "settings", rel, "vg0-lv0", "500:100")[0] == EINVAL


def test_rmdir_detaches_groups_from_every_device(ctl, cgroups):
    rel, path = cgroups("gone")
    cgid = os.stat(path).st_ino
    ctl.ok("cgroup", "settings", rel, "vg0-lv0", "40")
    ctl.ok("message", "vg0-lv1", "0", "attach", str(cgid))  # by hand: found by the scan
    time.sleep(0.8)  # let the watcher see it alive
    path.rmdir()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if all(f" {cgid}:" not in table(ctl, n) for n in ("vg0-lv0", "vg0-lv1")):
            break
        time.sleep(0.05)
    assert all(f" {cgid}:" not in table(ctl, n) for n in ("vg0-lv0", "vg0-lv1"))


def test_settings_are_persisted(tmp_path, cgroups):
    hierarchy()
    os.chmod(tmp_path, 0o755)
    rel, _ = cgroups("p")
    state = str(tmp_path / "state.json")
    img = backing(tmp_path, "a.img", 2048)
    with control_daemon(state) as c:
        c.ok("create", "d1", "--table", f"0 2048 ioband {img} 1 0 0 cgroup weight 0 :100")
        c.ok("cgroup", "settings", rel, "d1", "40")
    with control_daemon(state) as c:
        assert c.ok("cgroup", "settings", rel) == "d1 weight=40%\n"


# -- callers that are not root -------------------------------------------------------------------
def as_user(socket: str, *argv: str):
    require_real(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    env = {"IOBAND_SOCKET": socket, "PATH": "/usr/bin:/bin", "HOME": "/"}
    return subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
                           PYTHON, "-m", "ioband", *argv], env=env, capture_output=True,
                          text=True, timeout=30, cwd="/")  # fmt: skip


def test_unprivileged_devices_write_is_refused(ctl):
    before = table(ctl, "vg0-lv0")
    res = as_user(ctl.socket, "cgroup", "devices", "/", "vg0", "io_limit", "100")
    assert res.returncode == EACCES, res.stderr
    assert "EACCES" in res.stderr
    assert table(ctl, "vg0-lv0") == before
    res = as_user(ctl.socket, "cgroup", "devices")
    assert res.returncode == 0 and res.stdout.startswith("vg0 policy=weight"), res.stderr


def test_delegated_cgroup_owner_may_write_its_settings_only(ctl, cgroups):
    mine, my_path = cgroups("mine")
    other, _ = cgroups("other")
    os.chown(my_path, UID, UID)
    res = as_user(ctl.socket, "cgroup", "settings", mine, "vg0-lv0", "40")
    assert res.returncode == 0, res.stderr
    assert ctl.ok("cgroup", "settings", mine) == "vg0-lv0 weight=40%\n"
    res = as_user(ctl.socket, "cgroup", "settings", other, "vg0-lv0", "40")
    assert res.returncode == EACCES, res.stderr
    assert ctl.ok("cgroup", "settings", other) == ""
    res = as_user(ctl.socket, "cgroup", "settings", "/", "vg0-lv0", "40")
    assert res.returncode == EACCES, res.stderr


def test_watcher_leaves_ids_that_never_were_cgroups(ctl):
    ctl.ok("message", "vg0-lv0", "0", "attach", "999999999")
    time.sleep(1.2)
    assert " 999999999:" in table(ctl, "vg0-lv0")


def test_blkio_functions_without_a_daemon():
    assert blkio.FILES == ("id", "devices", "settings", "stats", "io.weight", "io.max", "io.stat")
    with pytest.raises(Exception, match="No cgroup hierarchy"):
        blkio.cgroup_dir(None, "/")
