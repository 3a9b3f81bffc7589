"""Linux native AIO (``io_submit``) for O_DIRECT backing I/O, on the event loop.

Why: a read handed to a thread pool costs two thread switches and two hand-overs of the GIL
(the pool thread takes it to run ``pread``, the loop takes it back for the reply). At 4 KiB that
is most of a request's cost: profiled at QD32, the FUSE worker spent half its time in futex
waits and wake-ups. It also falsifies the dispatch window: a thread whose ``pread`` has
returned waits for the GIL before its completion is seen, so a daemon that counts 16 requests
in flight has fewer at the store. Measured with 16 Python threads against two processes of 2
on one throttled loop device (a FIFO at 1,500 IOPS), the 16 got 74 % of the reads, 53 % when
their process's main thread was half busy (fio's threads: 82 %); three NBD daemons sharing an
array by weight 2:1 gave the heavy one ~59 % of the reads instead of 67 %.

With AIO the loop submits the I/O itself, many requests in one ``io_submit`` per loop turn, and
learns of completions from an eventfd it polls like any socket: no thread, no GIL hand-over, as
many requests in flight as the scheduler releases. The kernel runs only O_DIRECT I/O
asynchronously this way (buffered AIO blocks in ``io_submit``), so buffered and unaligned
requests keep the thread pool.

Two ways in: ``start`` with a callback (the NBD server: no future per request) and ``submit``
returning a future (the FUSE worker's coroutines). Completions found in one wake-up are
delivered inside ``batch`` (the daemon's ``Driver``), so what they release is pumped once.

The calls are made through ctypes (``syscall``): there is no AIO module in the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import struct
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

log = logging.getLogger("ioband.aio")

_SYS_IO_SETUP = 206  # x86_64 numbers
_SYS_IO_DESTROY = 207
_SYS_IO_GETEVENTS = 208
_SYS_IO_SUBMIT = 209

PREAD = 0
PWRITE = 1
#: What O_DIRECT needs of buffers (page-aligned) and what ``BufferPool`` rounds sizes up to.
ALIGN = 4096
#: The callback of ``start``: the byte count, or a negative errno.
Done = Callable[[int], None]
_IOCB_FLAG_RESFD = 1

#: struct iocb: data, key, rw_flags, opcode, reqprio, fildes, buf, nbytes, offset, reserved2,
#: flags, resfd
_IOCB = struct.Struct("<QIiHhIQQqQII")
#: struct io_event: data, obj, res, res2
_EVENT = struct.Struct("<QQqq")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def available() -> bool:
    """AIO works here (x86_64 Linux that lets us set up a context)."""
    if os.uname().machine != "x86_64":
        return False
    ctx = ctypes.c_ulong(0)
    if _syscall(_SYS_IO_SETUP, ctypes.c_long(1), ctypes.byref(ctx)) != 0:
        return False
    _syscall(_SYS_IO_DESTROY, ctx)
    return True


def address(buf: Any) -> tuple[Any, int]:
    """The address of a writable buffer (an ``mmap``), and the object that keeps it exported."""
    anchor = (ctypes.c_char * len(buf)).from_buffer(buf)
    return anchor, ctypes.addressof(anchor)


class Aio:
    """One AIO context, ``depth`` requests in flight at most (more wait in submission order).
    Contexts come out of the system-wide ``fs.aio-max-nr`` (65 536 events by default), so a
    process takes a modest one: 256 requests in flight are more than a disk queue needs.

    ``aio.start(PREAD, fd, addr, length, offset, done)`` calls ``done(result)`` from the loop,
    with the byte count or a negative errno; ``await aio.submit(...)`` returns the byte count or
    raises ``OSError``. The buffer at ``addr`` must stay alive until then."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = 256,
                 batch: AbstractContextManager[object] | None = None) -> None:  # fmt: skip
        self.loop = loop
        self.depth = depth
        self._batch = batch if batch is not None else nullcontext()
        self._ctx = ctypes.c_ulong(0)
        if _syscall(_SYS_IO_SETUP, ctypes.c_long(depth), ctypes.byref(self._ctx)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"io_setup: {os.strerror(e)}")
        self._iocbs = ctypes.create_string_buffer(_IOCB.size * depth)
        base = ctypes.addressof(self._iocbs)
        self._addr = [base + i * _IOCB.size for i in range(depth)]
        self._ptrs = (ctypes.c_void_p * depth)()
        self._events = ctypes.create_string_buffer(_EVENT.size * depth)
        self._zero = (ctypes.c_long * 2)(0, 0)  # a timespec of 0: never block
        self._free = list(range(depth))
        self._callbacks: list[Done | None] = [None] * depth
        self._ready: list[int] = []  # slots filled, not yet submitted
        self._waiting: deque[tuple[tuple[int, int, int, int, int], Done]] = deque()
        self._flush_soon = False
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self._efd, self._reap)
        self.closed = False
        self.in_flight = 0  # submitted or waiting, not yet called back
        self.started = 0  # requests ever started (tests and stats read it)

    def start(self, opcode: int, fd: int, addr: int, length: int, offset: int,
              done: Done) -> None:  # fmt: skip
        self.in_flight += 1
        self.started += 1
        if self._free:
            self._fill(self._free.pop(), (opcode, fd, addr, length, offset), done)
        else:
            self._waiting.append(((opcode, fd, addr, length, offset), done))

    def submit(self, opcode: int, fd: int, addr: int, length: int, offset: int
               ) -> asyncio.Future[int]:  # fmt: skip
        fut: asyncio.Future[int] = self.loop.create_future()

        def done(res: int) -> None:
            if fut.done():
                return
            if res < 0:
                fut.set_exception(OSError(-res, os.strerror(-res)))
            else:
                fut.set_result(res)

        self.start(opcode, fd, addr, length, offset, done)
        return fut

    def _fill(self, slot: int, io: tuple[int, int, int, int, int], done: Done) -> None:
        opcode, fd, addr, length, offset = io
        _IOCB.pack_into(self._iocbs, slot * _IOCB.size, slot, 0, 0, opcode, 0, fd, addr,
                        length, offset, 0, _IOCB_FLAG_RESFD, self._efd)  # fmt: skip
        self._callbacks[slot] = done
        self._ready.append(slot)
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """One ``io_submit`` for every request of this loop turn."""
        self._flush_soon = False
        ready, self._ready = self._ready, []
        ptrs, addr = self._ptrs, self._addr
        while ready:
            for i, slot in enumerate(ready):
                ptrs[i] = addr[slot]
            n = _syscall(_SYS_IO_SUBMIT, self._ctx, ctypes.c_long(len(ready)), ptrs)
            if n < 0:
                e = ctypes.get_errno()
                if e == errno.EINTR:
                    continue
                # the first request was refused (EBADF, EINVAL, ...): it fails alone
                with self._batch:
                    self._finish(ready[0], -e)
                ready = ready[1:]
                continue
            ready = ready[n:]

    def _reap(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        events = self._events
        with self._batch:
            while True:
                n = _syscall(_SYS_IO_GETEVENTS, self._ctx, ctypes.c_long(0),
                             ctypes.c_long(self.depth), events, self._zero)  # fmt: skip
                if n <= 0:
                    return
                for i in range(n):
                    slot, _, res, _ = _EVENT.unpack_from(events, i * _EVENT.size)
                    self._finish(slot, res)
                if n < self.depth:
                    return

    def _finish(self, slot: int, res: int) -> None:
        done = self._callbacks[slot]
        self._callbacks[slot] = None
        if self._waiting:
            io, waiter = self._waiting.popleft()
            self._fill(slot, io, waiter)
        else:
            self._free.append(slot)
        if done is None:
            return
        self.in_flight -= 1
        try:
            done(res)
        except Exception:  # one request's bug must not strand the others reaped with it
            log.exception("AIO completion callback failed")

    def close(self) -> None:
        """After every request has completed (the worker drains before it closes)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self._efd)
        os.close(self._efd)
        _syscall(_SYS_IO_DESTROY, self._ctx)


class BufferPool:
    """Recycled page-aligned buffers (as O_DIRECT needs), with their addresses for AIO.

    A buffer that is taken must come back by ``give`` (to be reused) or ``drop`` (when
    something else still holds it, e.g. a transport's write buffer): the pool keeps each
    buffer's ctypes export while it knows the address, and an export that is never released
    keeps the mapping alive forever."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep  # buffers kept per size
        self._free: dict[int, list[mmap.mmap]] = {}
        self._addresses: dict[int, tuple[Any, int]] = {}  # id(buffer): (its export, address)

    def take(self, size: int) -> mmap.mmap:
        size = max(ALIGN, -(-size // ALIGN) * ALIGN)
        free = self._free.get(size)
        return free.pop() if free else mmap.mmap(-1, size)

    def address(self, buf: mmap.mmap) -> int:
        """Where ``buf`` is in memory (for AIO), kept while the pool keeps the buffer."""
        known = self._addresses.get(id(buf))
        if known is None:
            known = self._addresses[id(buf)] = address(buf)
        return known[1]

    def give(self, buf: mmap.mmap) -> None:
        free = self._free.setdefault(len(buf), [])
        if len(free) < self.keep:
            free.append(buf)
        else:
            self.drop(buf)

    def drop(self, buf: mmap.mmap) -> None:
        """Forget ``buf``: its export goes, so the mapping is freed with its last reference."""
        self._addresses.pop(id(buf), None)
