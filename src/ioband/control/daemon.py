"""The ioband daemon: one engine, its clock and timers, the backing stores, the NBD server.

The engine is sans-I/O; this is where real time meets it. ``now()`` turns the event loop's
monotonic clock into jiffies, ``pump()`` carries out what the engine released after every call
and arms one loop timer for the engine's next deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from ioband.cgroup.proc import Hierarchy, find_hierarchy
from ioband.control.config import Config, ConfigError
from ioband.core.engine import Engine
from ioband.core.request import Request
from ioband.errors import IobandError
from ioband.nbd import protocol as nbd
from ioband.nbd.backing import Backing, resolve
from ioband.nbd.iopool import IoPool
from ioband.nbd.server import PROCESS_TYPES, Connection, Export, NbdServer

log = logging.getLogger("ioband.daemon")


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hz = config.hz
        self.engine = Engine(hz=config.hz, resolver=resolve)
        self.exports: dict[str, Export] = {}
        self.connections: set[Connection] = set()
        self.hierarchy: Hierarchy | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool: IoPool | None = None
        self.nbd = NbdServer(self)
        self._t0 = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: int | None = None
        self._stopped = asyncio.Event()

    # -- time and the engine ---------------------------------------------------------------------
    def now(self) -> int:
        return int((self.loop.time() - self._t0) * self.hz)

    def pump(self) -> None:
        """Do what the engine released; wake connections it admitted; arm its next timer."""
        engine = self.engine
        while engine.has_output():  # starting I/O may complete at once and release more
            for req in engine.take_issued():
                req.tag[0].start_io(req)
            for req in engine.take_admitted():
                req.tag[0].admitted(req)
        due = engine.next_deadline()
        if due is not None and (self._timer_due is None or due < self._timer_due):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_due = due
            self._timer = self.loop.call_at(self._t0 + due / self.hz, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        self.engine.advance(self.now())
        self.pump()

    def io_done(self, req: Request, result: object, error: BaseException | None) -> None:
        if req.state is not None:  # None: it bypassed the scheduler (control = false)
            self.engine.complete(req, self.now())
        req.tag[0].finish(req, result, error)
        self.pump()

    # -- NBD exports -------------------------------------------------------------------------
    def nbd_export_info(self, name: str, conn: Connection | None = None) -> nbd.ExportInfo | None:
        """The export for a connection; refused when its device's group type cannot be
        resolved for that connection (never silently classified to the default group)."""
        export = self.exports.get(name)
        if export is None:
            return None
        gtype = export.device.type_name
        if conn is not None and conn.tcp and gtype in PROCESS_TYPES:
            raise nbd.ExportRefused(
                f"device {name!r} classifies requests by {gtype!r}, which is unknown for a TCP"
                " client: connect over the unix socket, or use type 'client' or 'none'"
            )
        return export.info

    def nbd_export_names(self) -> list[str]:
        return list(self.exports)

    def add_device(
        self,
        name: str,
        table: str,
        messages: tuple[str, ...] = (),
        *,
        direct: bool = False,
        read_only: bool = False,
        control: bool = True,
        where: str = "",
    ) -> Export:
        """Create an ioband device and export it. Nothing is left behind when it fails."""
        engine = self.engine
        device = engine.create(name, table, self.now() if self.loop else 0)
        try:
            for i, message in enumerate(messages):
                try:
                    engine.message(name, message)
                except IobandError as err:
                    key = f"{where}messages[{i}]"
                    rule = f"{message!r}: {err.describe()}"
                    raise ConfigError(self.config.source, key, rule) from None
            try:
                backing = Backing.open(device.backing, direct=direct, read_only=read_only)
            except OSError as err:
                rule = f"cannot open {device.backing!r}: {err.strerror}"
                raise ConfigError(self.config.source, f"{where}table", rule) from None
            size = device.length * 512
            if size > backing.size:
                backing.close()
                raise ConfigError(
                    self.config.source, f"{where}table",
                    f"length {device.length} sectors ({size} bytes) is larger than"
                    f" {device.backing!r} ({backing.size} bytes)",
                )  # fmt: skip
        except BaseException:
            engine.remove(name)
            raise
        info = nbd.ExportInfo(
            name=name,
            size=size,
            read_only=read_only,
            min_block=4096 if direct else 1,
            description=f"ioband device {name} on {device.backing}",
        )
        export = self.exports[name] = Export(name, device, backing, size, info, control)
        return export

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._t0 = self.loop.time()
        config = self.config
        try:
            self.hierarchy = find_hierarchy(config.cgroup_hierarchy)
        except IobandError as err:
            raise ConfigError(config.source, "daemon.cgroup_hierarchy", str(err)) from None
        self.pool = IoPool(self.loop, config.io_threads)
        try:
            for i, dev in enumerate(config.devices):
                where = f"device[{i}]."
                try:
                    self.add_device(dev.name, dev.table, dev.messages, direct=dev.direct,
                                    read_only=dev.read_only, control=dev.control,
                                    where=where)  # fmt: skip
                except ConfigError:
                    raise
                except IobandError as err:
                    raise ConfigError(config.source, f"{where}table", err.describe()) from None
            await self.nbd.start(config.unix_socket, config.tcp)
        except BaseException:
            await self.close()
            raise

    async def drain(self, timeout: float = 30.0) -> None:
        """Stop taking requests, release everything held, wait for what is in flight."""
        await self.nbd.stop()
        for name in list(self.exports):
            self.engine.remove(name, self.now())  # held and waiting requests are issued now
        self.pump()
        loop = self.loop
        deadline = loop.time() + timeout
        while any(c.inflight for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nbd.stop()
        if self._timer is not None:
            self._timer.cancel()
        if self.pool is not None:
            self.pool.close()
        for export in self.exports.values():
            export.backing.close()
        self.exports.clear()

    def request_stop(self) -> None:
        self._stopped.set()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then drain and close."""
        await self.start()
        loop = self.loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        where = ", ".join(
            x for x in (self.config.unix_socket,
                        f"tcp {self.config.tcp[0]}:{self.nbd.tcp_port}" if self.config.tcp else "")
            if x
        )  # fmt: skip
        log.info("ioband daemon: %d export(s) on %s", len(self.exports), where)
        try:
            await self._stopped.wait()
        finally:
            await self.drain()
            await self.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (IOBAND_EVENT_LOOP=asyncio forces the stock loop, to compare)."""
    if os.environ.get("IOBAND_EVENT_LOOP") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_daemon(config: Config) -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(Daemon(config).serve())
    finally:
        loop.close()
