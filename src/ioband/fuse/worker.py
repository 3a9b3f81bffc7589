"""The process that serves one FUSE mount: ``python -m ioband.fuse.worker`` (started by the
daemon, never by hand).

pyfuse3 allows one mount per process, so each mount gets a worker of its own. The worker runs the
passthrough file system on an asyncio (uvloop) loop, asks the daemon over the admission channel
before each read or write, and does the backing-store I/O in its own threads. When the daemon
goes away (its end of the channel closes) the worker lets every waiting request through, unmounts
and exits, so that a dead daemon leaves no mount behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from ioband.aio import Aio
from ioband.aio import available as aio_available
from ioband.cgroup.proc import find_hierarchy
from ioband.core.request import Submitter
from ioband.fuse import channel
from ioband.fuse.passthrough import Passthrough, Unlimited
from ioband.fuse.stale import clear_stale_mount, mount_entry
from ioband.nbd.iopool import IoPool

log = logging.getLogger("ioband.fuse")


READAHEAD_KB = 4096
IDLE_TASKS = 4
MAX_BACKGROUND = 2048


def tune_mount(mountpoint: str, readahead_kb: int, max_background: int) -> None:
    """Two kernel limits of a FUSE mount that cap throughput, raised as root:

    - readahead: 128 KiB by default, which allows one or two 128 KiB reads in flight; a larger
      window lets sequential reads go as 1 MiB requests, several at once (it stays adaptive:
      random reads do not grow it);
    - max_background: 12 asynchronous requests (readahead, writeback) by default. The core can
      only arbitrate between requests it holds, so more must reach it than io_limit lets through.
    """
    entry = mount_entry(mountpoint)
    if entry is None:
        return
    _write(f"/sys/class/bdi/{entry[1]}/read_ahead_kb", readahead_kb)
    connections = "/sys/fs/fuse/connections"
    if os.path.isdir(connections) and not os.listdir(connections):
        # the FUSE control file system, which systemd normally mounts
        subprocess.run(["mount", "-t", "fusectl", "fusectl", connections], check=False,
                       capture_output=True)  # fmt: skip
    conn = f"{connections}/{entry[1].partition(':')[2]}"
    _write(f"{conn}/max_background", max_background)
    _write(f"{conn}/congestion_threshold", max_background * 3 // 4)


def _write(path: str, value: int) -> None:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as err:
        log.warning("cannot set %s: %s", path, err)


class ChannelClient(asyncio.Protocol):
    """The worker's end of the admission channel (implements ``Admission``)."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.decoder = channel.Decoder((channel.ISSUE,))
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.next_tag = 1
        self.out = channel.Outbox()
        self.flush_pending = False
        self.lost = False
        self.on_lost = on_lost
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            batches = self.decoder.feed(data)
        except channel.ChannelError as err:  # the daemon is broken: served as if it were gone
            log.error("%s; serving without control", err)
            batches = err.decoded
            self.lost = True  # nothing more is asked or sent
            self.transport.close()  # connection_lost lets every waiting request through
        waiting = self.waiting
        for _, tags in batches:  # ISSUE only: the decoder accepts nothing else
            for tag in tags:
                fut = waiting.pop(tag, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for fut in self.waiting.values():  # the daemon is gone: nobody to ask any more
            if not fut.done():
                fut.set_result(None)
        self.waiting.clear()
        self.on_lost()

    def _flush_soon(self) -> None:
        """What this loop turn adds to the outbox goes in one write, at the turn's end."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_pending = False
        data = self.out.take()
        if data and not self.lost and self.transport is not None:
            self.transport.write(data)

    async def begin(self, write: bool, sync: bool, offset: int, length: int,
                    owner: Submitter) -> int:  # fmt: skip
        if self.lost:
            return 0
        tag = self.next_tag
        self.next_tag = tag + 1 if tag < channel.MAX_TAG else 1
        fut = self.loop.create_future()
        self.waiting[tag] = fut
        self.out.submit(tag, write, sync, offset, length, owner.pid, owner.pgrp, owner.uid,
                        owner.gid, owner.cgroup)  # fmt: skip
        self._flush_soon()
        await fut
        return tag

    def end(self, token: int) -> None:
        if token and not self.lost:
            self.out.tag(channel.DONE, token)
            self._flush_soon()

    def ready(self) -> None:
        self.out.ready()
        self._flush_soon()


class _NoLock:
    """pyfuse3's read lock, made free: ``Intake`` lets any number of tasks wait at once."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class Intake:
    """How the worker takes requests from /dev/fuse.

    pyfuse3 lets one task at a time wait for its descriptor under a lock, and that wait, on
    asyncio, registers the descriptor with epoll and removes it again: per request two
    ``epoll_ctl`` calls, a lock hand-over and a loop turn, one request taken per turn. Here a
    task first asks with a zero-timeout ``poll`` (one system call) and, when a request is
    queued, takes it at once. Only when nothing is queued does it wait on the loop, all
    waiting tasks behind one registration; a readable descriptor wakes one of them, and each
    task that finds a request wakes two more, so a burst is taken in a few turns (and its
    admission records and AIO submissions go out together) while a lone request wakes one or
    three tasks, not all. Each woken task asks again before it reads, so none blocks the loop
    on an empty queue (pyfuse3 reads right after the wait, with no ``await`` between).
    pyfuse3 waits on no other descriptor.
    """

    FAN_OUT = 2

    def __init__(self) -> None:
        import select

        self._select = select
        self._poller: Any = None
        self._on_loop: asyncio.Future[None] | None = None  # the one wait on the loop
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closing = False

    def install(self) -> None:
        import pyfuse3.asyncio

        wait_on_loop = pyfuse3.asyncio.wait_readable

        def readable(done: asyncio.Future[None]) -> None:
            self._on_loop = None
            if done.cancelled() or done.exception() is not None:  # closing: all stop waiting
                error = None if done.cancelled() else done.exception()
                waiters, self._waiters = self._waiters, deque()
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(error) if error else fut.cancel()
                return
            self._wake(1)

        async def wait_readable(fd: Any) -> None:
            if self._poller is None:
                self._poller = self._select.poll()
                self._poller.register(fd, self._select.POLLIN)
            while not self._poller.poll(0):
                if self._closing:  # pyfuse3 is stopping: no new wait that nobody would end
                    raise pyfuse3.asyncio.ClosedResourceError()
                if self._on_loop is None:
                    self._on_loop = asyncio.ensure_future(wait_on_loop(fd))
                    self._on_loop.add_done_callback(readable)
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                try:
                    await fut
                finally:
                    if not fut.done():
                        with contextlib.suppress(ValueError):
                            self._waiters.remove(fut)
            self._wake(self.FAN_OUT)

        notify_on_loop = pyfuse3.asyncio.notify_closing

        def notify_closing(fd: Any) -> None:
            """pyfuse3.terminate(): every waiting task stops, even one woken but not yet run
            (then nobody waits on the loop for pyfuse3 to wake)."""
            self._closing = True
            notify_on_loop(fd)
            waiters, self._waiters = self._waiters, deque()
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(pyfuse3.asyncio.ClosedResourceError())

        # what pyfuse3 calls (as trio.lowlevel's)
        pyfuse3.asyncio.wait_readable = wait_readable
        pyfuse3.asyncio.notify_closing = notify_closing
        pyfuse3.asyncio.Lock = _NoLock  # taken when pyfuse3.main() first waits

    def _wake(self, n: int) -> None:
        waiters = self._waiters
        while n and waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1


def make_runner(pool: IoPool) -> Callable[..., Any]:
    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        pool.submit(fn, args, done)
        return await fut

    return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ioband.fuse.worker")
    p.add_argument("--name", required=True)
    p.add_argument("--backing", required=True)
    p.add_argument("--mountpoint", required=True)
    p.add_argument("--channel-fd", type=int, default=-1, help="-1: no control (stand-alone)")
    p.add_argument("--cgroup-hierarchy", default="auto")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--tasks", type=int, default=2048, help="FUSE requests served at once")
    p.add_argument("--idle-tasks", type=int, default=IDLE_TASKS,
                   help="FUSE tasks kept waiting for requests")  # fmt: skip
    p.add_argument("--direct", action="store_true")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--writeback-cache", action="store_true")
    p.add_argument("--no-write-behind", action="store_true")
    p.add_argument("--no-aio", action="store_true", help="O_DIRECT I/O in threads, not by AIO")
    p.add_argument("--no-fast-intake", action="store_true", help="pyfuse3's own fd wait")
    p.add_argument("--readahead-kb", type=int, default=READAHEAD_KB)
    p.add_argument("--max-background", type=int, default=MAX_BACKGROUND)
    p.add_argument("--parent-pid", type=int, default=0, help="the daemon: exit when it dies")
    p.add_argument("--debug", action="store_true")
    return p


async def serve(args: argparse.Namespace) -> None:
    import pyfuse3
    import pyfuse3.asyncio

    pyfuse3.asyncio.enable()
    loop = asyncio.get_running_loop()
    pool = IoPool(loop, args.threads)
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            pyfuse3.terminate()

    intake = Intake()
    admission: Any = Unlimited()
    client: ChannelClient | None = None
    if args.channel_fd >= 0:
        sock = socket.socket(fileno=args.channel_fd)
        client = ChannelClient(stop)
        await loop.create_unix_connection(lambda: client, sock=sock)
        admission = client
    try:
        hierarchy = find_hierarchy(args.cgroup_hierarchy)
    except Exception:
        hierarchy = None
    aio_context = None
    if not args.no_aio and aio_available():
        try:
            aio_context = Aio(loop)
        except OSError as err:  # fs.aio-max-nr used up by others: threads, as before
            log.warning("no AIO context (%s): O_DIRECT I/O goes to threads", err)
    ops = Passthrough(
        args.backing,
        admission=admission,
        run_blocking=make_runner(pool),
        hierarchy=hierarchy,
        direct=args.direct,
        read_only=args.read_only,
        writeback_cache=args.writeback_cache,
        write_behind=not args.no_write_behind,
        aio_context=aio_context,
        # after the kernel has taken the INIT reply, which would lower it again
        on_init=lambda: loop.call_soon(
            tune_mount, args.mountpoint, args.readahead_kb, args.max_background
        ),
    )
    options = set(pyfuse3.default_options)
    options |= {"allow_other", f"fsname=ioband:{args.name}", "subtype=ioband"}
    if args.debug:
        options.add("debug")
    clear_stale_mount(args.mountpoint)
    pyfuse3.init(ops, args.mountpoint, options)
    if not args.no_fast_intake:
        intake.install()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if client is not None:
        client.ready()
        if client.lost:
            stop()
    try:
        await pyfuse3.main(min_tasks=args.idle_tasks, max_tasks=args.tasks)
        if ops.behind is not None:  # delayed writes already answered land before the exit
            await ops.behind.drain()
    finally:
        pyfuse3.close(unmount=True)
        pool.close()
        if aio_context is not None:
            aio_context.close()


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the daemon dies, even without an admission channel to notice it by."""
    import ctypes
    import ctypes.util

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the daemon died before we got here
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format=f"ioband-fuse[{args.name}]: %(message)s")  # fmt: skip
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    os.umask(0)  # modes arrive with the caller's umask applied
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one O_PATH fd per inode
    from ioband.eventloop import new_event_loop

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(args))
    except (OSError, RuntimeError) as err:
        print(f"ioband-fuse[{args.name}]: cannot serve {args.mountpoint}: {err}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
