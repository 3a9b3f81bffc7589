"""Real programs, and POSIX edge cases, through a real ioband FUSE mount.

The programs (tar, git, sqlite3, fio, cp) each run in a subprocess in the mount, and their own
checks (``tar -d``, ``git fsck``, ``PRAGMA integrity_check``, ``fio --verify``, ``diff -r``) say
whether what they wrote came back intact. The edge cases run the same Python operation sequence
on a plain directory and in the mount and compare what each step returned (values or errno):
the mount must behave like the directory it serves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import random
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_real
from tests.fuse_helpers import Mounted, fuse_prerequisites, mounted

TIMEOUT = 60  # seconds for any one program
USER = 61031  # an unprivileged uid/gid with no passwd entry


def need(*programs: str) -> None:
    for p in programs:
        require_real(shutil.which(p) is not None, f"{p} is not installed")


def run(argv: list[str], cwd: Path | str, *, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """One program, bounded in time; its output is in the assertion message when it fails."""
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    if check:
        assert p.returncode == 0, f"{argv} -> {p.returncode}\n{p.stdout[-2000:]}{p.stderr[-2000:]}"
    return p


@pytest.fixture(scope="module")
def mount() -> Iterator[Mounted]:
    """One mount for the module (each test works in a directory of its own). Its base is a
    0755 directory, not pytest's 0700 one, so that an unprivileged user can reach the mount."""
    fuse_prerequisites()
    base = Path(tempfile.mkdtemp(prefix="ioband-fuse-programs-"))
    base.chmod(0o755)
    try:
        with mounted(base) as m:
            yield m
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def work(mount: Mounted, request: pytest.FixtureRequest) -> Path:
    d = mount.mnt / request.node.name.replace("[", "_").replace("]", "")
    d.mkdir()
    return d


# -- a source tree with every kind of object tar and cp must carry ---------------------------


def make_tree(root: Path, *, mib: int = 4, owners: bool = False) -> Path:
    """Files (a few MiB, some sparse-ish and empty), directories, relative/absolute/dangling
    symlinks, hard links, odd modes and fixed mtimes (ns) on all of them."""
    rng = random.Random(7)
    src = root / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    big = rng.randbytes(mib << 20)
    (src / "big.bin").write_bytes(big)
    (src / "a" / "zeros").write_bytes(bytes(300_000) + b"x")
    (src / "a" / "empty").write_bytes(b"")
    for i in range(40):
        (src / "a" / "b" / f"f{i:02}.txt").write_bytes(rng.randbytes(rng.randrange(1, 20_000)))
    (src / "a" / "b" / "c" / "name with spaces é").write_text("unicode\n")
    os.link(src / "big.bin", src / "a" / "big-hardlink")
    os.link(src / "a" / "b" / "f01.txt", src / "a" / "b" / "c" / "f01-link")
    os.symlink("../big.bin", src / "a" / "rel-link")
    os.symlink("/etc/hostname", src / "a" / "abs-link")
    os.symlink("does-not-exist", src / "a" / "dangling")
    os.symlink("b/c", src / "a" / "dir-link")
    (src / "a" / "secret").write_text("0600\n")
    (src / "a" / "secret").chmod(0o600)
    (src / "a" / "script").write_text("#!/bin/sh\necho hi\n")
    (src / "a" / "script").chmod(0o755)
    (src / "a" / "b").chmod(0o750)
    (src / "empty-dir").chmod(0o2775)
    if owners:
        os.chown(src / "a" / "secret", USER, USER)
        os.chown(src / "a" / "b" / "c", USER, 0)
        os.chown(src / "a" / "dangling", USER, USER, follow_symlinks=False)
    # mtimes last, deepest first, so that creating entries does not move a directory's mtime
    paths = sorted(src.rglob("*"), key=lambda p: -len(p.parts))
    for n, p in enumerate([*paths, src]):
        t = 1_500_000_000_000_000_000 + n * 1_000_000_123
        os.utime(p, ns=(t, t), follow_symlinks=False)
    return src


