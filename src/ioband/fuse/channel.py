"""The admission channel between the daemon and a mount's FUSE worker process.

pyfuse3 serves one mount per process, so every mount runs in a worker process of its own while
the core stays in the daemon. For each read or write the worker asks the daemon's core for
admission and tells it when the I/O is done; the daemon answers when the core releases the
request. Records are fixed-size binary structs on a socketpair, sent in batches: a header
(kind, count) and ``count`` entries of that kind. Each end writes what one turn of its loop
produced in one write, a run of records of one kind as one batch, in the order they were made
(a DONE made before a SUBMIT is read before it: the core sees the events in their order).

Why batches: at 4 KiB and queue depth 32 a loop turn carries five to ten records each way, and
the daemon's cost per request was mostly Python taking records apart one by one (a dispatch on
the kind, an ``unpack_from``, a tuple, per record). A batch is taken apart by one C call
(``iter_unpack`` for SUBMIT entries, a ``memoryview`` cast for the tags of DONE and ISSUE).

This module is sans-I/O: ``Outbox`` collects records and returns the bytes to write,
``Decoder`` turns received bytes into batches. Malformed input raises ``ChannelError``, which
names the record and field at fault and carries the batches decoded before it (their requests
must not be lost).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from ioband.errors import InvalidArgument

# worker -> daemon
SUBMIT = 1  # requests ask for admission
DONE = 2  # their I/O has completed
READY = 3  # the file system is mounted and serving (no entries)
# daemon -> worker
ISSUE = 4  # the core released the requests: do their I/O

NAMES = {SUBMIT: "SUBMIT", DONE: "DONE", READY: "READY", ISSUE: "ISSUE"}

FLAG_WRITE = 1
FLAG_SYNC = 2
_FLAGS = FLAG_WRITE | FLAG_SYNC

MAX_BATCH = 0xFFFF  # entries in one batch (the header's 16-bit count)
MAX_TAG = 0xFFFFFFFF

#: kind, count
HEADER = struct.Struct("<BxH")
#: flags, tag, offset, length, pid, pgrp, uid, gid, cgroup
SUBMIT_ENTRY = struct.Struct("<BxxxIqqiiIIQ")
TAG_ENTRY = struct.Struct("<I")  # DONE, ISSUE
_ENTRY_SIZES = {SUBMIT: SUBMIT_ENTRY.size, DONE: TAG_ENTRY.size, ISSUE: TAG_ENTRY.size}

READY_RECORD = HEADER.pack(READY, 0)


class Submit(NamedTuple):
    """A SUBMIT entry, as decoded."""

    flags: int
    tag: int
    offset: int
    length: int
    pid: int
    pgrp: int
    uid: int
    gid: int
    cgroup: int


class ChannelError(InvalidArgument):
    """Malformed input on the channel. ``decoded``: the batches before the bad one."""

    def __init__(self, message: str, decoded: list[tuple[int, list]]) -> None:
        super().__init__(f"admission channel: {message}")
        self.decoded = decoded


class Outbox:
    """Records to send, in the order they were made; ``take`` returns them as batches."""

    __slots__ = ("_chunks", "_entries", "_kind")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._kind = 0
        self._entries: list = []  # packed SUBMIT entries, or tags

    def __bool__(self) -> bool:
        return bool(self._entries or self._chunks)

    def submit(
        self, tag: int, write: bool, sync: bool, offset: int, length: int,
        pid: int, pgrp: int, uid: int, gid: int, cgroup: int,
    ) -> None:  # fmt: skip
        if self._kind != SUBMIT or len(self._entries) == MAX_BATCH:
            self._close(SUBMIT)
        flags = (FLAG_WRITE if write else 0) | (FLAG_SYNC if sync else 0)
        self._entries.append(
            SUBMIT_ENTRY.pack(flags, tag, offset, length, pid, pgrp, uid, gid, cgroup)
        )

    def tag(self, kind: int, tag: int) -> None:
        """A DONE or ISSUE record for ``tag``."""
        if self._kind != kind or len(self._entries) == MAX_BATCH:
            self._close(kind)
        self._entries.append(tag)

    def ready(self) -> None:
        self._close(0)
        self._chunks.append(READY_RECORD)

    def _close(self, next_kind: int) -> None:
        entries = self._entries
        if entries:
            n = len(entries)
            if self._kind == SUBMIT:
                self._chunks.append(HEADER.pack(SUBMIT, n) + b"".join(entries))
            else:
                self._chunks.append(struct.pack(f"<BxH{n}I", self._kind, n, *entries))
            self._entries = []
        self._kind = next_kind

    def take(self) -> bytes:
        """Everything collected, as bytes to write; the outbox is empty afterwards."""
        self._close(0)
        out = b"".join(self._chunks)
        self._chunks = []
        return out


def encode(kind: int, entries: Iterable) -> bytes:
    """One batch (the tests' and tools' way to make records; the ends use ``Outbox``).
    ``entries``: ``Submit`` tuples for SUBMIT, tags for DONE and ISSUE, none for READY."""
    items = list(entries)
    if kind == SUBMIT:
        body = b"".join(SUBMIT_ENTRY.pack(*e) for e in items)
    else:
        body = struct.pack(f"<{len(items)}I", *items)
    return HEADER.pack(kind, len(items)) + body


class Decoder:
    """Bytes in, batches out: ``(SUBMIT, [entry, ...])`` (plain tuples in ``Submit``'s order:
    a named tuple per entry costs what its decoding does), ``(DONE, [tag, ...])``,
    ``(ISSUE, [tag, ...])``, ``(READY, [])``. ``accept``: the kinds this end may receive."""

    def __init__(self, accept: Iterable[int]) -> None:
        self._buf = bytearray()
        self.accept = frozenset(accept)

    def feed(self, data: bytes) -> list[tuple[int, list]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, list]] = []
        pos = 0
        end = len(buf)
        header = HEADER.size
        try:
            while end - pos >= header:
                kind, count = HEADER.unpack_from(buf, pos)
                self._check_header(kind, count)
                size = _ENTRY_SIZES.get(kind, 0) * count
                if end - pos - header < size:
                    break
                start = pos + header
                items: list
                if kind == SUBMIT:
                    with memoryview(buf) as view, view[start : start + size] as part:
                        items = list(SUBMIT_ENTRY.iter_unpack(part))
                    _check_submits(items)
                elif kind == READY:
                    items = []
                else:
                    items = list(struct.unpack_from(f"<{count}I", buf, start))
                    if 0 in items:
                        raise InvalidArgument(f"{NAMES[kind]} tag 0: must be 1 to {MAX_TAG}")
                out.append((kind, items))
                pos = start + size
        except InvalidArgument as err:
            del buf[:]  # nothing after a malformed record can be framed
            raise ChannelError(str(err), out) from None
        del buf[:pos]
        return out

    def _check_header(self, kind: int, count: int) -> None:
        if kind not in self.accept:
            expected = ", ".join(f"{k} ({NAMES[k]})" for k in sorted(self.accept))
            raise InvalidArgument(f"record kind {kind}: must be one of {expected}")
        if kind == READY:
            if count != 0:
                raise InvalidArgument(f"READY count {count}: must be 0")
        elif count == 0:
            raise InvalidArgument(f"{NAMES[kind]} count 0: must be 1 to {MAX_BATCH}")


def _check_submits(items: list[tuple]) -> None:
    for e in items:
        if e[0] & ~_FLAGS or e[1] == 0 or e[2] < 0 or e[3] < 0:
            bad = Submit._make(e)
            if bad.flags & ~_FLAGS:
                why = f"flags {bad.flags:#x}: only WRITE (1) and SYNC (2) are defined"
            elif bad.tag == 0:
                why = f"tag 0: must be 1 to {MAX_TAG}"
            elif bad.offset < 0:
                why = f"offset {bad.offset}: must be >= 0"
            else:
                why = f"length {bad.length}: must be >= 0"
            raise InvalidArgument(f"SUBMIT tag {bad.tag} {why}" if bad.tag else f"SUBMIT {why}")
