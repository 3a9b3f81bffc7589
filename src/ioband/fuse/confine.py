"""System calls that keep the passthrough inside its backing tree (issue 11, item 2).

The daemon runs as root and serves other users; a user who can also write the backing directory
directly can swap a name between the kernel's LOOKUP and the request that follows. So:

- a name is resolved only as one entry of a directory we hold a descriptor of, never through a
  symlink and never upwards (``open_beneath``: openat2 with RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, else openat with O_NOFOLLOW);
- an object we already hold is changed through its descriptor (``fchownat``/``utimensat``/
  ``linkat`` with AT_EMPTY_PATH), never by a name that could now be a symlink;
- the calls that create or remove names run with the caller's file-system identity
  (``Identity.caller``: per-thread fsuid, fsgid and supplementary groups), so the backing file
  system makes its own permission checks as the caller and new objects belong to the caller
  from the start: no chown by name afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Callable, Iterator

AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture (Linux 5.6)
# setgroups(2) as a raw system call: glibc's wrapper changes every thread of the process
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159, "ppc64le": 81,
                  "s390x": 206}.get(platform.machine())  # fmt: skip

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.setfsuid.argtypes = [ctypes.c_uint]
_libc.setfsgid.argtypes = [ctypes.c_uint]
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                           ctypes.c_int]  # fmt: skip
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_int]  # fmt: skip


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]  # fmt: skip


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]  # fmt: skip


def _fail(what: str = "") -> OSError:
    e = ctypes.get_errno()
    return OSError(e, os.strerror(e), what) if what else OSError(e, os.strerror(e))


def check_name(name: bytes) -> bytes:
    """One directory entry: the kernel never sends anything else, and we never resolve more."""
    if not name or b"/" in name or name in (b".", b".."):
        raise OSError(errno.EINVAL, "not a single directory entry", name)
    return name


_openat2 = True  # until the kernel says ENOSYS


def open_beneath(dirfd: int, name: bytes, flags: int, mode: int = 0) -> int:
    """Open the entry ``name`` of the directory ``dirfd``: never through a symlink (a symlink
    is ELOOP, or with O_PATH the symlink itself), never outside the directory."""
    global _openat2
    check_name(name)
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if _openat2:
        how = _OpenHow(flags, mode & 0o7777 if flags & os.O_CREAT else 0,
                       RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)  # fmt: skip
        fd = _libc.syscall(_SYS_OPENAT2, dirfd, name, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        if ctypes.get_errno() != errno.ENOSYS:
            raise _fail(os.fsdecode(name))
        _openat2 = False
    # the same guarantees for one entry: O_NOFOLLOW on the only component resolved
    return os.open(name, flags, mode, dir_fd=dirfd)


def fchown(fd: int, uid: int, gid: int) -> None:
    """chown of the object ``fd`` refers to (an O_PATH descriptor too; a symlink itself)."""
    if _libc.fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF,
                      AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0:  # fmt: skip
        raise _fail()


def futimens(fd: int, atime_ns: int, mtime_ns: int) -> None:
    """Set the times of the object ``fd`` refers to, a symlink itself included (Linux 5.8+
    takes AT_EMPTY_PATH here; before, EINVAL: the caller has no race-free way for symlinks)."""
    ts = (_Timespec * 2)(_Timespec(*divmod(atime_ns, 10**9)),
                         _Timespec(*divmod(mtime_ns, 10**9)))  # fmt: skip
    if _libc.utimensat(fd, b"", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0:
        raise _fail()


def link_fd(fd: int, dirfd: int, name: bytes) -> None:
    """A new name ``name`` in ``dirfd`` for the object ``fd`` refers to: nothing is resolved
    on the source side, and linkat never follows the new name (needs CAP_DAC_READ_SEARCH)."""
    if _libc.linkat(fd, b"", dirfd, check_name(name), AT_EMPTY_PATH) != 0:
        raise _fail(os.fsdecode(name))


# -- the caller's file-system identity, per thread ---------------------------------------------


def _field(status: bytes, key: bytes) -> list[bytes]:
    start = status.find(b"\n" + key + b":")
    if start < 0:
        return []
    start += len(key) + 2
    end = status.find(b"\n", start)
    return status[start : end if end >= 0 else None].split()


def _caller_groups(pid: int, uid: int, gid: int) -> list[int]:
    """The caller's supplementary groups, from /proc/<pid>/status (pid is the calling thread,
    which has its own credentials). None when the thread is gone or is someone else now (its
    fsuid/fsgid are not the request's): the kernel has checked permissions with the real ones
    already (default_permissions), this is the second check. About 15 us."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        status = os.read(fd, 8192)
    except OSError:
        return []
    finally:
        os.close(fd)
    try:
        if int(_field(status, b"Uid")[3]) != uid or int(_field(status, b"Gid")[3]) != gid:
            return []
        return [int(g) for g in _field(status, b"Groups")]
    except (IndexError, ValueError):
        return []


class Identity:
    """Switches the calling thread's fsuid, fsgid and supplementary groups to a FUSE caller's
    for the length of a ``with`` block, and back. Only when the daemon is root (else it cannot,
    and needs not: it has no more rights than itself). The block must not await: the event
    loop's thread is the one switched."""

    def __init__(self) -> None:
        self.enabled = os.geteuid() == 0
        self.uid = os.geteuid()
        self.gid = os.getegid()
        self.groups = os.getgroups()

    @staticmethod
    def _setgroups(groups: list[int]) -> None:
        if _SYS_SETGROUPS is None:  # an architecture not listed: the daemon's groups stay
            return
        arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
        if _libc.syscall(_SYS_SETGROUPS, len(groups), arr) != 0:
            raise _fail("setgroups")

    @staticmethod
    def _setfs(fn: Callable[[int], int], value: int) -> None:
        fn(value)
        if fn(0xFFFFFFFF) != value:  # -1 changes nothing and returns the current value
            raise OSError(errno.EPERM, "cannot switch the file-system identity")

    @contextlib.contextmanager
    def caller(self, uid: int, gid: int, pid: int) -> Iterator[None]:
        if not self.enabled or (uid, gid) == (self.uid, self.gid):
            yield
            return
        groups = _caller_groups(pid, uid, gid) if uid != 0 else self.groups
        try:
            self._setgroups(groups)
            self._setfs(_libc.setfsgid, gid)
            self._setfs(_libc.setfsuid, uid)
            yield
        finally:
            self.restore()

    def restore(self) -> None:
        """Back to the daemon's identity; if that fails the thread cannot be trusted again."""
        try:
            self._setfs(_libc.setfsuid, self.uid)
            self._setfs(_libc.setfsgid, self.gid)
            self._setgroups(self.groups)
        except OSError:  # pragma: no cover - setfs* back to our own ids cannot fail
            os.abort()
