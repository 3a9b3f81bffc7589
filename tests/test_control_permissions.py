"""Permissions on the control socket, with a real unprivileged caller (``setpriv``): reads are
open to everyone; changes need root or the admin group, and a refused change is EACCES, logged,
and changes nothing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess

import pytest

from ioband.errors import EXIT_STATUS
from tests.conftest import require_real
from tests.control_helpers import PYTHON, backing, control_daemon

UID = 61010
ADMIN_GROUP, ADMIN_GID = "users", 100  # a group every Linux system has


def as_user(socket: str, *argv: str, groups: str | None = None, gid: int = UID):
    require_real(os.geteuid() == 0, "needs root to run the CLI as another user")
    require_real(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    who = [f"--reuid={UID}", f"--regid={gid}"]
    who += [f"--groups={groups}"] if groups else ["--clear-groups"]
    env = {"IOBAND_SOCKET": socket, "PATH": "/usr/bin:/bin", "HOME": "/"}
    return subprocess.run(["setpriv", *who, PYTHON, "-m", "ioband", *argv], env=env,
                          capture_output=True, text=True, timeout=30, cwd="/")  # fmt: skip


@pytest.fixture
def ctl(tmp_path):
    os.chmod(tmp_path, 0o755)
    with control_daemon(str(tmp_path / "state.json"), admin_group=ADMIN_GROUP) as c:
        path = backing(tmp_path, "a.img", 2048)
        c.ok("create", "ioband1", "--table", f"0 2048 ioband {path} 1 0 0 user weight 0 :40")
        c.path = path
        yield c


def test_socket_is_open_to_everyone(ctl):
    assert stat.S_IMODE(os.stat(ctl.socket).st_mode) == 0o666


def test_reads_are_open_to_an_unprivileged_user(ctl):
    for argv in (("table",), ("status", "ioband1"), ("ls",), ("targets",), ("info", "--json"),
                 ("status", "--format", "diskstats", "--json")):  # fmt: skip
        run = as_user(ctl.socket, *argv)
        assert run.returncode == 0, (argv, run.stderr)
    assert as_user(ctl.socket, "table").stdout == ctl.ok("table")


def test_changes_are_refused_and_change_nothing(ctl, tmp_path, caplog):
    other = backing(tmp_path, "b.img", 2048)
    state = (tmp_path / "state.json").read_text()
    before = ctl.ok("table")
    changes = [
        ("create", "x", "--table", f"0 2048 ioband {other} 1 0 0 none weight 0 :10"),
        ("remove", "ioband1"),
        ("message", "ioband1", "0", "attach", "1000"),
        ("message", "ioband1", "0", "weight", "99"),
        ("suspend", "ioband1"),
        ("resume", "ioband1"),
    ]
    with caplog.at_level(logging.WARNING, logger="ioband.control"):
        for argv in changes:
            run = as_user(ctl.socket, *argv)
            assert run.returncode == EXIT_STATUS["EACCES"], (argv, run.stderr)
            assert run.stderr.startswith(f"ioband {argv[0]}: Permission denied")
            assert run.stderr.rstrip().endswith("(EACCES)") and "Traceback" not in run.stderr
    assert ctl.ok("table") == before
    assert json.loads(ctl.ok("ls", "--json"))[0]["suspended"] is False
    assert (tmp_path / "state.json").read_text() == state
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == len(changes) and all(f"uid {UID}" in m for m in refused)


@pytest.mark.parametrize("how", ["supplementary", "primary"])
def test_the_admin_group_may_change(ctl, how):
    if how == "supplementary":
        run = as_user(ctl.socket, "message", "ioband1", "0", "attach", "1000",
                      groups=str(ADMIN_GID))  # fmt: skip
    else:
        run = as_user(ctl.socket, "message", "ioband1", "0", "attach", "1000", gid=ADMIN_GID)
    assert run.returncode == 0, run.stderr
    assert ctl.ok("table", "ioband1").rstrip().endswith(":40 1000:100")


def test_a_missing_admin_group_means_root_only(tmp_path):
    with control_daemon(admin_group="no-such-group-ioband") as ctl:
        run = as_user(ctl.socket, "ls")
        assert run.returncode == 0
        run = as_user(ctl.socket, "remove", "x", groups=str(ADMIN_GID))
        assert run.returncode == EXIT_STATUS["EACCES"]
        assert "no-such-group-ioband" in run.stderr
        rc, _, err = ctl.run("remove", "x")  # root: allowed, and the device does not exist
        assert rc == EXIT_STATUS["ENODEV"], err
