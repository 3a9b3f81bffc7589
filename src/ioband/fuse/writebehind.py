"""Delayed writes in user space, charged to their writer and paced by its share.

With blkio-cgroup, a buffered write returned once the page was dirty; the page remembered its
owner, and when dm-ioband held the owner's writeback, the owner's next dirtying blocked. FUSE's
own writeback cache cannot do that: the kernel's dirty throttling paces every writer of a mount
alike, whatever ioband does with the writeback (see docs/deviations.md). So ioband delays
buffered writes itself: ``write`` answers at once and the backing write waits for the core's
admission, charged to the file's opener. Each open file may have ``limit`` bytes outstanding;
beyond that its writer waits, so a writer goes at the pace the core gives its group.

Consistency: writes to overlapping ranges reach the backing file in the order they were made;
reads of a range wait for the delayed writes that overlap it; fsync, close (flush) and truncation
wait for them all; a failed delayed write is reported by the file's next write, fsync or close,
as the kernel reports writeback errors.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable

LIMIT = 32 << 20  # bytes of delayed writes per open file before its writer waits


class Range:
    __slots__ = ("done", "end", "start")

    def __init__(self, start: int, end: int, done: asyncio.Future[None]) -> None:
        self.start = start
        self.end = end
        self.done = done


class FileState:
    """Per open file: what it has outstanding and the first error not yet reported."""

    __slots__ = ("error", "outstanding", "waiter")

    def __init__(self) -> None:
        self.outstanding = 0
        self.error: OSError | None = None
        self.waiter: asyncio.Future[None] | None = None


class WriteBehind:
    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.ranges: dict[object, list[Range]] = {}  # inode -> delayed writes in flight
        self.files: dict[object, FileState] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def _file(self, handle: object) -> FileState:
        state = self.files.get(handle)
        if state is None:
            state = self.files[handle] = FileState()
        return state

    def take_error(self, handle: object) -> OSError | None:
        state = self.files.get(handle)
        if state is None or state.error is None:
            return None
        err, state.error = state.error, None
        return err

    async def write(
        self,
        inode: object,
        handle: object,
        offset: int,
        length: int,
        perform: Callable[[], Awaitable[int]],
    ) -> None:
        """Accept a write of ``length`` bytes at ``offset``; ``perform`` (admission and the
        backing write) runs later, after every earlier write that overlaps it."""
        state = self._file(handle)
        while state.outstanding and state.outstanding + length > self.limit:
            state.waiter = asyncio.get_running_loop().create_future()
            await state.waiter
        end = offset + length
        ranges = self.ranges.setdefault(inode, [])
        before = [r.done for r in ranges if r.start < end and offset < r.end]
        mine = Range(offset, end, asyncio.get_running_loop().create_future())
        ranges.append(mine)
        state.outstanding += length
        task = asyncio.get_running_loop().create_task(
            self._later(inode, state, mine, length, before, perform)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _later(self, inode: object, state: FileState, mine: Range, length: int,
                     before: list[asyncio.Future[None]], perform: Callable[[], Awaitable[int]]
                     ) -> None:  # fmt: skip
        try:
            if before:
                await asyncio.wait(before)
            written = await perform()
            if written < length and state.error is None:
                state.error = OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            if state.error is None:
                state.error = err
        except Exception as err:  # never lose the fact that the data did not land
            if state.error is None:
                state.error = OSError(errno.EIO, f"delayed write failed: {err!r}")
        finally:
            ranges = self.ranges[inode]
            ranges.remove(mine)
            if not ranges:
                del self.ranges[inode]
            mine.done.set_result(None)
            state.outstanding -= length
            waiter, state.waiter = state.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def settle(self, inode: object, start: int = 0, end: int | None = None) -> None:
        """Wait for the delayed writes of ``inode`` that overlap [start, end) (all of them by
        default), including any made meanwhile."""
        while True:
            pending = [r.done for r in self.ranges.get(inode, ())
                       if end is None or (r.start < end and start < r.end)]  # fmt: skip
            if not pending:
                return
            await asyncio.wait(pending)

    def size_hint(self, inode: object) -> int:
        """The end of the furthest delayed write: the file's size once they land."""
        return max((r.end for r in self.ranges.get(inode, ())), default=0)

    def forget(self, handle: object) -> None:
        self.files.pop(handle, None)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.wait(list(self.tasks))
