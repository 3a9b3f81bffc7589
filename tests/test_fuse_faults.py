"""Faults through a real ioband FUSE mount: a writer killed mid-write, a full backing file
system, a backing file removed under an open handle. After each, the mount must keep serving
other processes, and what was made durable must still be there."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_real
from tests.fuse_helpers import Mounted, fuse_prerequisites, mounted

TIMEOUT = 30  # seconds for any one subprocess
MIB = 1 << 20


def pattern(n: int, seed: int = 1) -> bytes:
    """``n`` bytes that are different at every offset (a misplaced block shows)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest() * 128
        i += 1
    return bytes(out[:n])


def still_serving(mnt: Path, name: str = "after") -> None:
    """Another process writes, fsyncs and reads back a file in the mount."""
    script = (
        "import os, sys\n"
        "p = os.path.join(sys.argv[1], sys.argv[2])\n"
        "data = os.urandom(1 << 20)\n"
        "with open(p, 'wb') as f:\n"
        "    f.write(data); f.flush(); os.fsync(f.fileno())\n"
        "assert open(p, 'rb').read() == data\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", script, str(mnt), name], capture_output=True,
                       text=True, timeout=TIMEOUT)  # fmt: skip
    assert (p.returncode, p.stdout) == (0, "ok\n"), p.stderr


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mounted]:
    fuse_prerequisites()
    with mounted(tmp_path) as m:
        yield m


# -- a writer killed mid-write ---------------------------------------------------------------

WRITER = """
import os, sys
path, synced = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
data = bytes.fromhex(sys.stdin.readline())  # one MiB
for i in range(synced):
    os.write(fd, data)
os.fsync(fd)
print("synced", flush=True)
junk = b"j" * (4 << 20)
while True:  # until killed: big writes, each many FUSE requests
    os.write(fd, junk)
"""


def test_writer_killed_mid_write(mount: Mounted) -> None:
    """SIGKILL while a process streams into a large file: other processes are served right
    after, and the part fsync'ed before the kill is intact, in the mount and the backing."""
    mib = pattern(MIB)
    path = mount.mnt / "big"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "8"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(mib.hex() + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "synced\n"
        deadline = time.monotonic() + TIMEOUT
        while os.stat(mount.backing / "big").st_size < 24 * MIB:  # well into the junk
            assert time.monotonic() < deadline, "the writer stopped writing"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    still_serving(mount.mnt)
    for where in (mount.mnt / "big", mount.backing / "big"):
        with open(where, "rb") as f:
            for i in range(8):
                assert f.read(MIB) == mib, f"{where}: MiB {i} differs"
            assert set(f.read(MIB)) <= {ord("j")}  # what follows is the junk, or nothing
    # the killed writer's file is an ordinary file again: writable, truncatable, removable
    os.truncate(mount.mnt / "big", 8 * MIB)
    assert (mount.mnt / "big").read_bytes() == mib * 8
    (mount.mnt / "big").unlink()
    assert not (mount.backing / "big").exists()


# -- a full backing file system --------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "8m") -> Iterator[Path]:
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs",
                        str(where)], capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    require_real(p.returncode == 0, f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], timeout=TIMEOUT, check=False)


def freed(mnt: Path, size: int) -> None:
    """Wait until ``size`` bytes are free. An unlinked file's space comes back only when the
    kernel has sent FORGET for it (the worker holds an O_PATH fd per inode the kernel knows),
    a moment after the unlink: a FUSE passthrough, unlike a local file system, lags here."""
    deadline = time.monotonic() + 5
    while True:
        sv = os.statvfs(mnt)
        if sv.f_bavail * sv.f_frsize >= size:
            return
        assert time.monotonic() < deadline, f"only {sv.f_bavail * sv.f_frsize} bytes free"
        time.sleep(0.02)


