"""A local user who can write the backing directory directly races the daemon (root) through
the mount: between the kernel's LOOKUP of a name and the operation that follows (CREATE, MKNOD,
MKDIR, SYMLINK, LINK, RENAME, SETATTR, SETXATTR) the user replaces the name in the backing
directory by a symlink to a root-only file, a dangling symlink into a root-only directory, a
regular file, a directory, or a root-only file of the backing tree (a hard link root made in
the user's directory, which the user may rename but not open).

Whatever the daemon answers (errors are fine), nothing outside the backing tree may change: a
root-owned 0600 file keeps its content, size, mode, owner and mtime; nothing is created in a
0700 root directory; no file outside the tree changes owner or mode. Nor may the root-only file
inside the tree change (the kernel does not check the caller's right to open what CREATE
returns, so the daemon must). A root thread watches for bad outcomes while the race runs,
counts them and puts things back, so that the count says how often the daemon was fooled, not
only whether it was.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require_real
from tests.fuse_helpers import Mounted, fuse_prerequisites, mounted

USER = 61020  # an unprivileged uid/gid with no passwd entry
PYTHON = "/usr/bin/python3"  # readable by USER (the test's own interpreter may not be)
RACE_SECONDS = 10.0
SECRET = b"root-only secret\n" * 64

# As USER, directly in the backing directory: flip each name between absent, a regular file,
# a symlink to the secret, a dangling symlink into the vault, a directory, and one of root's
# links to its in-tree file. The flips that matter are "absent" followed quickly by something
# else (the kernel saw "absent" and sends CREATE).
FLIPPER = """
import os, random, shutil, stat, sys, time
where, secret, vault, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
names = sys.argv[5:]
links = sorted(n for n in os.listdir(where) if n.startswith(".root-"))
rng = random.Random(1)
flips = 0
end = time.monotonic() + seconds

def clear(p):
    try:
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and st.st_uid == 0:  # root's file: keep it for later
            os.rename(p, os.path.join(where, f".root-back-{flips}"))
            links.append(f".root-back-{flips}")
            return
        os.unlink(p)
    except IsADirectoryError:
        shutil.rmtree(p, ignore_errors=True)
    except OSError:
        pass

while time.monotonic() < end:
    for n in names:
        p = os.path.join(where, n)
        clear(p)
        kind = rng.random()
        try:
            if kind < 0.35:
                os.symlink(secret, p)
            elif kind < 0.6:
                os.symlink(os.path.join(vault, f"created-{flips}"), p)
            elif kind < 0.8 and links:
                os.rename(os.path.join(where, links.pop()), p)
            elif kind < 0.9:  # never blocks on a fifo the prober made meanwhile
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NONBLOCK))
            elif kind < 0.95:
                os.mkdir(p)
            # else: stays absent
        except OSError:
            pass
        flips += 1
print(flips)
"""

# As USER, through the mount: every name operation on the flipped names, over and over. Before
# each one the name is removed through the mount, so that the kernel looks it up again.
PROBER = """
import errno, os, stat, sys, time
where, seconds, uid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
names = sys.argv[4:]
mine = os.path.join(where, "mine")
with open(mine, "wb") as f:
    f.write(b"mine")

NB = os.O_NONBLOCK  # a fifo of an earlier try: ENXIO, not a hang

def create_trunc(p):
    fd = os.open(p, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | NB, 0o644)
    try:
        os.write(fd, b"pwned")
    finally:
        os.close(fd)

def create_excl(p):
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY | NB, 0o644)
    try:
        os.write(fd, b"pwned")
    finally:
        os.close(fd)

def rename_onto(p):
    src = os.path.join(where, "mine2")
    with open(src, "wb") as f:
        f.write(b"mine2")
    os.rename(src, p)

OPS = [
    create_trunc,
    create_excl,
    lambda p: os.mkfifo(p, 0o644),
    lambda p: os.mknod(p, 0o644 | stat.S_IFREG),
    lambda p: os.mkdir(p, 0o755),
    lambda p: os.symlink("harmless", p),
    lambda p: os.link(mine, p),
    rename_onto,
    lambda p: os.truncate(p, 0),
    lambda p: os.chmod(p, 0o666),
    lambda p: os.chown(p, uid, uid),
    lambda p: os.utime(p, (0, 0)),
    lambda p: os.setxattr(p, "user.pwned", b"1"),
]
tries = ok = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for op in OPS:
        for n in names:
            p = os.path.join(where, n)
            for undo in (os.unlink, os.rmdir):
                try:
                    undo(p)
                except OSError:
                    pass
            tries += 1
            try:
                op(p)
                ok += 1
            except OSError:
                pass
print(tries, ok)
"""


def as_user(script: str, *args: str) -> subprocess.Popen[str]:
    argv = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", PYTHON, "-c",
            script, *args]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, cwd="/")  # fmt: skip


def outside_listing(base: Path, skip: set[Path]) -> dict[str, tuple[int, int, int]]:
    """Owner and mode of everything under ``base`` that is not in the backing tree or mount."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
        for name in [*dirs, *files, "."]:
            st = os.lstat(Path(dirpath, name))
            out[str(Path(dirpath, name))] = (st.st_uid, st.st_gid, st.st_mode)
    return out


