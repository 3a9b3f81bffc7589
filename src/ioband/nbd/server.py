"""The NBD front end: every ioband device is an export; every request passes through the core.

A thin adapter (PRODUCT.md §2): the sans-I/O codec (``protocol``) parses the wire, each command
becomes a core ``Request`` carrying the identity of the connection's peer, the core decides when
it runs, worker threads do the backing-store I/O, and the reply goes back when it completes.
A request the core makes wait (its "submitter" would sleep in the kernel) holds back the
connection's later commands until the core admits it: backpressure, as dm-ioband put the process
to sleep. They are still read (up to ``MAX_INFLIGHT_PER_CONNECTION`` commands), stamped with
their arrival and kept in order, so that the time they wait counts in their latency.
BLOCK_STATUS alone is no I/O and bypasses the core (``Connection._block_status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno as errnos
import grp
import ipaddress
import logging
import mmap
import os
import resource
import socket
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

from ioband.access import OPEN, Access, Peer
from ioband.aio import ALIGN
from ioband.aio import PREAD as AIO_READ
from ioband.aio import PWRITE as AIO_WRITE
from ioband.cgroup.proc import Hierarchy, identity, peer_cgroup, peer_credentials, peer_groups
from ioband.core.request import WAITING, Request, Submitter
from ioband.errors import ConfigError, unusable_path
from ioband.logutil import LogLimiter
from ioband.nbd import protocol as nbd
from ioband.nbd import tls
from ioband.nbd.backing import Backing
from ioband.nbd.replies import nbd_error

if TYPE_CHECKING:
    from ioband.aio import Aio
    from ioband.core.model import Device
    from ioband.runtime import Runtime

log = logging.getLogger("ioband.nbd")

READ, WRITE, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS = (
    int(nbd.CMD_READ), int(nbd.CMD_WRITE), int(nbd.CMD_FLUSH), int(nbd.CMD_TRIM),
    int(nbd.CMD_CACHE), int(nbd.CMD_WRITE_ZEROES), int(nbd.CMD_BLOCK_STATUS),
)  # fmt: skip
MAX_INFLIGHT_PER_CONNECTION = 512  # beyond this, stop reading from the socket
MAX_BLOCK_STATUS = 2  # BLOCK_STATUS requests of one connection in the I/O pool at once
SEND_BUFFER = 4 << 20
#: File descriptors kept for everything but NBD connections (control socket, backing stores,
#: FUSE workers, I/O threads): ``nbd.max_connections`` is lowered to fit the limit.
FD_RESERVE = 512


class NbdSettings(tls.TlsSettings, Protocol):
    """The ``[nbd]`` keys the server is configured by (the daemon's ``Config`` has them)."""

    @property
    def socket_mode(self) -> int: ...
    @property
    def socket_group(self) -> str | None: ...
    @property
    def socket_group_required(self) -> bool: ...
    @property
    def handshake_timeout(self) -> float: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def max_connections_per_uid(self) -> int: ...


@dataclass
class Export:
    """An ioband device seen by NBD clients."""

    name: str
    device: Device
    backing: Backing
    size: int
    info: nbd.ExportInfo
    control: bool = True  # False: bypass the scheduler
    access: Access = OPEN  # who may connect, read-write or read-only
    connections: set[Connection] = field(default_factory=set)
    info_ro: nbd.ExportInfo = field(init=False)  # what a read-only peer is offered

    def __post_init__(self) -> None:
        self.info_ro = dataclasses.replace(self.info, read_only=True)


#: Group types that need the peer process: a TCP connection cannot be resolved to them.
PROCESS_TYPES = frozenset({"pid", "pgrp", "user", "uid", "gid", "cgroup"})


def client_id_of(address: str) -> int:
    """The ``client`` group id of a TCP peer: its IPv4 address as an integer, top bit cleared
    so that it fits the 0..INT_MAX range of group ids (IPv6: the low 31 bits)."""
    try:
        packed = socket.inet_pton(socket.AF_INET, address)
    except OSError:
        packed = socket.inet_pton(socket.AF_INET6, address)[-4:]
    return int.from_bytes(packed, "big") & 0x7FFFFFFF


def peer_identity(sock: socket.socket, hierarchy: Hierarchy | None) -> tuple[Peer, Submitter]:
    """Who is at the other end, for access rules and for classification: SO_PEERCRED,
    SO_PEERGROUPS and /proc on a unix socket; the address on TCP."""
    if sock.family == socket.AF_UNIX:
        pid, uid, gid = peer_credentials(sock)
        gids = peer_groups(sock, pid) | {gid}
        path = peer_cgroup(sock, pid, hierarchy)
        peer = Peer(uid=uid, gids=gids, cgroup=path, pid=pid)
        return peer, identity(pid, uid, gid, hierarchy, client=pid, path=path)
    host = sock.getpeername()[0]
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 client of a dual-stack listener
    return Peer(address=address), Submitter(client=client_id_of(host))


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: NbdServer) -> None:
        self.server = server
        self.runtime = server.runtime
        self.driver = server.runtime.driver
        self.transport: asyncio.Transport | None = None
        self.codec: nbd.ServerConnection | None = None
        self.owner: Submitter = Submitter()
        self.peer = Peer()
        self.counted = False  # in the server's connection counts
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.export: Export | None = None
        self.inflight = 0  # commands received and not yet answered
        self.answered = 0  # commands answered, scheduled or not (``ioband demo`` counts them)
        self.waiting: Request | None = None  # the core made this request's submitter sleep
        # commands read while a request waits, with their arrival (the engine's clock), in order
        self.deferred: deque[tuple[nbd.Command, int]] = deque()
        self.reading = True
        self.write_paused = False
        self.closing = False  # DISC received or protocol error: close once drained
        self.closed = False
        self.tcp = False
        self.upgrading = False  # STARTTLS acknowledged, TLS handshake not over: hands off
        self._tls_task: asyncio.Task[None] | None = None
        # The event loop's TLS transport cannot half-close (it warns, and closes); plain
        # sockets and ioband.nbd.tls.TlsLayer can.
        self._half_close = True
        self._corked: list[bytes | memoryview] | None = None

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        self.tcp = sock.family != socket.AF_UNIX
        try:
            self.peer, self.owner = peer_identity(sock, self.runtime.hierarchy)
        except (OSError, ValueError) as err:
            log.warning("cannot identify NBD peer: %s", err)
        if not self.server.admit(self):
            self.closed = True
            transport.abort()
            return
        self._handshake_timer = asyncio.get_running_loop().call_later(
            self.server.handshake_timeout, self._handshake_expired
        )
        if self.tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Room for a whole large read reply: the kernel takes it in one write, without the
        # event loop buffering (copying) what did not fit.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.codec = nbd.ServerConnection(
            lambda name: self.server.export_info(name, self),
            self.server.export_names,
            tls=self.server.tls_mode(self.tcp),
        )
        self._send(self.codec.data_to_send())
        self.server.connections.add(self)
        log.debug("NBD connection from %s", self.peer.describe())  # ioband daemon -v

    @property
    def writable(self) -> bool:
        """The export was negotiated read-write (the client may send writes)."""
        codec = self.codec
        return codec is not None and codec.export is not None and not codec.export.read_only

    def _handshake_expired(self) -> None:
        """A client that has not chosen an export in time holds a descriptor for nothing."""
        self._handshake_timer = None
        if not self.closed and self.export is None and self.transport is not None:
            server = self.server
            server.limited.log(logging.INFO, ("handshake", server.limit_key(self)),
                               "NBD client %s did not finish its handshake in %g s: closed",
                               self.peer.describe(), server.handshake_timeout)  # fmt: skip
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.codec.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self.closing = True
        self._maybe_close()
        return self._half_close  # half-closed: replies still go out

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.server.release(self)
        self.server.connections.discard(self)
        if self.export is not None:
            self.export.connections.discard(self)
        if self.codec is not None:  # admitted (a refused one was logged as refused)
            log.debug("NBD connection from %s closed: %d request(s) answered%s",
                      self.peer.describe(), self.answered,
                      f" ({exc})" if exc is not None else "")  # fmt: skip
        # Requests already handed to the core still run to completion: nothing is lost, the
        # replies just have nowhere to go.

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    # -- flow control --------------------------------------------------------------------------
    def _update_reading(self) -> None:
        if self.upgrading:  # the TLS handshake owns the socket
            return
        want = (
            not self.closing
            and not self.write_paused
            and self.inflight < MAX_INFLIGHT_PER_CONNECTION
        )
        if want != self.reading and self.transport is not None and not self.closed:
            self.reading = want
            if want:
                self.transport.resume_reading()
                self._process()
            else:
                self.transport.pause_reading()

    def admitted(self, req: Request) -> None:
        """The core admitted a request whose submitter was asleep: read on."""
        if req is self.waiting:
            self.waiting = None
            deferred = self.deferred
            corked = self._cork()
            try:
                while deferred and self.waiting is None:
                    cmd, arrival_ns = deferred.popleft()
                    self.inflight -= 1  # counted again as it is run
                    self._run_command(cmd, arrival_ns)
            finally:
                if corked:
                    self._uncork()
            self._update_reading()
            self._maybe_close()

    def _send(self, data: bytes) -> None:
        if data and not self.closed:
            if self._corked is not None:
                self._corked.append(data)
            else:
                self.transport.write(data)

    def _cork(self) -> bool:
        """Collect replies made while parsing one batch of input; send them in one write."""
        if self._corked is not None:
            return False
        self._corked = []
        return True

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked and not self.closed:
            self.transport.writelines(corked)

    def _maybe_close(self) -> None:
        if self.closing and self.inflight == 0 and not self.closed and self.transport:
            self._send(self.codec.data_to_send())
            if self._corked is not None:
                self._uncork()
            self.transport.close()

    # -- the protocol --------------------------------------------------------------------------
    def _process(self) -> None:
        corked = self._cork()
        try:
            with self.driver:  # the commands of one read: one pump
                self._process_events()
        finally:
            if corked:
                self._uncork()
        if self.upgrading:
            self._start_tls()
            return
        self._update_reading()
        self._maybe_close()

    def _start_tls(self) -> None:
        """After the STARTTLS ACK is queued: stop reading (the ClientHello is not for the
        codec) and hand the socket to the TLS handshake."""
        if self._tls_task is None and not self.closed:
            self.transport.pause_reading()
            self._tls_task = self.runtime.loop.create_task(self._upgrade())

    async def _upgrade(self) -> None:
        peer = self.transport.get_extra_info("peername") or "unix socket peer"
        try:
            self.transport = await tls.upgrade(self.transport, self, self.server.tls)
        except tls.TlsHandshakeError as err:
            log.warning("NBD TLS handshake with %s failed: %s", peer, err)  # once, no traceback
            if not self.closed:
                self.connection_lost(None)
            return
        log.info("NBD TLS session with %s: %s", peer, tls.peer_description(self.transport))
        self._half_close = self.transport.get_extra_info("sslcontext") is None
        self.upgrading = False
        self.reading = True
        self._process()

    def _process_events(self) -> None:
        codec = self.codec
        while not self.closing and not self.upgrading:
            event = codec.next_event()
            out = codec.data_to_send()
            if out:
                self._send(out)
            if event is nbd.NEED_DATA:
                break
            if isinstance(event, nbd.Command):
                self._command(event)
            elif isinstance(event, nbd.Invalid):
                self._send(codec.error_reply(event.cookie, event.error, event.message))
            elif isinstance(event, nbd.ExportChosen):
                if self._handshake_timer is not None:
                    self._handshake_timer.cancel()
                    self._handshake_timer = None
                self.export = self.server.exports[event.name]
                self.export.connections.add(self)
                mode = "read-write" if self.writable else "read-only"
                log.debug("NBD connection from %s: export %r (%s)", self.peer.describe(),
                          event.name, mode)  # fmt: skip
            elif isinstance(event, nbd.StartTls):
                self.upgrading = True
            elif isinstance(event, nbd.Disconnect):
                self.closing = True
            elif isinstance(event, nbd.ProtocolError):
                log.info("NBD protocol error from %s: %s", self.owner, event.reason)
                self.closing = True

    def _command(self, cmd: nbd.Command) -> None:
        if self.waiting is not None or self.deferred:  # behind a waiting request, in order
            self.deferred.append((cmd, self.driver.engine.clock_ns()))
            self.inflight += 1
            return
        self._run_command(cmd)

    def _run_command(self, cmd: nbd.Command, arrival_ns: int = 0) -> None:
        export = self.export
        kind = cmd.kind
        if kind == BLOCK_STATUS:
            self._block_status(cmd)
            return
        length = cmd.length
        fua = cmd.fua
        if kind in (READ, CACHE):
            req = Request(False, cmd.offset, length, self.owner, tag=(self, cmd))
        elif kind == WRITE or (kind == WRITE_ZEROES and cmd.no_hole):
            req = Request(True, cmd.offset, length, self.owner, sync=fua, tag=(self, cmd))
        else:  # FLUSH, TRIM, hole-punching WRITE_ZEROES: metadata, charged as one empty request
            req = Request(True, cmd.offset, 0, self.owner, sync=True, tag=(self, cmd))
        req.arrival_ns = arrival_ns  # 0: it arrives now
        self.inflight += 1
        if export.control:
            self.driver.submit(export.device, req)
            if req.state == WAITING:
                self.waiting = req
        else:
            self.driver.bypass(req)

    # BLOCK_STATUS requests of this connection in the I/O pool, and those waiting for a turn
    # (class-level defaults: most connections never send one).
    _block_status_running = 0
    _block_status_queue: deque[Request] | None = None

    def _block_status(self, cmd: nbd.Command) -> None:
        """BLOCK_STATUS bypasses the core and goes straight to the I/O pool.

        It moves no data to or from the device: it asks the file system for the backing
        file's holes (lseek SEEK_DATA/SEEK_HOLE, a bounded number per request), and
        dm-ioband only ever scheduled bios. Charging it as a request would cost its group
        tokens for I/O that never happens (and skew the status counters and iosize weights),
        and holding it behind the group's queued reads would delay exactly the query that
        lets a client skip reading the holes. It still runs in a worker thread, not on the
        event loop, because lseek may block (cold extent trees, network and FUSE file
        systems); it counts as in flight, so the per-connection cap and draining apply.
        Unscheduled work must not crowd out the scheduled I/O in the shared pool: at most
        ``MAX_BLOCK_STATUS`` of a connection run at once (a 1024-extent reply costs ~2 ms),
        the rest wait their turn in order.
        """
        self.inflight += 1
        req = Request(False, cmd.offset, 0, self.owner, tag=(self, cmd))
        if self._block_status_running < MAX_BLOCK_STATUS:
            self._block_status_running += 1
            self._run_block_status(req)
        else:
            if self._block_status_queue is None:
                self._block_status_queue = deque()
            self._block_status_queue.append(req)

    def _run_block_status(self, req: Request) -> None:
        cmd: nbd.Command = req.tag[1]
        backing = self.export.backing

        def done(result: object, error: BaseException | None) -> None:
            try:
                self.finish(req, result, error)  # not the core's: it only replies
            finally:
                queue = self._block_status_queue
                if queue:
                    self._run_block_status(queue.popleft())
                else:
                    self._block_status_running -= 1

        self.runtime.pool.submit(backing.block_status, (cmd.offset, cmd.length, cmd.req_one), done)

    def start_io(self, req: Request) -> None:
        """The core released ``req``: do its I/O."""
        cmd: nbd.Command = req.tag[1]
        backing = self.export.backing if self.export else None
        if backing is None:  # cannot happen: commands only arrive after an export is chosen
            self.io_done(req, None, OSError(errnos.EIO, "no export"))
            return
        kind = cmd.kind
        if kind == READ:  # the common case first: a page-cached read is answered at once
            data = backing.read_cached(cmd.offset, cmd.length)
            if data is not None:
                self.io_done(req, data, None)
                return
        fua = cmd.fua
        aio = self.runtime.aio
        if (
            aio is not None
            and backing.direct
            and kind <= WRITE
            and not (cmd.offset | cmd.length) % ALIGN
        ):
            if kind == READ:
                self._read_aio(req, aio, backing)
            else:
                self._write_aio(req, aio, backing)
            return
        done: Callable = partial(self.io_done, req)
        pool = self.runtime.pool
        if kind == READ:
            pool.submit(backing.read, (cmd.offset, cmd.length), done)
        elif kind == WRITE:
            pool.submit(backing.write, (cmd.offset, cmd.data, fua), done)
        elif kind == FLUSH:
            pool.submit(backing.flush, (), done)
        elif kind == TRIM:
            pool.submit(backing.trim, (cmd.offset, cmd.length, fua), done)
        elif kind == WRITE_ZEROES:
            may_trim = not cmd.no_hole
            pool.submit(lambda: backing.write_zeroes(cmd.offset, cmd.length, may_trim=may_trim,
                                                     fua=fua), (), done)  # fmt: skip
        elif kind == CACHE:
            pool.submit(backing.cache, (cmd.offset, cmd.length), done)
        else:
            done(None, OSError(errnos.EINVAL, "unsupported command"))

    def _recycle(self, data: object) -> None:
        """A read's buffer that nothing refers to any more: reused by the next read."""
        if isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap):
            self.runtime.buffers.give(data.obj)
        elif self.export is not None:
            self.export.backing.recycle(data)

    def _forget(self, data: object) -> None:
        """A read's buffer that the transport (or a corked reply) still holds."""
        if isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap):
            self.runtime.buffers.drop(data.obj)

    def _read_aio(self, req: Request, aio: Aio, backing: Backing) -> None:
        """An O_DIRECT read by AIO into a pooled aligned buffer (the reply sends a view of it;
        ``finish`` gives it back). A short read (a file that shrank) is done again by a
        thread, which fills past the end with zeros."""
        cmd: nbd.Command = req.tag[1]
        buffers = self.runtime.buffers
        buf = buffers.take(cmd.length)

        def done(res: int) -> None:
            if res == cmd.length:
                self.io_done(req, memoryview(buf)[:res], None)
                return
            buffers.give(buf)
            if res < 0:
                self.io_done(req, None, OSError(-res, os.strerror(-res)))
            else:
                self.runtime.pool.submit(backing.read, (cmd.offset, cmd.length),
                                         partial(self.io_done, req))  # fmt: skip

        aio.start(AIO_READ, backing.fd, buffers.address(buf), cmd.length, cmd.offset, done)

    def _write_aio(self, req: Request, aio: Aio, backing: Backing) -> None:
        """An O_DIRECT write by AIO from a pooled aligned copy of the data; FUA, and the rest
        of a short write, are left to a thread (``fdatasync`` has no AIO form for every file)."""
        cmd: nbd.Command = req.tag[1]
        buffers = self.runtime.buffers
        buf = buffers.take(cmd.length)
        buf[: cmd.length] = cmd.data

        def done(res: int) -> None:
            buffers.give(buf)
            if res < 0:
                self.io_done(req, None, OSError(-res, os.strerror(-res)))
            elif res < cmd.length:
                rest = memoryview(cmd.data)[res:]
                self.runtime.pool.submit(backing.write, (cmd.offset + res, rest, cmd.fua),
                                         partial(self.io_done, req))  # fmt: skip
            elif cmd.fua:
                self.runtime.pool.submit(backing.flush, (), partial(self.io_done, req))
            else:
                self.io_done(req, None, None)

        aio.start(AIO_WRITE, backing.fd, buffers.address(buf), cmd.length, cmd.offset, done)

    def io_done(self, req: Request, result: object, error: BaseException | None) -> None:
        """The I/O of ``req`` is done: the core is told (it may release more), then the
        client."""
        self.driver.complete(req)
        self.finish(req, result, error)

    def finish(self, req: Request, result: object, error: BaseException | None) -> None:
        """The I/O of ``req`` is done (the core already knows): reply."""
        cmd: nbd.Command = req.tag[1]
        self.inflight -= 1
        self.answered += 1
        if self.closed:
            self._recycle(result)  # nothing is sent
        else:
            if error is not None:
                if not isinstance(error, OSError):
                    log.error("I/O failed: %r", error)
                self._send(self.codec.error_reply(cmd.cookie, nbd_error(error), str(error)))
            elif cmd.kind == READ:
                reply = self.codec.read_reply(cmd.cookie, cmd.offset, result)
                if self._corked is not None:
                    self._corked.extend(reply)
                    self._forget(result)
                else:
                    self.transport.writelines(reply)
                    if self.transport.get_write_buffer_size() == 0:  # the kernel took it all
                        self._recycle(result)
                    else:
                        self._forget(result)
            elif cmd.kind == BLOCK_STATUS:
                self._send(self.codec.block_status_reply(cmd.cookie, result))
            else:
                self._send(self.codec.ok_reply(cmd.cookie))
        self._update_reading()
        self._maybe_close()