def stat_listing(root: Path) -> list[str]:
    """What ``stat`` says of each object under ``root`` (name, type, mode, owner, size, mtime,
    link count), by relative name: two trees with equal listings carry the same metadata."""
    out = run(["find", ".", "-exec", "stat", "-c", "%n|%F|%a|%u|%g|%s|%Y|%h", "{}", "+"],
              cwd=root).stdout  # fmt: skip
    lines = []
    for line in out.splitlines():
        name, kind, *rest = line.split("|")
        if kind == "directory":
            rest[3] = "-"  # a directory's size is the file system's business
        lines.append("|".join([name, kind, *rest]))
    return sorted(lines)


# -- real programs ---------------------------------------------------------------------------


def test_tar_extract_and_compare(mount: Mounted, work: Path, tmp_path: Path) -> None:
    """tar -x of an archive with files, dirs, symlinks, hard links, modes and mtimes; then
    ``diff -r`` and ``tar -d`` (which checks contents, modes, owners, mtimes, link targets)."""
    need("tar", "diff")
    src = make_tree(tmp_path, owners=True)
    archive = tmp_path / "src.tar"
    run(["tar", "-cf", str(archive), "src"], cwd=tmp_path)
    run(["tar", "-xpf", str(archive)], cwd=work)
    run(["diff", "-r", "--no-dereference", str(src), "src"], cwd=work)
    p = run(["tar", "-df", str(archive)], cwd=work, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert stat_listing(src) == stat_listing(work / "src")
    a = (work / "src" / "big.bin").stat()
    b = (work / "src" / "a" / "big-hardlink").stat()
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    # and the backing directory holds the same tree
    run(["diff", "-r", "--no-dereference", str(src), str(mount.backing / work.name / "src")],
        cwd=work)  # fmt: skip


def test_git_repository(work: Path) -> None:
    """git init/add/commit (several commits, a rename, a deletion), log, gc and fsck."""
    need("git")
    git = ["git", "-c", "user.name=ioband test", "-c", "user.email=t@example.invalid",
           "-c", "init.defaultBranch=main", "-c", "gc.auto=0"]  # fmt: skip
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(work)}
    repo = work / "repo"
    run([*git, "init", "-q", str(repo)], cwd=work, env=env)
    rng = random.Random(3)
    for n in range(5):
        for i in range(20):
            (repo / f"file{i}.txt").write_text(f"commit {n}\n" + rng.randbytes(2000).hex())
        (repo / "sub").mkdir(exist_ok=True)
        (repo / "sub" / f"new{n}").write_bytes(rng.randbytes(50_000))
        if n == 2:
            run([*git, "mv", "file0.txt", "sub/moved.txt"], cwd=repo, env=env)
        if n == 3:
            run([*git, "rm", "-q", "-f", "file1.txt"], cwd=repo, env=env)
        run([*git, "add", "-A"], cwd=repo, env=env)
        run([*git, "commit", "-q", "-m", f"commit {n}"], cwd=repo, env=env)
    log = run([*git, "log", "--format=%s"], cwd=repo, env=env).stdout.split("\n")
    assert log[:5] == [f"commit {n}" for n in range(4, -1, -1)]
    assert run([*git, "status", "--porcelain"], cwd=repo, env=env).stdout == ""
    run([*git, "fsck", "--full", "--strict"], cwd=repo, env=env)
    run([*git, "gc", "-q", "--prune=now"], cwd=repo, env=env)  # packs, renames, unlinks
    run([*git, "fsck", "--full", "--strict"], cwd=repo, env=env)
    clone = work / "clone"
    run([*git, "clone", "-q", str(repo), str(clone)], cwd=work, env=env)
    run(["diff", "-r", "-x", ".git", str(repo), str(clone)], cwd=work)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_database(mount: Mounted, work: Path, tmp_path: Path, journal: str) -> None:
    """Thousands of rows in transactions with the sqlite3 CLI, rollback journal and WAL (its
    -shm index is a shared writable mmap of a file in the mount); integrity_check is ok."""
    need("sqlite3")
    db = work / "t.db"
    script = [f"PRAGMA journal_mode={journal};",
              "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB);"]  # fmt: skip
    for n in range(6):
        script += ["BEGIN;",
                   f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<1000)"
                   f" INSERT INTO t (k, v) SELECT 'k{n}-' || i, randomblob(200) FROM c;",
                   f"DELETE FROM t WHERE id % 7 = {n};" if n % 2 else "",
                   "COMMIT;"]  # fmt: skip
    script += ["BEGIN;", "DELETE FROM t;", "ROLLBACK;", "CREATE INDEX tv ON t (v);"]
    run(["sqlite3", str(db), "\n".join(script)], cwd=work)
    summary = "SELECT count(*), sum(length(v)), max(id) FROM t;"
    count = run(["sqlite3", str(db), summary], cwd=work).stdout
    plain = tmp_path / "t.db"  # the same script on a plain directory
    run(["sqlite3", str(plain), "\n".join(script)], cwd=tmp_path)
    assert count == run(["sqlite3", str(plain), summary], cwd=tmp_path).stdout
    assert int(count.split("|")[0]) > 4000
    check = run(["sqlite3", str(db), "PRAGMA integrity_check;"], cwd=work).stdout.strip()
    assert check == "ok"
    mode = run(["sqlite3", str(db), "PRAGMA journal_mode;"], cwd=work).stdout.strip()
    assert mode == journal
    # the file in the backing directory is the same sound database
    backing_db = mount.backing / work.name / "t.db"
    check = run(["sqlite3", str(backing_db), "PRAGMA integrity_check;"], cwd=work).stdout
    assert check.strip() == "ok"


