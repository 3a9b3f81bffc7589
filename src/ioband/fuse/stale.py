"""Mount points left behind: a FUSE server that died without unmounting leaves a mount whose
every access fails with ENOTCONN ("Transport endpoint is not connected") or ECONNABORTED. It
must not block the next start, so it is detached; a live mount there is an error."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

MNT_DETACH = 2
#: what every access to a mount whose server is gone fails with (ECONNABORTED: the connection
#: was aborted, e.g. the server died while requests were in flight)
DEAD = (errno.ENOTCONN, errno.ECONNABORTED)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mounted_at(path: str) -> str | None:
    """The file system type mounted exactly at ``path``, or None."""
    found = mount_entry(path)
    return found[0] if found else None


def mount_entry(path: str) -> tuple[str, str] | None:
    """(file system type, ``major:minor``) of the mount exactly at ``path``, from
    /proc/self/mountinfo: no stat, which a FUSE server must not do on its own mount before it
    serves."""
    path = os.path.abspath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and _unescape(fields[4]) == path:
                found = (right.split()[0], fields[2])  # the last mount there is in effect
    return found


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")  # fmt: skip


def detach(path: str) -> None:
    if _libc.umount2(os.fsencode(os.path.abspath(path)), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"cannot unmount {path}: {os.strerror(e)}")


def is_dead_mount(path: str) -> bool:
    """A mount at ``path`` whose server is gone (other errors: False)."""
    try:
        os.statvfs(path)  # always asks the server (a stat may be answered from cached attributes)
    except OSError as err:
        return err.errno in DEAD
    return False


def clear_stale_mount(path: str) -> bool:
    """Detach a dead FUSE mount at ``path`` (True if there was one); refuse a live mount."""
    if is_dead_mount(path):
        detach(path)
        return True
    os.statvfs(path)  # a missing path is the caller's error
    kind = mounted_at(path)
    if kind is not None and kind.startswith("fuse"):
        raise OSError(errno.EBUSY, f"{path}: a FUSE file system ({kind}) is already mounted there")
    return False
