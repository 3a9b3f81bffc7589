"""The backing store of an export: a regular file or a block device, read and written with
positional I/O (``os.pread``/``os.pwrite``) so that many requests can run at once."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field

from ioband.core.engine import DEFAULT_NR_REQUESTS, BackingInfo
from ioband.nbd.allocation import MAX_EXTENTS, allocation_extents, fd_seek

BLKGETSIZE64 = 0x80081272
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
O_DIRECT_ALIGN = 4096
POOLED_READ = 64 << 10  # reads this large go into recycled buffers
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _sysfs_nr_requests(st: os.stat_result) -> int | None:
    base = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    for path in (f"{base}/queue/nr_requests", f"{base}/../queue/nr_requests"):
        try:
            with open(path) as f:
                return int(f.read())
        except (OSError, ValueError):
            continue
    return None


def resolve(path: str) -> BackingInfo | None:
    """What the core needs of a table's ``<device>``: tables show a block device as
    ``major:minor``; ``io_limit 0`` derives from its queue's ``nr_requests`` (128 for files)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        return BackingInfo(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", _sysfs_nr_requests(st))
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return BackingInfo(path, DEFAULT_NR_REQUESTS)
    return None


def _aligned(n: int) -> int:
    return max(O_DIRECT_ALIGN, -(-n // O_DIRECT_ALIGN) * O_DIRECT_ALIGN)


@dataclass
class Backing:
    """An open backing store. Its methods block: the server calls them from worker threads."""

    path: str
    fd: int
    size: int
    is_block: bool
    direct: bool
    read_only: bool
    _free: dict[int, list[bytearray]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str, *, direct: bool = False, read_only: bool = False) -> Backing:
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        if direct:
            flags |= os.O_DIRECT
        fd = os.open(path, flags)
        try:
            st = os.fstat(fd)
            is_block = stat.S_ISBLK(st.st_mode)
            if is_block:
                size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
            elif stat.S_ISREG(st.st_mode):
                size = st.st_size
            else:
                raise OSError(errno.EINVAL, f"{path}: not a regular file or block device")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, size, is_block, direct, read_only)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, offset: int, length: int) -> bytes | memoryview:
        if self.direct:
            view = memoryview(mmap.mmap(-1, _aligned(length)))  # page-aligned for O_DIRECT
            done = 0
            while done < length:
                n = os.preadv(self.fd, [view[done : _aligned(length)]], offset + done)
                if n == 0:
                    view[done:length] = bytes(length - done)
                    break
                done += n
            return view[:length]
        if length >= POOLED_READ:
            buf = self._buffer(length)
            view = memoryview(buf)
            done = 0
            while done < length:
                n = os.preadv(self.fd, [view[done:]], offset + done)
                if n == 0:
                    view[done:] = bytes(length - done)
                    break
                done += n
            return view
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # past the end of a file that shrank under us
            data += bytes(length - len(data))
        return data

    def read_cached(self, offset: int, length: int) -> bytes | None:
        """The data if the page cache has all of it (``RWF_NOWAIT``: never blocks), else None:
        the event loop serves cached reads itself and sends only misses to the threads."""
        if self.direct or length >= POOLED_READ or not _NOWAIT:
            return None
        buf = bytearray(length)
        try:
            n = os.preadv(self.fd, [buf], offset, _NOWAIT)
        except OSError:  # EAGAIN (not cached) or EOPNOTSUPP: let a thread do it
            return None
        return bytes(buf) if n == length else None

    def _buffer(self, length: int) -> bytearray:
        """A reusable read buffer: fresh 1 MiB allocations cost more in page faults than the
        copy itself. Give it back with ``recycle`` once nothing refers to it any more."""
        free = self._free.get(length)
        return free.pop() if free else bytearray(length)

    def recycle(self, data: object) -> None:
        if isinstance(data, memoryview) and isinstance(data.obj, bytearray):
            free = self._free.setdefault(len(data.obj), [])
            if len(free) < 64:
                free.append(data.obj)

    def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        view = memoryview(data)
        length = len(view)
        if self.direct:
            buf = memoryview(mmap.mmap(-1, _aligned(length)))
            buf[:length] = view
            view = buf[:length]
        done = 0
        while done < length:
            done += os.pwrite(self.fd, view[done:], offset + done)
        if fua:
            os.fdatasync(self.fd)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Discard is a hint: a store that cannot punch holes keeps its data."""
        try:
            if self.is_block:
                fcntl.ioctl(self.fd, BLKDISCARD, struct.pack("QQ", offset, length))
            else:
                _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as err:
            if err.errno not in _UNSUPPORTED:
                raise
        if fua:
            os.fdatasync(self.fd)

    def write_zeroes(self, offset: int, length: int, *, may_trim: bool, fua: bool = False) -> None:
        try:
            if self.is_block:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
            elif may_trim:
                _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            else:
                _fallocate(self.fd, FALLOC_FL_ZERO_RANGE, offset, length)
        except OSError as err:
            if err.errno not in _UNSUPPORTED:
                raise
            zero = memoryview(bytes(min(length, 1 << 20)))
            done = 0
            while done < length:
                n = min(len(zero), length - done)
                self.write(offset + done, zero[:n])
                done += n
        if fua:
            os.fdatasync(self.fd)

    def cache(self, offset: int, length: int) -> None:
        os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)

    def block_status(
        self, offset: int, length: int, req_one: bool = False, max_extents: int = MAX_EXTENTS
    ) -> list[tuple[int, int]]:
        """The ``base:allocation`` extents of ``[offset, offset + length)`` (see
        :mod:`ioband.nbd.allocation`): holes of a regular file from SEEK_DATA/SEEK_HOLE; a
        block device is all data (its holes, if thin-provisioned, are not visible to lseek).
        ``req_one``: one extent. Blocks (lseek can read file-system metadata): call it from a
        worker thread."""
        seek = None if self.is_block else fd_seek(self.fd)
        return allocation_extents(seek, offset, length, 1 if req_one else max_extents)
