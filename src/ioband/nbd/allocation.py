"""The ``base:allocation`` metadata context: which parts of a backing file are holes.

An NBD ``BLOCK_STATUS`` reply lists consecutive ``(length, flags)`` extents from the request's
offset; holes (``NBD_STATE_HOLE | NBD_STATE_ZERO``) tell clients such as ``nbdcopy``,
``qemu-img convert`` and ``qemu-img map`` what they need not read. The walk uses
``lseek(SEEK_DATA)`` / ``lseek(SEEK_HOLE)``; it is written against a ``seek`` callable, not a
file descriptor, so that its edge cases (races with a file that changes under it, file systems
that answer oddly) can be tested without one.

The rules it keeps (NetworkBlockDevice/nbd ``doc/proto.md``, NBD_CMD_BLOCK_STATUS):

* at least one extent, every length > 0, consecutive from the request's offset;
* the lengths add up to at most the requested length (never beyond it: the spec lets only
  the last extent of a non-REQ_ONE reply go further, and nothing is gained by it here);
* a bounded number of extents (``max_extents``; 1 for ``NBD_CMD_FLAG_REQ_ONE``): a reply may
  cover less than was asked, the client asks again from where it ends;
* adjacent extents with the same flags are merged (the spec: consecutive descriptors SHOULD
  differ);
* when the file system cannot tell (no SEEK_DATA support, a block device, an unexpected
  answer or error), the rest of the range is reported as data (flags 0), which the spec
  says is always safe.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from ioband.nbd.constants import BlockState

__all__ = ["DATA", "HOLE", "MAX_EXTENTS", "allocation_extents", "fd_seek"]

DATA = 0
"""Status of allocated (or unknown) extents."""

HOLE = int(BlockState.HOLE | BlockState.ZERO)
"""Status of a hole: unallocated, and it reads as zeroes."""

MAX_EXTENTS = 1024
"""Most extents in one reply (8 KiB of descriptors, at most ~2k lseek calls): a heavily
fragmented file costs the server a bounded amount of work per request."""

Seek = Callable[[int, int], int]
"""``seek(offset, whence)`` for ``whence`` in ``os.SEEK_DATA`` / ``os.SEEK_HOLE``: the new
offset, or OSError (ENXIO: no data at or after ``offset``, or ``offset`` at/after the end)."""


def fd_seek(fd: int) -> Seek:
    """The ``seek`` of an open file descriptor (``os.lseek``; the offset it moves is shared by
    nobody here: all I/O on backing stores is positional)."""
    return lambda offset, whence: os.lseek(fd, offset, whence)


def allocation_extents(
    seek: Seek | None, offset: int, length: int, max_extents: int = MAX_EXTENTS
) -> list[tuple[int, int]]:
    """``(length, flags)`` extents describing ``[offset, offset + length)``, from ``offset``.

    ``seek`` is None for a store without holes (a block device): one data extent. ``length``
    must be at least 1 and ``max_extents`` at least 1 (the codec refuses zero-length
    BLOCK_STATUS requests before they get here). Past the end of the file (a file shorter than
    its export: reads there return zeroes) is a hole.
    """
    if length < 1 or offset < 0:
        raise ValueError(f"bad range {offset}+{length}")
    if max_extents < 1:
        raise ValueError("max_extents must be at least 1")
    end = offset + length
    if seek is None:
        return [(length, DATA)]
    out: list[tuple[int, int]] = []
    pos = offset
    # Every step advances pos by at least one byte, and at most two steps make one extent; the
    # bound on steps only matters if the file changes under us between the two lseeks.
    for _ in range(2 * max_extents + 2):
        if pos >= end:
            break
        nxt, flags = _next_extent(seek, pos, end)
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + nxt - pos, flags)
        elif len(out) == max_extents:
            break
        else:
            out.append((nxt - pos, flags))
        pos = nxt
    return out


def _next_extent(seek: Seek, pos: int, end: int) -> tuple[int, int]:
    """``(extent end, flags)`` of the extent starting at ``pos``; ``pos < extent end <= end``."""
    try:
        data = seek(pos, os.SEEK_DATA)
    except OSError as err:
        if err.errno == errno.ENXIO:  # no data from pos on (or pos is past the end): a hole
            return end, HOLE
        return end, DATA  # EINVAL/EOPNOTSUPP (not supported), EIO...: unknown is data
    if data > pos:
        return min(data, end), HOLE
    if data < pos:  # a file system that does not honour SEEK_DATA's contract
        return end, DATA
    try:
        hole = seek(pos, os.SEEK_HOLE)
    except OSError as err:
        if err.errno == errno.ENXIO:  # the file shrank below pos since SEEK_DATA
            return end, HOLE
        return end, DATA
    if hole <= pos:  # the data at pos vanished between the two calls: don't guess
        return end, DATA
    return min(hole, end), DATA
