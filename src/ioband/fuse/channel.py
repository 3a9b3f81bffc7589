"""The admission channel between the daemon and a mount's FUSE worker process.

pyfuse3 serves one mount per process, so every mount runs in a worker process of its own while
the core stays in the daemon. For each read or write the worker asks the daemon's core for
admission and tells it when the I/O is done; the daemon answers when the core releases the
request. Records are fixed-size binary structs on a socketpair: cheap to pack, cheap to parse,
and written in batches.

This module is sans-I/O: encoders return bytes, ``Decoder`` turns received bytes into records.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ioband.errors import InvalidArgument

# worker -> daemon
SUBMIT = 1  # a request asks for admission
DONE = 2  # its I/O has completed
READY = 3  # the file system is mounted and serving
# daemon -> worker
ISSUE = 4  # the core released the request: do the I/O

FLAG_WRITE = 1
FLAG_SYNC = 2

#: kind, flags, tag, offset, length, pid, pgrp, uid, gid, cgroup
_SUBMIT = struct.Struct("<BBxxIqqiiIIQ")
_SHORT = struct.Struct("<BxxxI")  # kind, tag: DONE, READY, ISSUE
_SIZES = {SUBMIT: _SUBMIT.size, DONE: _SHORT.size, READY: _SHORT.size, ISSUE: _SHORT.size}


class Submit(NamedTuple):
    tag: int
    write: bool
    sync: bool
    offset: int
    length: int
    pid: int
    pgrp: int
    uid: int
    gid: int
    cgroup: int


def submit(
    tag: int, write: bool, sync: bool, offset: int, length: int,
    pid: int, pgrp: int, uid: int, gid: int, cgroup: int,
) -> bytes:  # fmt: skip
    flags = (FLAG_WRITE if write else 0) | (FLAG_SYNC if sync else 0)
    return _SUBMIT.pack(SUBMIT, flags, tag, offset, length, pid, pgrp, uid, gid, cgroup)


def short(kind: int, tag: int = 0) -> bytes:
    return _SHORT.pack(kind, tag)


class Decoder:
    """Bytes in, records out: ``Submit`` for SUBMIT, ``(kind, tag)`` for the short records."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Submit | tuple[int, int]]:
        buf = self._buf
        buf += data
        out: list[Submit | tuple[int, int]] = []
        pos = 0
        end = len(buf)
        while pos < end:
            kind = buf[pos]
            size = _SIZES.get(kind)
            if size is None:
                raise InvalidArgument(f"admission channel: unknown record kind {kind}")
            if end - pos < size:
                break
            if kind == SUBMIT:
                _, flags, *rest = _SUBMIT.unpack_from(buf, pos)
                tag, offset, length, pid, pgrp, uid, gid, cgroup = rest
                out.append(Submit(tag, bool(flags & FLAG_WRITE), bool(flags & FLAG_SYNC),
                                  offset, length, pid, pgrp, uid, gid, cgroup))  # fmt: skip
            else:
                out.append(_SHORT.unpack_from(buf, pos))
            pos += size
        del buf[:pos]
        return out
