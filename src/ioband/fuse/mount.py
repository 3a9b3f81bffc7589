"""The daemon's side of a FUSE mount: it starts the worker process, turns the worker's admission
requests into core requests, and tells the worker when the core releases each one.

A worker that dies leaves a dead mount: it is detached and a new worker started (a few times a
minute at most), so that the mount keeps serving. Requests the dead worker had in the core are
completed at once, so they hold no slot of the device's io_limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ioband.core.request import ISSUED, Request, Submitter
from ioband.errors import IobandError
from ioband.fuse import channel
from ioband.fuse.stale import clear_stale_mount, detach, mounted_at

if TYPE_CHECKING:
    from ioband.core.model import Device
    from ioband.runtime import Runtime

log = logging.getLogger("ioband.fuse")

START_TIMEOUT = 15.0  # seconds for a worker to mount
RESTARTS_PER_MINUTE = 5
MAX_OWNERS = 4096  # submitters remembered per mount (then forgotten all at once)


@dataclass(frozen=True)
class WorkerSettings:
    """The daemon's settings a FUSE worker is started with (``[daemon]`` keys)."""

    cgroup_hierarchy: str = "auto"
    io_threads: int = 16


@dataclass(frozen=True)
class MountOptions:
    mountpoint: str
    direct: bool = False
    read_only: bool = False
    control: bool = True
    writeback_cache: bool = False
    write_behind: bool = True


class WorkerChannel(asyncio.Protocol):
    """One worker's admission channel, seen from the daemon: a front end like an NBD connection
    (the driver calls ``start_io`` and ``admitted``)."""

    def __init__(self, mount: FuseMount) -> None:
        self.mount = mount
        self.runtime = mount.runtime
        self.driver = mount.runtime.driver
        self.transport: asyncio.Transport | None = None
        self.decoder = channel.Decoder((channel.SUBMIT, channel.DONE, channel.READY))
        self.requests: dict[int, Request] = {}
        # Submitters by (pid, pgrp, uid, gid, cgroup, cgroup path): the same few callers send
        # most requests, and making a Submitter costs more than the engine's decision does.
        self.owners: dict[tuple[tuple[int, ...], str | None], Submitter] = {}
        self.out = channel.Outbox()
        self.flushing = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        error: channel.ChannelError | None = None
        try:
            batches = self.decoder.feed(data)
        except channel.ChannelError as err:
            error, batches = err, err.decoded  # what came before the fault still counts
        flushing, self.flushing = self.flushing, True  # the ISSUEs go out below, not later
        with self.driver:  # the records of one read: one pump
            for kind, entries in batches:
                if kind == channel.SUBMIT:
                    error = self._submit(entries) or error
                elif kind == channel.DONE:
                    self._done(entries)
        self._flush()
        self.flushing = flushing  # a flush already scheduled still runs, and resets it
        if error is not None:
            log.error("%s: %s; restarting the worker", self.mount.name, error)
            self.closed = True  # what the core releases from now on is done (see start_io)
            self.transport.close()

    def _submit(self, entries: list[tuple]) -> channel.ChannelError | None:
        driver = self.driver
        device = self.mount.device
        requests = self.requests
        cgroup_paths = self.runtime.cgroup_paths
        owners = self.owners
        for entry in entries:
            flags, tag, offset, length = entry[:4]
            if device.removed:  # the mount is going: what is still asked for just runs
                self.out.tag(channel.ISSUE, tag)
                continue
            if tag in requests:  # the worker's bug; the request it had is not lost
                return channel.ChannelError(f"SUBMIT tag {tag}: already in flight", [])
            path = None
            if (device.by_path or device.type_name == "cgroup") and cgroup_paths is not None:
                # groups by path, rules, and (mclock) parents from the cgroup nesting
                path = cgroup_paths.path_of(entry[8])
            key = (entry[4:], path)
            owner = owners.get(key)
            if owner is None:
                if len(owners) >= MAX_OWNERS:
                    owners.clear()
                pid, pgrp, uid, gid, cgroup = entry[4:]
                owner = owners[key] = Submitter(pid, pgrp, uid, gid, cgroup, cgroup_path=path)
            req = Request(flags & channel.FLAG_WRITE != 0, offset, length, owner,
                          sync=flags & channel.FLAG_SYNC != 0, tag=(self, tag))  # fmt: skip
            requests[tag] = req
            driver.submit(device, req)
        return None

    def _done(self, tags: list[int]) -> None:
        pop = self.requests.pop
        complete = self.driver.complete
        for tag in tags:
            req = pop(tag, None)
            if req is not None:
                complete(req)

    def start_io(self, req: Request) -> None:
        """The core released ``req``: the worker may do its I/O."""
        if self.closed:  # the worker is gone: nothing will run it, so it is done
            self.requests.pop(req.tag[1], None)
            self.driver.complete(req)
            return
        self.out.tag(channel.ISSUE, req.tag[1])
        if not self.flushing:
            self.flushing = True
            self.runtime.loop.call_soon(self._flush)

    def admitted(self, req: Request) -> None:
        """The submitter of a FUSE request is already asleep in its system call: nothing to do."""

    def _flush(self) -> None:
        self.flushing = False
        if self.out:
            data = self.out.take()
            if not self.closed and self.transport is not None:
                self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        with self.driver:
            for req in list(self.requests.values()):
                if req.state == ISSUED:
                    self.driver.complete(req)
        # Held and waiting requests complete when the core releases them (start_io above).
        self.mount.worker_gone()


