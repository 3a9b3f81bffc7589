"""Single passthrough operations against a backing directory a user has changed under the
daemon (issue 11, item 2), called directly on ``Passthrough`` (no mount, so no race to win):
the name is already a symlink, a root-only file, a dangling symlink when the request comes.
Whatever the answer, nothing outside the backing tree changes, and what is created belongs to
the caller, as it would through the mount."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import require_real

USER = 61021  # an unprivileged uid/gid with no passwd entry
GROUP = 61029  # a supplementary group of USER's in one test
SECRET = b"root only\n"

try:
    import pyfuse3

    from ioband.fuse.passthrough import ROOT, Passthrough, Unlimited
except ImportError:  # the fixture says so (and fails under CI)
    pyfuse3 = None


def call(coro: Any) -> Any:
    return asyncio.run(coro)


def fails(coro: Any) -> int:
    """The errno a request answers with (0 if it succeeded)."""
    try:
        call(coro)
    except pyfuse3.FUSEError as err:
        return err.errno
    return 0


def ctx(uid: int = USER, gid: int = USER, pid: int = 0, umask: int = 0o022) -> SimpleNamespace:
    return SimpleNamespace(uid=uid, gid=gid, pid=pid or os.getpid(), umask=umask)


async def _run(fn: Any, *args: Any) -> Any:
    return fn(*args)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """backing/play (USER's), and outside the backing tree a root-only secret and vault."""
    require_real(pyfuse3 is not None, "pyfuse3 is not installed")
    require_real(os.geteuid() == 0, "needs root (the daemon's identity switches)")
    tmp_path.chmod(0o755)
    backing = tmp_path / "backing"
    play = backing / "play"
    play.mkdir(parents=True)
    os.chown(play, USER, USER)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    old = os.umask(0)  # as the worker: modes arrive with the caller's umask applied
    ops = Passthrough(str(backing), admission=Unlimited(), run_blocking=_run, write_behind=False)
    try:
        play_ino = call(ops.lookup(ROOT, b"play", ctx())).st_ino
        yield SimpleNamespace(ops=ops, play=play, play_ino=play_ino, secret=secret,
                              vault=vault, before=os.stat(secret))  # fmt: skip
    finally:
        os.umask(old)
        for h in list(ops.handles.values()):
            os.close(h.fd)
        # the thread's identity is the daemon's again after every request
        libc = ctypes.CDLL(None)
        assert libc.setfsuid(0xFFFFFFFF) == 0 and libc.setfsgid(0xFFFFFFFF) == 0
        assert os.getgroups() == ops.identity.groups


def untouched(w: SimpleNamespace) -> None:
    st = os.stat(w.secret)
    assert w.secret.read_bytes() == SECRET
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (
        w.before.st_mode, w.before.st_uid, w.before.st_gid, w.before.st_mtime_ns)  # fmt: skip
    assert os.listdir(w.vault) == []


CREATE = os.O_CREAT | os.O_WRONLY | os.O_TRUNC


@pytest.mark.parametrize("excl", [False, True])
@pytest.mark.parametrize("target", ["secret", "vault/new"])
def test_create_over_a_planted_symlink(world: SimpleNamespace, target: str, excl: bool) -> None:
    """The kernel saw no name and sends CREATE; the name is a symlink by then: EEXIST, and
    neither the secret nor the vault is touched."""
    w = world
    os.symlink(w.secret.parent / target, w.play / "x")
    flags = CREATE | (os.O_EXCL if excl else 0)
    assert fails(w.ops.create(w.play_ino, b"x", 0o100644, flags, ctx())) == errno.EEXIST
    untouched(w)
    assert os.readlink(w.play / "x") == str(w.secret.parent / target)


def test_create_over_a_file_the_caller_may_not_open(world: SimpleNamespace) -> None:
    """A root-only file appears under the name (the kernel will not check it: CREATE means
    "created"): the open is the caller's, so EACCES and the file keeps its content; root,
    asking the same, opens (and truncates) it as open(2) would."""
    w = world
    f = w.play / "x"
    f.write_bytes(SECRET)
    f.chmod(0o600)
    assert fails(w.ops.create(w.play_ino, b"x", 0o100644, CREATE, ctx())) == errno.EACCES
    assert f.read_bytes() == SECRET
    _fi, entry = call(w.ops.create(w.play_ino, b"x", 0o100644, CREATE, ctx(0, 0)))
    assert entry.st_ino == f.stat().st_ino and entry.st_size == 0 and f.read_bytes() == b""
    assert fails(w.ops.create(w.play_ino, b"x", 0o100644, CREATE | os.O_EXCL, ctx(0, 0))) == (
        errno.EEXIST)  # fmt: skip


def test_create_over_a_fifo_or_directory_does_not_open_it(world: SimpleNamespace) -> None:
    w = world
    os.mkfifo(w.play / "fifo")  # opening it for writing would block the event loop
    (w.play / "dir").mkdir()
    assert fails(w.ops.create(w.play_ino, b"fifo", 0o100644, CREATE, ctx(0, 0))) == errno.EEXIST
    assert fails(w.ops.create(w.play_ino, b"dir", 0o100644, CREATE, ctx(0, 0))) == errno.EISDIR


def test_new_objects_belong_to_their_creator(world: SimpleNamespace) -> None:
    """Created as the caller: owner, group, umask; in a set-group-id directory the group and
    (for a directory) the bit come from the parent, all by the backing file system itself."""
    w = world
    _fi, entry = call(w.ops.create(w.play_ino, b"f", 0o100666, CREATE, ctx()))
    assert (entry.st_uid, entry.st_gid, stat.S_IMODE(entry.st_mode)) == (USER, USER, 0o644)
    st = (w.play / "f").stat()
    assert (st.st_uid, st.st_gid, st.st_ino) == (USER, USER, entry.st_ino)
    call(w.ops.mkdir(w.play_ino, b"d", 0o777, ctx()))
    call(w.ops.mknod(w.play_ino, b"p", stat.S_IFIFO | 0o666, 0, ctx()))
    call(w.ops.symlink(w.play_ino, b"l", b"f", ctx()))
    for name, mode in (("d", 0o755), ("p", 0o644)):
        st = os.lstat(w.play / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER, USER, mode), name
    assert os.lstat(w.play / "l")[4:6] == (USER, USER)
    sgid = w.play / "sgid"
    sgid.mkdir()
    os.chown(sgid, USER, GROUP)
    sgid.chmod(0o2775)
    sgid_ino = call(w.ops.lookup(w.play_ino, b"sgid", ctx())).st_ino
    call(w.ops.create(sgid_ino, b"f", 0o100644, CREATE, ctx()))
    call(w.ops.mkdir(sgid_ino, b"d", 0o755, ctx()))
    assert (sgid / "f").stat()[4:6] == (USER, GROUP)
    st = (sgid / "d").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & stat.S_ISGID) == (USER, GROUP, stat.S_ISGID)