def test_full_backing_file_system(tmp_path: Path) -> None:
    """Writing past an 8 MiB tmpfs: ENOSPC reaches the writer (dd; Python with O_SYNC at the
    write, where every byte a write reported is in the file; buffered, at a later write or at
    close), and the mount still serves reads and (once space is freed) smaller writes."""
    fuse_prerequisites()
    with small_tmpfs(tmp_path / "tmpfs") as backing, mounted(tmp_path, backing=backing) as m:
        keep = pattern(MIB, seed=2)
        (m.mnt / "keep").write_bytes(keep)
        dd = ["dd", "if=/dev/zero", f"of={m.mnt / 'dd'}", "bs=1M", "count=16", "conv=fsync"]
        p = subprocess.run(dd, capture_output=True, text=True, timeout=TIMEOUT)
        assert p.returncode != 0
        assert "No space left on device" in p.stderr, p.stderr
        (m.mnt / "dd").unlink()
        freed(m.mnt, 6 * MIB)

        # O_SYNC writes are not delayed: what write() said it wrote is what the file holds
        written = 0
        fd = os.open(m.mnt / "py", os.O_WRONLY | os.O_CREAT | os.O_SYNC, 0o644)
        try:
            with pytest.raises(OSError) as err:
                for _ in range(64):
                    written += os.write(fd, b"p" * (3 * MIB // 2 + 123))
            assert err.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        assert 4 * MIB < written < 8 * MIB
        assert os.stat(m.backing / "py").st_size == written
        assert os.stat(m.mnt / "py").st_size == written
        (m.mnt / "py").unlink()
        freed(m.mnt, 6 * MIB)

        # buffered writes are delayed (write-behind): ENOSPC comes with a later write or with
        # close(), as the kernel reports a failed writeback
        written = 0
        errors = []
        fd = os.open(m.mnt / "py", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for _ in range(64):
                written += os.write(fd, b"q" * (3 * MIB // 2 + 123))
        except OSError as e:
            errors.append(e.errno)
        finally:
            try:
                os.close(fd)
            except OSError as e:
                errors.append(e.errno)
        assert errno.ENOSPC in errors
        size = os.stat(m.backing / "py").st_size
        assert 4 * MIB < size <= written
        # delayed writes land concurrently: one refused for want of space while a later one
        # took the last pages leaves a hole, as a failed kernel writeback does
        content = (m.backing / "py").read_bytes()
        assert set(content) <= {ord("q"), 0}
        assert content.count(b"q") > 4 * MIB

        assert (m.mnt / "keep").read_bytes() == keep
        fd = os.open(m.mnt / "keep", os.O_RDONLY)
        try:
            assert os.pread(fd, 100, MIB - 50) == keep[-50:]
        finally:
            os.close(fd)
        (m.mnt / "py").unlink()
        freed(m.mnt, 4 * MIB)
        still_serving(m.mnt, "smaller")


# -- a backing file removed under an open handle ---------------------------------------------


def test_backing_file_removed_under_open_handle(mount: Mounted) -> None:
    """The file goes from the backing directory (not through the mount) while the mount has it
    open: the open handle still reads and writes it; once the kernel's cached name expires, new
    opens get ENOENT; a new file of the same name is a different file; the mount serves on."""
    data = pattern(3 * MIB, seed=3)
    (mount.mnt / "victim").write_bytes(data)
    fd = os.open(mount.mnt / "victim", os.O_RDWR)
    try:
        assert os.pread(fd, 100, 0) == data[:100]
        os.unlink(mount.backing / "victim")
        assert os.pread(fd, MIB, MIB) == data[MIB : 2 * MIB]
        os.pwrite(fd, b"still mine", 10)
        assert os.pread(fd, 20, 5) == data[5:10] + b"still mine" + data[20:25]
        time.sleep(1.2)  # ATTR_TIMEOUT: the kernel asks the daemon again
        with pytest.raises(FileNotFoundError):
            os.open(mount.mnt / "victim", os.O_RDONLY)
        assert "victim" not in os.listdir(mount.mnt)
        (mount.backing / "victim").write_bytes(b"a new file")
        assert (mount.mnt / "victim").read_bytes() == b"a new file"
        assert os.pread(fd, 10, 0) == data[:10]  # the handle still has the old one
        assert os.fstat(fd).st_nlink == 0
        still_serving(mount.mnt)
    finally:
        os.close(fd)
    assert (mount.mnt / "victim").read_bytes() == b"a new file"


def test_backing_directory_removed_under_cwd(mount: Mounted) -> None:
    """A directory removed on the backing side while a process has it as its working
    directory in the mount: that process gets ENOENT for new names, others are served."""
    d = mount.mnt / "gone"
    d.mkdir()
    (d / "f").write_text("x")
    script = (
        "import os, sys, time\n"
        "os.chdir(sys.argv[1])\n"
        "print('in', flush=True)\n"
        "sys.stdin.readline()\n"
        "try:\n"
        "    open('new', 'w')\n"
        "    print('created')\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(d)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "in\n"
        os.unlink(mount.backing / "gone" / "f")
        os.rmdir(mount.backing / "gone")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    assert out.strip() == str(errno.ENOENT)
    time.sleep(1.2)
    assert not d.exists()
    still_serving(mount.mnt)