class FuseMount:
    """An ioband device over a directory, mounted with FUSE by a worker process."""

    def __init__(self, runtime: Runtime, name: str, device: Device, backing: str,
                 options: MountOptions, worker: WorkerSettings) -> None:  # fmt: skip
        self.runtime = runtime
        self.worker = worker
        self.name = name
        self.device = device
        self.backing = backing
        self.options = options
        self.mountpoint = os.path.abspath(options.mountpoint)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: tempfile._TemporaryFileWrapper[bytes] | None = None  # the worker's stderr
        self.channel: WorkerChannel | None = None
        self.stopping = False
        self.restarts: list[float] = []

    # -- the worker --------------------------------------------------------------------------
    def _argv(self, fd: int) -> list[str]:
        o = self.options
        argv = [sys.executable, "-m", "ioband.fuse.worker", "--name", self.name,
                "--backing", self.backing, "--mountpoint", self.mountpoint,
                "--channel-fd", str(fd if o.control else -1),
                "--cgroup-hierarchy", self.worker.cgroup_hierarchy,
                "--threads", str(self.worker.io_threads),
                "--parent-pid", str(os.getpid())]  # fmt: skip
        for flag, on in (("--direct", o.direct), ("--read-only", o.read_only),
                         ("--writeback-cache", o.writeback_cache),
                         ("--no-write-behind", not o.write_behind)):  # fmt: skip
            if on:
                argv.append(flag)
        return argv

    def start(self) -> None:
        """Start the worker and wait until it has mounted (errors name the mount point)."""
        try:
            clear_stale_mount(self.mountpoint)
        except OSError as err:
            if err.errno == errno.EBUSY:
                raise IobandError(f"mountpoint {self.mountpoint!r}: {err.strerror}",
                                  errno_name="EBUSY") from None  # fmt: skip
        if not os.path.isdir(self.mountpoint):
            raise IobandError(f"mountpoint {self.mountpoint!r} is not a directory",
                              errno_name="ENOTDIR")  # fmt: skip
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(os.environ)
            src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
            if self.log is not None:
                self.log.close()
            # kept open for the life of the worker: its stderr
            self.log = tempfile.TemporaryFile(prefix=f"ioband-fuse-{self.name}-")  # noqa: SIM115
            self.proc = subprocess.Popen(
                self._argv(theirs.fileno()), pass_fds=(theirs.fileno(),), env=env,
                stdin=subprocess.DEVNULL, stderr=self.log, start_new_session=True,
            )  # fmt: skip
            theirs.close()
            self._wait_ready(ours)
        except BaseException:
            theirs.close()
            ours.close()
            self._kill()
            raise
        ours.setblocking(False)
        self.channel = WorkerChannel(self)
        if self.options.control:
            self.runtime.loop.create_task(self._connect(ours))
        else:
            ours.close()
            self.runtime.loop.create_task(self._watch_uncontrolled())
        log.info("%s: %s mounted at %s (worker pid %d)", self.name, self.backing,
                 self.mountpoint, self.proc.pid)  # fmt: skip

    def _wait_ready(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        proc = self.proc
        while True:
            if not self.options.control:  # no channel: wait for the mount to appear
                if mounted_at(self.mountpoint) == "fuse.ioband":
                    return
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
                continue
            left = deadline - time.monotonic()
            ready, _, _ = select.select([sock], [], [], max(0.0, left))
            if not ready:
                break
            data = sock.recv(len(channel.READY_RECORD))
            if data == channel.READY_RECORD:
                return
            break  # EOF or garbage: the worker failed
        self._kill()
        why = self._stderr() or "the FUSE worker did not start"
        raise IobandError(f"cannot mount {self.backing!r} at {self.mountpoint!r}: {why}",
                          errno_name="EIO")  # fmt: skip

    async def _connect(self, sock: socket.socket) -> None:
        await self.runtime.loop.create_unix_connection(lambda: self.channel, sock=sock)

    async def _watch_uncontrolled(self) -> None:
        while not self.stopping and self.proc is not None and self.proc.poll() is None:
            await asyncio.sleep(0.5)
        if not self.stopping:
            self.worker_gone()

    def worker_gone(self) -> None:
        """The worker exited (or crashed): clean its mount and start another."""
        if self.stopping:
            return
        proc = self.proc
        code = proc.poll() if proc is not None else None
        if proc is not None and code is None:
            self._kill()
            code = proc.returncode
        err = self._stderr()
        log.error("%s: FUSE worker exited (%s)%s", self.name, code, f": {err}" if err else "")
        with contextlib.suppress(OSError):
            clear_stale_mount(self.mountpoint)
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        if len(self.restarts) > RESTARTS_PER_MINUTE:
            log.error("%s: the FUSE worker keeps failing: not restarted", self.name)
            return
        try:
            self.start()
        except IobandError as e:
            log.error("%s: cannot restart the FUSE worker: %s", self.name, e)

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            if mounted_at(self.mountpoint) == "fuse.ioband":
                detach(self.mountpoint)

    async def stop(self, timeout: float = 30.0) -> None:
        """Unmount: the worker answers what it has in flight, unmounts and exits."""
        self.stopping = True
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
        loop = self.runtime.loop
        deadline = loop.time() + timeout
        while proc.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            log.error("%s: the FUSE worker did not stop in %.0f s: killed", self.name, timeout)
        self._kill()
        err = self._stderr()
        if err:
            log.warning("%s: FUSE worker: %s", self.name, err)
        if self.log is not None:
            self.log.close()
            self.log = None

    def _stderr(self) -> str:
        """What the worker wrote to its stderr (the reason it failed), the last 4 KiB."""
        if self.log is None:
            return ""
        self.log.flush()
        size = self.log.seek(0, os.SEEK_END)
        self.log.seek(max(0, size - 4096))
        return self.log.read().decode(errors="replace").strip()