class NbdServer:
    """Listens on a unix socket and optionally TCP; one ``Connection`` per client.

    Bounded: a client must choose an export within ``handshake_timeout``; at most
    ``max_connections`` connections in all and ``max_connections_per_uid`` per peer user
    (unix socket) or address (TCP). Root's connections on the unix socket are neither counted
    nor refused. Beyond a bound a connection is closed as soon as it is accepted (not left in
    the listen queue, where it would block honest clients behind it), and that is logged.
    """

    def __init__(self, runtime: Runtime, settings: NbdSettings, exports: dict[str, Export],
                 connections: set[Connection]) -> None:  # fmt: skip
        self.runtime = runtime
        self.settings = settings
        self.exports = exports  # the daemon's: it adds and removes them
        self.connections = connections  # every open connection (the daemon drains them)
        self.servers: list[asyncio.AbstractServer] = []
        self.unix_path: str | None = None
        config = settings
        self.handshake_timeout = config.handshake_timeout
        self.max_connections = config.max_connections
        self.max_per_peer = config.max_connections_per_uid
        self.counts: Counter[Hashable] = Counter()  # limit key -> open connections
        self.total = 0
        self.limited = LogLimiter(log)
        self.tls: tls.TlsCredentials | None = None

    def export_info(self, name: str, conn: Connection | None = None) -> nbd.ExportInfo | None:
        """The export for a connection; refused when its device's group type cannot be
        resolved for that connection (never silently classified to the default group)."""
        export = self.exports.get(name)
        if export is None:
            return None
        if conn is None:
            return export.info
        decision = export.access.decide(conn.peer)
        if decision is None:
            self.limited.warn(("denied", name, self.limit_key(conn)),
                              "NBD: export %r refused to %s: not in the device's allow or"
                              " allow_ro rules", name, conn.peer.describe())  # fmt: skip
            raise nbd.ExportRefused(f"access to export {name!r} denied by its allow rules")
        gtype = export.device.type_name
        if conn.tcp and gtype in PROCESS_TYPES:
            raise nbd.ExportRefused(
                f"device {name!r} classifies requests by {gtype!r}, which is unknown for a TCP"
                " client: connect over the unix socket, or use type 'client' or 'none'"
            )
        return export.info if decision == "rw" else export.info_ro

    def export_names(self) -> list[str]:
        return list(self.exports)

    @staticmethod
    def limit_key(conn: Connection) -> Hashable:
        peer = conn.peer
        return ("address", peer.address) if peer.address is not None else ("uid", peer.uid)

    def admit(self, conn: Connection) -> bool:
        """Count a new connection, or refuse it (False) when a bound is reached."""
        if conn.peer.uid == 0:
            return True
        key = self.limit_key(conn)
        if self.total >= self.max_connections or self.counts[key] >= self.max_per_peer:
            self.limited.warn(("limit", key), "NBD: refused a connection from %s: %d open from"
                              " it, %d in all (nbd.max_connections_per_uid = %d,"
                              " nbd.max_connections = %d)", conn.peer.describe(),
                              self.counts[key], self.total, self.max_per_peer,
                              self.max_connections)  # fmt: skip
            return False
        self.counts[key] += 1
        self.total += 1
        conn.counted = True
        return True

    def release(self, conn: Connection) -> None:
        if conn.counted:
            conn.counted = False
            key = self.limit_key(conn)
            self.total -= 1
            self.counts[key] -= 1
            if not self.counts[key]:
                del self.counts[key]

    def _fit_descriptor_limit(self) -> None:
        """Raise the soft descriptor limit toward what the connection bound needs; when the
        hard limit is lower, lower the bound, so that the reserve for root stays free."""
        want = self.max_connections + FD_RESERVE
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
                soft = new
        if soft < want:
            fit = max(16, soft - FD_RESERVE)
            log.warning("nbd.max_connections lowered from %d to %d: the descriptor limit is %d"
                        " (raise it, e.g. LimitNOFILE= in the unit)", self.max_connections, fit,
                        soft)  # fmt: skip
            self.max_connections = fit
            self.max_per_peer = min(self.max_per_peer, fit)

    def tls_mode(self, tcp: bool) -> nbd.TlsMode:
        """``[nbd] tls`` applies to TCP; the unix socket offers TLS when it is on but never
        requires it (its peers are authenticated by SO_PEERCRED)."""
        if self.tls is None:
            return nbd.TlsMode.OFF
        return nbd.TlsMode(self.settings.tls) if tcp else nbd.TlsMode.ON

    async def start(self, unix_path: str | None, tcp: tuple[str, int] | None) -> None:
        loop = asyncio.get_running_loop()
        self._fit_descriptor_limit()
        self.tls = tls.load_credentials(self.settings)  # a bad file refuses the start
        if self.tls is not None:
            log.info("NBD TLS %s: %s", self.settings.tls, self.tls.describe())
        if unix_path:
            sock = self._unix_socket(unix_path)
            server = await loop.create_unix_server(lambda: Connection(self), sock=sock)
            self.unix_path = unix_path
            self.servers.append(server)
        if tcp:
            try:
                server = await loop.create_server(lambda: Connection(self), tcp[0], tcp[1])
            except OSError as err:
                host, port = tcp
                raise ConfigError(
                    self.settings.source, "nbd.tcp",
                    f"cannot listen on {host}:{port}: "
                    f"{os.strerror(err.errno) if err.errno else err}",
                    errnos.errorcode.get(err.errno) if err.errno else None,
                ) from None  # fmt: skip
            self.servers.append(server)

    def _unix_socket(self, path: str) -> socket.socket:
        """The listening socket, owned by root and ``socket_group``, mode ``socket_mode``.

        It is bound under a temporary name with no permissions for others and only then
        renamed into place, so there is no moment when the path accepts anyone it should not.
        """
        config = self.settings
        gid = -1
        if config.socket_group:
            try:
                gid = grp.getgrnam(config.socket_group).gr_gid
            except KeyError:
                if config.socket_group_required:
                    raise ConfigError(config.source, "nbd.socket_group",
                                      f"no group {config.socket_group!r} on this host"
                                      ) from None  # fmt: skip
                log.info("nbd.socket_group %r does not exist: the socket %s is root's only",
                         config.socket_group, path)  # fmt: skip
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
            if os.path.exists(path):
                _remove_stale_socket(path)
        except OSError as err:
            raise unusable_path(config.source, "nbd.unix_socket", path, err) from None
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            old_umask = os.umask(0o177)
            try:
                sock.bind(tmp)
            finally:
                os.umask(old_umask)
            os.chown(tmp, -1, gid)
            os.chmod(tmp, config.socket_mode)
            os.rename(tmp, path)
            sock.listen(1024)
        except OSError as err:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            rule = f"cannot listen on {path!r}: {err.strerror or err}"
            raise ConfigError(config.source, "nbd.unix_socket", rule) from None
        return sock

    @property
    def tcp_port(self) -> int | None:
        for server in self.servers:
            for sock in server.sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    return sock.getsockname()[1]
        return None

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a crashed daemon is removed; a live one is an error."""
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errnos.EADDRINUSE, f"{path}: another server is listening there")