def test_the_callers_supplementary_groups_count(world: SimpleNamespace) -> None:
    """A directory writable by a group the caller is in: the backing check sees the group
    (read from the calling process); for a caller without it, EACCES."""
    require_real(shutil.which("setpriv") is not None, "setpriv (util-linux) is missing")
    w = world
    shared = w.play / "shared"
    shared.mkdir()
    os.chown(shared, 0, GROUP)
    shared.chmod(0o770)
    ino = call(w.ops.lookup(w.play_ino, b"shared", ctx())).st_ino
    member = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}",
                               f"--groups={GROUP}", "sleep", "30"])  # fmt: skip
    try:
        for _ in range(100):  # until setpriv has become USER and exec'ed sleep
            status = Path(f"/proc/{member.pid}/status").read_text()
            if f"Groups:\t{GROUP}" in status and "sleep" in status:
                break
            time.sleep(0.01)
        _fi, entry = call(w.ops.create(ino, b"f", 0o100644, CREATE, ctx(pid=member.pid)))
        assert (entry.st_uid, entry.st_gid) == (USER, USER)
        assert fails(w.ops.mkdir(ino, b"d", 0o755, ctx())) == errno.EACCES  # pid: not USER
    finally:
        member.kill()
        member.wait()


def test_other_creating_calls_over_a_planted_symlink(world: SimpleNamespace) -> None:
    """mknod, mkdir, symlink, link and rename never follow the new name."""
    w = world
    os.symlink(w.vault / "new", w.play / "x")
    (w.play / "mine").write_bytes(b"mine")
    mine = call(w.ops.lookup(w.play_ino, b"mine", ctx())).st_ino
    assert fails(w.ops.mknod(w.play_ino, b"x", stat.S_IFREG | 0o644, 0, ctx())) == errno.EEXIST
    assert fails(w.ops.mkdir(w.play_ino, b"x", 0o755, ctx())) == errno.EEXIST
    assert fails(w.ops.symlink(w.play_ino, b"x", b"t", ctx())) == errno.EEXIST
    assert fails(w.ops.link(mine, w.play_ino, b"x", ctx())) == errno.EEXIST
    assert fails(w.ops.rename(w.play_ino, b"mine", w.play_ino, b"x", 0, ctx())) == 0
    assert (w.play / "x").read_bytes() == b"mine" and not (w.play / "x").is_symlink()
    untouched(w)
    os.chown(w.play / "x", USER, USER)
    assert fails(w.ops.unlink(w.play_ino, b"x", ctx())) == 0