@pytest.mark.parametrize("direct", [0, 1])
def test_fio_verify(work: Path, direct: int) -> None:
    """fio writes with crc32c verify headers and reads everything back, buffered and O_DIRECT
    (mixed block sizes, including ones O_DIRECT needs aligned)."""
    need("fio")
    p = run(["fio", "--name=verify", f"--directory={work}", "--size=32m", "--rw=randwrite",
             "--bsrange=4k-256k", "--ioengine=psync", f"--direct={direct}", "--numjobs=2",
             "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--runtime=30",
             "--group_reporting", "--output-format=terse", "--minimal"],
            cwd=work, check=False)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "verify" not in p.stderr.lower() or "bad" not in p.stderr.lower(), p.stderr


def test_fio_verify_deep_queue(work: Path) -> None:
    """O_DIRECT at queue depth 32 (libaio), 4 KiB writes in place and reads: many requests in
    flight at once through the worker's intake and its AIO submissions, every block checked."""
    need("fio")
    p = run(["fio", "--name=deep", f"--directory={work}", "--size=16m", "--rw=randrw",
             "--bs=4k", "--ioengine=libaio", "--iodepth=32", "--direct=1", "--numjobs=2",
             "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--runtime=30",
             "--group_reporting", "--output-format=terse", "--minimal"],
            cwd=work, check=False)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr


def test_cp_a_round_trip(work: Path, tmp_path: Path) -> None:
    """cp -a into the mount and back out: contents (diff -r) and metadata (stat: modes, owners,
    mtimes, link counts) survive both ways."""
    need("cp", "diff", "stat", "find")
    src = make_tree(tmp_path, owners=True)
    run(["cp", "-a", str(src), str(work / "tree")], cwd=tmp_path)
    back = tmp_path / "back"
    run(["cp", "-a", str(work / "tree"), str(back)], cwd=tmp_path)
    run(["diff", "-r", "--no-dereference", str(src), str(work / "tree")], cwd=tmp_path)
    run(["diff", "-r", "--no-dereference", str(src), str(back)], cwd=tmp_path)
    assert stat_listing(src) == stat_listing(work / "tree") == stat_listing(back)