Guarded = tuple[int, int, int, int, int, bytes]  # size, mode, uid, gid, mtime, content


@dataclass
class Watch:
    """A root thread that checks the guarded files (by descriptor: the inode, whatever its
    names) and the vault every millisecond or so; each change is one bad outcome, recorded
    and undone."""

    files: dict[str, int]  # name -> an O_RDWR descriptor of root's
    vault: Path
    want: dict[str, Guarded] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def state(self, fd: int) -> Guarded:
        st = os.fstat(fd)
        content = os.pread(fd, len(SECRET) + 100, 0)
        return (st.st_size, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content)

    def check(self) -> None:
        for name, fd in self.files.items():
            now = self.state(fd)
            if now != self.want[name]:
                self.bad.append(f"{name} changed: {now[:5]} {now[5][:20]!r}")
                restore(fd, self.want[name])
        for name in os.listdir(self.vault):
            self.bad.append(f"created in the vault: {name}")
            p = self.vault / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def run(self) -> None:
        while not self.stop.is_set():
            self.check()
            time.sleep(0.001)
        self.check()


def restore(fd: int, want: Guarded) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, want[5], 0)
    os.fchown(fd, want[2], want[3])
    os.fchmod(fd, stat.S_IMODE(want[1]))
    os.utime(fd, ns=(want[4], want[4]))


def guarded(path: Path) -> int:
    """A root-owned 0600 file holding SECRET, and root's descriptor of it."""
    path.write_bytes(SECRET)
    path.chmod(0o600)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


@pytest.fixture
def arena() -> Iterator[tuple[Path, Mounted]]:
    """A 0755 base (pytest's is 0700) holding the backing directory, the mount point, a
    root-only secret and a root-only vault directory."""
    fuse_prerequisites()
    require_real(shutil.which("setpriv") is not None, "setpriv (util-linux) is missing")
    require_real(os.access(PYTHON, os.X_OK), f"{PYTHON} is missing")
    base = Path(tempfile.mkdtemp(prefix="ioband-symlink-race-"))
    base.chmod(0o755)
    try:
        (base / "backing").mkdir()
        with mounted(base) as m:
            yield base, m
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_symlink_swaps_never_redirect_the_daemon(arena: tuple[Path, Mounted]) -> None:
    base, m = arena
    secret = base / "secret"
    vault = base / "vault"
    vault.mkdir(mode=0o700)
    play = m.backing / "play"
    play.mkdir()
    os.chown(play, USER, USER)
    in_tree = play / ".root-0"  # and 500 more names for it, for the user to move about
    watch = Watch({"secret": guarded(secret), "in-tree root file": guarded(in_tree)}, vault)
    for i in range(1, 501):
        os.link(in_tree, play / f".root-{i}")
    watch.want = {name: watch.state(fd) for name, fd in watch.files.items()}
    names = ["x", "y"]
    before = outside_listing(base, {m.backing, m.mnt})
    seconds = RACE_SECONDS - 1.5  # the rest: starting the interpreters
    watcher = threading.Thread(target=watch.run, daemon=True)
    watcher.start()
    flipper = as_user(FLIPPER, str(play), str(secret), str(vault), str(seconds), *names)
    prober = as_user(PROBER, str(m.mnt / "play"), str(seconds), str(USER), *names)
    try:
        p_out, p_err = prober.communicate(timeout=seconds + 20)
        f_out, f_err = flipper.communicate(timeout=20)
    finally:
        for proc in (prober, flipper):
            if proc.poll() is None:
                proc.kill()
        watch.stop.set()
        watcher.join(timeout=10)
    assert prober.returncode == 0, p_err
    assert flipper.returncode == 0, f_err
    tries, succeeded = map(int, p_out.split())
    flips = int(f_out)
    kinds = Counter(b.partition(":")[0].removesuffix(" changed") for b in watch.bad)
    print(f"\nsymlink race: {tries} tries through the mount ({succeeded} succeeded), "
          f"{flips} flips in the backing directory, {len(watch.bad)} bad outcomes "
          f"{dict(kinds)}")  # fmt: skip
    assert tries > 1000 and flips > 1000, (tries, flips)
    assert watch.bad == [], f"{len(watch.bad)} bad outcomes in {tries} tries: {watch.bad[:10]}"
    # and at the end, checked once more by root
    for name, fd in watch.files.items():
        assert watch.state(fd) == watch.want[name], name
        os.close(fd)
    assert secret.read_bytes() == SECRET
    assert os.listdir(vault) == []
    after = outside_listing(base, {m.backing, m.mnt})
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()
               if before.get(k) != after.get(k)}  # fmt: skip
    assert changed == {}, changed