def test_attributes_of_a_symlink_inode_are_its_own(world: SimpleNamespace) -> None:
    """setattr and xattrs on an inode that is a symlink change the symlink (chown, times) or
    are refused (chmod, truncate, xattrs), never reach its target."""
    w = world
    os.symlink(w.secret, w.play / "l")
    ino = call(w.ops.lookup(w.play_ino, b"l", ctx())).st_ino
    none = dict.fromkeys(["update_mode", "update_uid", "update_gid", "update_size",
                          "update_atime", "update_mtime"], False)  # fmt: skip

    def setattr(**what: Any) -> int:
        fields = SimpleNamespace(**{**none, **{f"update_{k}": True for k in what}})
        attr = SimpleNamespace(st_mode=what.get("mode", 0), st_uid=what.get("uid", 0),
                               st_gid=what.get("gid", 0), st_size=what.get("size", 0),
                               st_atime_ns=what.get("atime", 0),
                               st_mtime_ns=what.get("mtime", 0))  # fmt: skip
        return fails(w.ops.setattr(ino, attr, fields, None, ctx(0, 0)))

    assert setattr(mode=0o666) == errno.EOPNOTSUPP
    assert setattr(uid=USER, gid=USER) == 0
    assert setattr(size=0) == errno.EINVAL
    assert setattr(atime=5_000_000_005, mtime=6_000_000_006) == 0
    st = os.lstat(w.play / "l")
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (USER, USER, 6_000_000_006)
    untouched(w)
    # no race-free way to reach a symlink's own attributes: none shown, none taken
    assert fails(w.ops.setxattr(ino, b"trusted.ioband", b"1", ctx(0, 0))) == errno.EPERM
    assert fails(w.ops.removexattr(ino, b"trusted.ioband", ctx(0, 0))) == errno.EPERM
    assert fails(w.ops.getxattr(ino, b"trusted.ioband", ctx(0, 0))) == errno.ENODATA
    assert call(w.ops.listxattr(ino, ctx(0, 0))) == []
    assert "trusted.ioband" not in os.listxattr(w.secret)


def test_dotdot_stays_in_the_backing_tree(world: SimpleNamespace, tmp_path: Path) -> None:
    """ ".." of the root is the root; of a directory moved out of the tree (by a user of the
    backing directory), ESTALE rather than an inode outside."""
    w = world
    assert call(w.ops.lookup(ROOT, b"..", ctx())).st_ino == ROOT
    (w.play / "sub").mkdir()
    ino = call(w.ops.lookup(w.play_ino, b"sub", ctx())).st_ino
    assert call(w.ops.lookup(ino, b"..", ctx())).st_ino == w.play_ino
    os.rename(w.play / "sub", tmp_path / "moved-out")
    assert fails(w.ops.lookup(ino, b"..", ctx())) == errno.ESTALE


def test_names_are_single_entries(world: SimpleNamespace) -> None:
    w = world
    for bad in (b"../secret", b"a/b", b"..", b"."):
        assert fails(w.ops.create(w.play_ino, bad, 0o100644, CREATE, ctx())) == errno.EINVAL
        assert fails(w.ops.mkdir(w.play_ino, bad, 0o755, ctx())) == errno.EINVAL
    untouched(w)