# -- edge cases: the same operations on a plain directory and in the mount ------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]  # fmt: skip
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100


def renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def attempt(fn: Callable[[], Any]) -> Any:
    """The value, or the errno's name: what a step returned, comparable across the two runs."""
    try:
        return fn()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err))


def read(path: str) -> Any:
    return attempt(lambda: Path(path).read_bytes())


def put(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


def tree(top: str = ".") -> list[str]:
    out = []
    for dirpath, dirs, files in os.walk(top):
        out += [os.path.join(dirpath, d) + "/" for d in dirs]
        out += [os.path.join(dirpath, f) for f in files]
    return sorted(out)


def op_rename(log: list[Any]) -> None:
    put("a", b"A")
    put("b", b"B")
    os.rename("a", "b")  # overwrite
    log += [tree(), read("b")]
    os.mkdir("d1")
    os.mkdir("d2")
    put("d1/f", b"F")
    os.rename("d1/f", "d2/g")  # into another directory
    log += [tree(), read("d2/g")]
    os.makedirs("d1/sub/deeper")
    put("d1/sub/deeper/x", b"X")
    os.rename("d1", "d3")  # a directory with contents
    log += [tree(), read("d3/sub/deeper/x")]
    log.append(attempt(lambda: os.rename("d3", "d2")))  # over a non-empty directory
    log.append(attempt(lambda: os.rename("d3", "b")))  # a directory over a file
    log.append(attempt(lambda: os.rename("b", "d3")))  # a file over a directory
    log.append(attempt(lambda: os.rename("d3", "d3/sub/inside")))  # into itself
    log.append(attempt(lambda: os.rename("nope", "x")))
    os.mkdir("empty")
    log.append(attempt(lambda: os.rename("d2", "empty")))  # over an empty directory: fine
    put("c", b"C")
    log.append(attempt(lambda: renameat2("c", "b", RENAME_NOREPLACE)))
    log.append(attempt(lambda: renameat2("c", "c2", RENAME_NOREPLACE)))
    log.append(attempt(lambda: renameat2("c2", "b", RENAME_EXCHANGE)))
    log += [read("b"), read("c2")]
    log.append(attempt(lambda: renameat2("b", "missing", RENAME_EXCHANGE)))
    log.append(attempt(lambda: renameat2("b", "d3", RENAME_EXCHANGE)))  # file <-> directory
    log += [tree(), read("d3"), read("b/sub/deeper/x")]
    log.append(attempt(lambda: renameat2("b", "d3", RENAME_EXCHANGE | RENAME_NOREPLACE)))


def op_unlink_open(log: list[Any]) -> None:
    put("f", b"still here " * 1000)
    fd = os.open("f", os.O_RDWR)
    try:
        os.unlink("f")
        log.append(attempt(lambda: os.stat("f")))
        log.append(os.pread(fd, 11, 0))
        os.pwrite(fd, b"written after unlink", 5)
        log.append(os.pread(fd, 40, 0))
        st = os.fstat(fd)
        log.append((st.st_nlink, st.st_size))
        log.append(tree())
        put("f", b"a new f")  # a new file of the same name is another file
        log.append((read("f"), os.pread(fd, 4, 0)))
    finally:
        os.close(fd)


def op_truncate(log: list[Any]) -> None:
    put("t", bytes(range(256)) * 40)
    os.truncate("t", 100_000)  # grow: zeros
    data = Path("t").read_bytes()
    log.append((len(data), data[10_230:10_250], data[-5:], os.stat("t").st_size))
    os.truncate("t", 10)  # shrink
    log += [read("t"), os.stat("t").st_size]
    fd = os.open("t", os.O_RDWR)
    try:
        os.ftruncate(fd, 5)  # on an open handle
        log.append((os.fstat(fd).st_size, os.pread(fd, 100, 0)))
        os.ftruncate(fd, 8192)
        os.pwrite(fd, b"end", 8189)
        log.append((os.fstat(fd).st_size, os.pread(fd, 10, 8185)))
        os.ftruncate(fd, 0)
        log.append((os.fstat(fd).st_size, os.pread(fd, 10, 0)))
    finally:
        os.close(fd)
    fd = os.open("t", os.O_RDONLY)
    try:
        log.append(attempt(lambda: os.ftruncate(fd, 3)))  # not open for writing
    finally:
        os.close(fd)
    put("t", b"0123456789")
    with open("t", "r+b") as f:  # O_TRUNC on open
        f.write(b"x")
    fd = os.open("t", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    log += [read("t"), attempt(lambda: os.truncate("t", -1))]


def op_attributes(log: list[Any]) -> None:
    put("f", b"data")
    os.mkdir("d")
    os.symlink("f", "l")
    os.chmod("f", 0o640)
    os.chmod("d", 0o1750)
    os.chown("f", USER, USER + 1)
    os.chown("d", -1, USER)
    os.chown("l", USER, USER, follow_symlinks=False)
    os.utime("f", ns=(1_000_000_001, 2_000_000_002))
    os.utime("d", ns=(3_000_000_003, 4_000_000_004))
    os.utime("l", ns=(5_000_000_005, 6_000_000_006), follow_symlinks=False)
    for name in ("f", "d"):
        st = os.stat(name)
        log.append((name, stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns,
                    st.st_mtime_ns))  # fmt: skip
    st = os.lstat("l")
    log.append(("l", stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns))
    before = os.stat("f").st_ctime_ns
    time.sleep(0.01)
    os.chmod("f", 0o600)
    log.append(os.stat("f").st_ctime_ns > before)  # metadata changes move ctime
    os.utime("f", ns=(7, 8))  # times before 1970 + 1 s
    log.append((os.stat("f").st_atime_ns, os.stat("f").st_mtime_ns))
    os.utime("f")  # now
    log.append(abs(os.stat("f").st_mtime_ns - time.time_ns()) < 5e9)
    log.append(attempt(lambda: os.chmod("missing", 0o600)))


def op_xattrs(log: list[Any]) -> None:
    put("f", b"x")
    os.mkdir("d")
    os.setxattr("f", "user.one", b"1")
    os.setxattr("f", "user.two", b"\x00binary\xff" * 100)
    os.setxattr("d", "user.dir", b"")
    log.append(sorted(os.listxattr("f")))
    log.append((os.getxattr("f", "user.one"), os.getxattr("f", "user.two")))
    log.append((os.listxattr("d"), os.getxattr("d", "user.dir")))
    log.append(attempt(lambda: os.getxattr("f", "user.missing")))
    log.append(attempt(lambda: os.setxattr("f", "user.one", b"x", os.XATTR_CREATE)))
    log.append(attempt(lambda: os.setxattr("f", "user.new", b"x", os.XATTR_REPLACE)))
    os.setxattr("f", "user.one", b"replaced", os.XATTR_REPLACE)
    log.append(os.getxattr("f", "user.one"))
    os.removexattr("f", "user.one")
    log.append(sorted(os.listxattr("f")))
    log.append(attempt(lambda: os.removexattr("f", "user.one")))
    log.append(attempt(lambda: os.getxattr("f", "user.one")))
    log.append(attempt(lambda: os.setxattr("f", "notanamespace", b"x")))
    fd = os.open("f", os.O_RDONLY)
    try:
        os.setxattr(fd, "user.viafd", b"fd")  # fsetxattr on an open handle
        log.append(os.getxattr(fd, "user.viafd"))
    finally:
        os.close(fd)


def op_special_files(log: list[Any]) -> None:
    os.mkfifo("fifo", 0o640)
    st = os.lstat("fifo")
    log.append((stat.S_ISFIFO(st.st_mode), stat.S_IMODE(st.st_mode)))
    r = os.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
    w = os.open("fifo", os.O_WRONLY)
    try:
        os.write(w, b"through the fifo")
        log.append(os.read(r, 100))
    finally:
        os.close(w)
        os.close(r)
    log.append(attempt(lambda: os.mkfifo("fifo")))
    put("target", b"T")
    os.symlink("target", "rel")
    os.symlink("/nonexistent/abs", "abs")
    os.symlink("x" * 1000, "long")
    os.mkdir("dir")
    os.symlink("../target", "dir/up")
    log.append([os.readlink(n) for n in ("rel", "abs", "long", "dir/up")])
    log.append((read("rel"), read("dir/up"), read("abs")))
    log.append([stat.S_ISLNK(os.lstat(n).st_mode) for n in ("rel", "abs", "long")])
    log.append(os.lstat("long").st_size)
    log.append(attempt(lambda: os.readlink("target")))  # not a link: EINVAL
    log.append(attempt(lambda: os.symlink("t", "rel")))
    log.append(attempt(lambda: os.open("rel", os.O_RDONLY | os.O_NOFOLLOW)))  # ELOOP


def op_hard_links(log: list[Any]) -> None:
    put("a", b"shared")
    os.mkdir("d")
    os.link("a", "b")
    os.link("a", "d/c")
    log.append([os.stat(n).st_nlink for n in ("a", "b", "d/c")])
    log.append(len({os.stat(n).st_ino for n in ("a", "b", "d/c")}))
    put("b", b"changed through b")
    log.append(read("d/c"))
    os.unlink("a")
    log.append([os.stat(n).st_nlink for n in ("b", "d/c")])
    os.rename("d/c", "e")
    log.append((os.stat("e").st_nlink, os.stat("e").st_ino == os.stat("b").st_ino))
    log.append(attempt(lambda: os.link("b", "e")))  # EEXIST
    log.append(attempt(lambda: os.link("d", "dlink")))  # EPERM: no links to directories
    os.mkdir("d/sub")
    log.append(os.stat("d").st_nlink)  # a directory counts its subdirectories' ".."
    os.symlink("b", "sym")
    os.link("sym", "symlink-link", follow_symlinks=False)
    log.append((os.lstat("sym").st_nlink, os.readlink("symlink-link")))


def op_append_excl(log: list[Any]) -> None:
    put("log", b"start\n")
    fd1 = os.open("log", os.O_WRONLY | os.O_APPEND)
    fd2 = os.open("log", os.O_RDWR | os.O_APPEND)
    try:
        os.lseek(fd1, 0, os.SEEK_SET)
        os.write(fd1, b"one\n")
        os.write(fd2, b"two\n")
        os.write(fd1, b"three\n")
        log.append((os.lseek(fd1, 0, os.SEEK_CUR), os.lseek(fd2, 0, os.SEEK_CUR)))
    finally:
        os.close(fd1)
        os.close(fd2)
    log.append(read("log"))
    with open("log", "ab") as f:
        f.write(b"four\n")
    log.append(read("log"))
    fd = os.open("new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    log.append(stat.S_IMODE(os.stat("new").st_mode))
    log.append(attempt(lambda: os.open("new", os.O_CREAT | os.O_EXCL | os.O_WRONLY)))
    os.symlink("dangling-target", "dl")
    log.append(attempt(lambda: os.open("dl", os.O_CREAT | os.O_EXCL | os.O_WRONLY)))
    fd = os.open("dl", os.O_CREAT | os.O_WRONLY, 0o644)  # creates the target
    os.close(fd)
    log.append(tree())
    log.append(attempt(lambda: os.open("missing/x", os.O_CREAT | os.O_WRONLY)))
    log.append(attempt(lambda: os.open("new", os.O_WRONLY | os.O_DIRECTORY)))


def op_big_directory(log: list[Any]) -> None:
    os.mkdir("many")
    names = [f"entry-{i:05}" + ("-" + "n" * 200 if i % 100 == 0 else "") for i in range(2000)]
    for n in names:
        Path("many", n).touch()
    for i in range(0, 2000, 10):
        os.mkdir(f"many/dir-{i}")
    log.append(sorted(os.listdir("many")))
    with os.scandir("many") as it:
        entries = sorted((e.name, e.is_dir(), e.is_file()) for e in it)
    log.append(entries)
    log.append(os.stat("many").st_nlink)
    for n in names[::3]:  # remove a third while reading again
        os.unlink(os.path.join("many", n))
    log.append(len(os.listdir("many")))
    log.append(attempt(lambda: os.rmdir("many")))
    log.append(attempt(lambda: os.listdir("many/entry-00001")))  # ENOTDIR


EDGE_CASES = [op_rename, op_unlink_open, op_truncate, op_attributes, op_xattrs,
              op_special_files, op_hard_links, op_append_excl, op_big_directory]  # fmt: skip


def observe(op: Callable[[list[Any]], None], where: Path) -> list[Any]:
    where.mkdir()
    old = os.getcwd()
    os.chdir(where)
    log: list[Any] = []
    try:
        op(log)
    finally:
        os.chdir(old)
    return log


def snapshot(root: Path) -> list[tuple[Any, ...]]:
    """What a tree holds at the end: names, types, modes, owners, link counts, contents."""
    out: list[tuple[Any, ...]] = []
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            what: Any = p.read_bytes()
        elif stat.S_ISLNK(st.st_mode):
            what = os.readlink(p)
        else:
            what = None
        out.append((str(p.relative_to(root)), stat.filemode(st.st_mode), st.st_uid, st.st_gid,
                    st.st_nlink, what))  # fmt: skip
    return out


@pytest.mark.parametrize("op", EDGE_CASES, ids=lambda op: op.__name__[3:])
def test_same_as_a_plain_directory(op: Callable[[list[Any]], None], mount: Mounted,
                                   work: Path, tmp_path: Path) -> None:  # fmt: skip
    """Each step's value or errno in the mount equals that on a plain directory, and what
    the backing directory holds at the end equals what the plain directory holds."""
    expected = observe(op, tmp_path / "plain")
    got = observe(op, work / "case")
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert g == e, f"step {i}: the mount gave {g!r}, a plain directory {e!r}"
    plain = snapshot(tmp_path / "plain")
    assert snapshot(mount.backing / work.name / "case") == plain
    assert snapshot(work / "case") == plain


def worker_fds(mount: Mounted) -> int:
    """How many descriptors the mount's worker process holds."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ioband.fuse.worker" in argv and os.fsencode(mount.mnt) in argv:
            return len(os.listdir(f"/proc/{pid}/fd"))
    raise AssertionError("no worker process for the mount")


def test_readdir_keeps_no_descriptor_per_pass(mount: Mounted, work: Path) -> None:
    """Regression: an entry the kernel already knew, at the end of a full readdir buffer, left
    its freshly opened O_PATH fd open: every listing of a big directory leaked a few."""
    for i in range(1500):
        (work / f"entry-{i:05}-{'x' * 40}").touch()
    os.listdir(work)
    before = worker_fds(mount)
    for _ in range(10):
        assert len(os.listdir(work)) == 1500
    assert worker_fds(mount) - before < 5


def test_readdir_inode_numbers_of_another_file_system(mount: Mounted, work: Path) -> None:
    """Regression: a directory entry on another file system (a mount inside the backing
    directory) was reported by readdir with one inode number and remembered under another, so
    the kernel's inode was unknown to the worker (ESTALE, retried by the VFS) and st_ino
    changed under the caller once the name was looked up again."""
    from tests.test_fuse_faults import small_tmpfs

    with small_tmpfs(mount.backing / work.name / "sub", "1m") as sub:
        (sub / "f").write_text("on tmpfs")
        with os.scandir(work) as it:
            d_ino = {e.name: e.inode() for e in it}
        assert os.stat(work / "sub").st_ino == d_ino["sub"]
        time.sleep(1.2)  # the kernel looks the name up again
        assert os.stat(work / "sub").st_ino == d_ino["sub"]
        assert (work / "sub" / "f").read_text() == "on tmpfs"
        assert os.listdir(work / "sub") == ["f"]


def test_statfs_is_the_backing_file_systems(mount: Mounted) -> None:
    ours = os.statvfs(mount.mnt)
    theirs = os.statvfs(mount.backing)
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert abs(ours.f_bavail - theirs.f_bavail) < theirs.f_blocks // 100 + 1000
    assert abs(ours.f_ffree - theirs.f_ffree) < 10_000
    df = run(["df", "-P", str(mount.mnt)], cwd="/").stdout.splitlines()[-1].split()
    assert df[0] == "ioband:files1" and df[-1] == str(mount.mnt)


# -- an unprivileged user in the mount (default_permissions, allow_other) --------------------


def as_user(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A shell script run as uid/gid USER with no supplementary groups."""
    need("setpriv")
    argv = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "sh", "-c", script]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})  # fmt: skip


def test_unprivileged_user_owns_what_it_creates(mount: Mounted, work: Path) -> None:
    work.chmod(0o1777)
    p = as_user("umask 022 && echo hi > file && mkdir dir && ln -s file link && mkfifo fifo"
                " && ln file hard && touch dir/inner && mv file renamed && cat renamed",
                cwd=work)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi\n"
    backing = mount.backing / work.name
    for name, mode in (("renamed", 0o644), ("dir", 0o755), ("fifo", 0o644), ("hard", 0o644),
                       ("dir/inner", 0o644)):  # fmt: skip
        for root in (work, backing):
            st = os.lstat(root / name)
            assert (st.st_uid, st.st_gid) == (USER, USER), (root, name)
            assert stat.S_IMODE(st.st_mode) == mode, (root, name)
    st = os.lstat(backing / "link")
    assert (st.st_uid, st.st_gid) == (USER, USER)


def test_permission_errors_for_an_unprivileged_user(mount: Mounted, work: Path) -> None:
    work.chmod(0o1777)
    (work / "root-only").write_text("secret\n")
    (work / "root-only").chmod(0o600)
    (work / "readable").write_text("public\n")
    (work / "readable").chmod(0o644)
    (work / "closed").mkdir(mode=0o700)
    (work / "closed" / "x").write_text("x")

    def errors(script: str) -> str:
        p = as_user(script, cwd=work)
        assert p.returncode != 0, (script, p.stdout)
        return p.stderr

    assert "Permission denied" in errors("cat root-only")
    assert "Permission denied" in errors("echo x >> root-only")
    assert "Permission denied" in errors("echo x > readable")
    assert "Permission denied" in errors("ls closed")
    assert "Permission denied" in errors("cat closed/x")
    assert "Operation not permitted" in errors("chmod 666 readable")
    assert "Operation not permitted" in errors("rm -f readable")  # sticky directory
    assert as_user("cat readable", cwd=work).stdout == "public\n"
    # and in Python, the errnos themselves
    script = ("import os\n"
              "for f in (lambda: os.open('root-only', os.O_RDONLY),\n"
              "          lambda: os.utime('readable', (5, 5)),\n"
              "          lambda: os.chown('readable', 61031, 61031),\n"
              "          lambda: os.setxattr('readable', 'user.x', b'1')):\n"
              "    try: f(); print(0)\n"
              "    except OSError as e: print(e.errno)\n")  # fmt: skip
    p = as_user(f'python3 -c "{script}"', cwd=work)
    want = [errno.EACCES, errno.EPERM, errno.EPERM, errno.EACCES]
    assert p.stdout.split() == [str(e) for e in want], p.stderr
    assert (work / "root-only").read_text() == "secret\n"
