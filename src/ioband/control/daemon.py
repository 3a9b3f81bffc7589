"""The ioband daemon: one engine, its clock and timers, the backing stores, the NBD server.

The engine is sans-I/O; this is where real time meets it. The daemon assembles the pieces: the
``Driver`` (``ioband.core.driver``, the one way into and out of the engine) reads the clock
``now()`` (the event loop's monotonic clock in jiffies), hands what the engine releases to the
front end that submitted it, and asks for one loop timer at the engine's next deadline
(``_arm``); the front ends get the ``Runtime`` (``ioband.runtime``), not the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time

from ioband.access import NOT_FOR_MOUNTS, Access, Confinement
from ioband.aio import Aio
from ioband.aio import available as aio_available
from ioband.cgroup.blkio import CgroupWatcher
from ioband.cgroup.paths import CgroupPaths
from ioband.cgroup.proc import Hierarchy, find_hierarchy
from ioband.cluster.agent import ClusterAgent, ClusterSettings
from ioband.control import sdnotify
from ioband.control import state as persist
from ioband.control.config import (
    Config,
    ConfigError,
    ConfigErrors,
    DeviceConfig,
    load_config,
    unusable_path,
)
from ioband.control.metrics import MetricsServer
from ioband.control.reload import Outcome, Plan, plan_reload
from ioband.control.server import ControlServer
from ioband.core.driver import Driver
from ioband.core.engine import Engine
from ioband.core.grammar import Rule, key_text
from ioband.core.model import Device
from ioband.errors import IobandError
from ioband.eventloop import new_event_loop
from ioband.fuse.mount import FuseMount, MountOptions, WorkerSettings
from ioband.fuse.stale import is_dead_mount
from ioband.nbd import protocol as nbd
from ioband.nbd.backing import Backing, resolve
from ioband.nbd.iopool import IoPool
from ioband.nbd.server import Connection, Export, NbdServer
from ioband.runtime import Runtime, admitted, start_io

log = logging.getLogger("ioband.daemon")

#: Requests one AIO context keeps in flight (more wait in order); contexts come out of the
#: system-wide ``fs.aio-max-nr`` (65,536 by default).
AIO_DEPTH = 256


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hz = config.hz
        # latencies are measured with the monotonic clock in ns (a jiffy is too coarse for them)
        self.engine = Engine(hz=config.hz, resolver=resolve, clock_ns=time.monotonic_ns)
        self.driver = Driver(self.engine, start_io, admit=admitted, deadline=self._arm,
                             clock=self.now)  # fmt: skip
        self.runtime = Runtime(self.driver)  # what the front ends are given
        self.exports: dict[str, Export] = {}
        self.connections: set[Connection] = set()
        self.hierarchy: Hierarchy | None = None
        self.cgroups: CgroupWatcher | None = None  # detaches the groups of removed cgroups
        self.cgroup_paths: CgroupPaths | None = None  # a cgroup inode's path (FUSE requests)
        self.io_weight_defaults: dict[int, int] = {}  # cgroup id -> io.weight's 'default N'
        self._cgroup_task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool: IoPool | None = None
        self.nbd = NbdServer(self.runtime, config, self.exports, self.connections)
        self.control = ControlServer(self)
        self.metrics = MetricsServer(self)
        self.cluster: ClusterAgent | None = None  # [cluster]: the Redis exchange (started below)
        self.config_path: str | None = None  # the file SIGHUP re-reads
        self.flags: dict[str, tuple[bool, bool, bool]] = {}  # name -> direct, read_only, control
        self.access: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # allow, allow_ro
        self.mounts: dict[str, FuseMount] = {}  # directory devices, served by FUSE workers
        # name -> mountpoint, writeback_cache, write_behind
        self.mount_options: dict[str, tuple[str, bool, bool]] = {}
        self._unmounting: set[asyncio.Task[None]] = set()  # removed mounts still stopping
        self.removed: set[str] = set()  # configured devices removed at run time
        self.unrestored: dict[str, persist.DeviceState] = {}  # saved devices that failed to start
        self._t0 = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: int | None = None
        self._stopped = asyncio.Event()

    # -- time and the engine ---------------------------------------------------------------------
    def now(self) -> int:
        return int((self.loop.time() - self._t0) * self.hz)

    def _arm(self, due: int) -> None:
        """The driver's ``deadline``: one loop timer, at the engine's earliest deadline."""
        if self._timer_due is None or due < self._timer_due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_due = due
            self._timer = self.loop.call_at(self._t0 + due / self.hz, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        self.driver.advance()

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
        mountpoint: str | None = None,
        writeback_cache: bool = False,
        write_behind: bool = True,
        allow: tuple[str, ...] = (),
        allow_ro: tuple[str, ...] = (),
        confine: Confinement | None = None,
        rules: tuple[Rule, ...] = (),
    ) -> Export | FuseMount | None:
        """Create an ioband device and export it (a file or block device) or mount it (a
        directory). Nothing is left behind when it fails. A daemon that is not running (the
        reload check) only validates. ``confine``: the caller is not root, and the backing
        store and mount point must lie in the directories the configuration allows."""
        src = self.config.source
        try:
            access = Access.parse(allow, allow_ro, where)
        except IobandError as err:
            key, _, rule = str(err).partition(": ")
            raise ConfigError(src, key, rule) from None
        engine = self.engine
        device = engine.create(name, table, self.now() if self.loop else 0)
        try:
            engine.set_rules(name, rules)
        except IobandError as err:
            engine.remove(name)
            raise ConfigError.of(src, f"{where}rule", err) from None
        if os.path.isdir(device.backing) or mountpoint:
            if not access.open:
                engine.remove(name)
                raise ConfigError(src, f"{where}allow", NOT_FOR_MOUNTS)
            if confine is not None:
                try:
                    confine.check_mount(device.backing, mountpoint)
                except BaseException:
                    engine.remove(name)
                    raise
            return self._add_mount(name, device, messages, where, MountOptions(
                mountpoint or "", direct, read_only, control, writeback_cache,
                write_behind))  # fmt: skip
        try:
            self._apply_messages(name, messages, where)
            try:
                backing = Backing.open(device.backing, direct=direct, read_only=read_only)
            except OSError as err:
                rule = f"cannot open {device.backing!r}: {err.strerror}"
                raise ConfigError(src, f"{where}table", rule) from None
            if confine is not None:
                try:
                    confine.check_backing(backing.fd, device.backing)
                except BaseException:
                    backing.close()
                    raise
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
            block_status=True,
            description=f"ioband device {name} on {device.backing}",
        )
        export = Export(name, device, backing, size, info, control, access)
        self.exports[name] = export
        self.flags[name] = (direct, read_only, control)
        self.access[name] = (tuple(allow), tuple(allow_ro))
        return export

    def add_configured(self, dev: DeviceConfig | persist.DeviceState, where: str = ""
                       ) -> Export | FuseMount | None:  # fmt: skip
        """A device from the configuration file or the state file."""
        return self.add_device(
            dev.name,
            dev.table,
            dev.messages,
            direct=dev.direct,
            read_only=dev.read_only,
            control=dev.control,
            where=where,
            mountpoint=dev.mountpoint,
            writeback_cache=dev.writeback_cache,
            write_behind=dev.write_behind,
            allow=dev.allow,
            allow_ro=dev.allow_ro,
            rules=dev.rules,
        )

    def add_from_file(self, dev: DeviceConfig, where: str) -> None:
        """A ``[[device]]`` of the configuration file: an engine refusal is reported as the
        entry's ``table`` key (the start and a reload's check alike)."""
        try:
            self.add_configured(dev, where)
        except ConfigError:
            raise
        except IobandError as err:
            raise ConfigError.of(self.config.source, f"{where}table", err) from None

    def _apply_messages(self, name: str, messages: tuple[str, ...], where: str) -> None:
        for i, message in enumerate(messages):
            try:
                self.engine.message(name, message)
            except IobandError as err:
                key = f"{where}messages[{i}]"
                raise ConfigError.of(self.config.source, key, err, f"{message!r}: ") from None

    def _add_mount(self, name: str, device: Device, messages: tuple[str, ...], where: str,
                   options: MountOptions) -> FuseMount | None:  # fmt: skip
        """A directory device: its FUSE worker mounts it (a directory has no size: the table's
        length is not checked, ``0 0`` by convention)."""
        src = self.config.source
        try:
            self._apply_messages(name, messages, where)
            if not os.path.isdir(device.backing):
                raise ConfigError(src, f"{where}mountpoint", f"needs a directory to serve, and"
                                  f" {device.backing!r} is not one")  # fmt: skip
            if not options.mountpoint:
                raise ConfigError(src, f"{where}mountpoint", f"is required: {device.backing!r}"
                                  " is a directory, served as a FUSE mount")  # fmt: skip
            if not os.path.isdir(options.mountpoint) and not is_dead_mount(options.mountpoint):
                raise ConfigError(src, f"{where}mountpoint",
                                  f"{options.mountpoint!r} is not a directory")  # fmt: skip
            where_to = os.path.abspath(options.mountpoint)
            clash = next((m.name for m in self.mounts.values() if m.mountpoint == where_to), None)
            if clash is not None:
                raise ConfigError(src, f"{where}mountpoint",
                                  f"{options.mountpoint!r} is already used by {clash}")  # fmt: skip
            if self.loop is None:  # validation only (a reload's check)
                return None
            worker = WorkerSettings(self.config.cgroup_hierarchy, self.config.io_threads)
            mount = FuseMount(self.runtime, name, device, device.backing, options, worker)
            try:
                mount.start()
            except IobandError as err:
                raise ConfigError(src, f"{where}mountpoint", str(err)) from None
        except BaseException:
            self.engine.remove(name)
            raise
        self.mounts[name] = mount
        self.flags[name] = (options.direct, options.read_only, options.control)
        self.mount_options[name] = (
            options.mountpoint,
            options.writeback_cache,
            options.write_behind,
        )
        return mount

    def device_created(self, name: str) -> None:
        """A device was created at run time: persist it."""
        self.removed.discard(name)
        self.unrestored.pop(name, None)
        self.save_state()

    def remove_device(self, name: str) -> None:
        """``ioband remove``: the engine flushes what it holds; the export goes away once the
        requests in flight have completed; the state file forgets the device."""
        with self.driver:  # what the device held is issued now
            self.engine.remove(name, self.now())
        export = self.exports.pop(name, None)
        self.flags.pop(name, None)
        self.access.pop(name, None)
        self.mount_options.pop(name, None)
        mount = self.mounts.pop(name, None)
        if mount is not None:  # the worker answers what is in flight, then unmounts
            task = self.loop.create_task(mount.stop())
            self._unmounting.add(task)
            task.add_done_callback(self._unmounting.discard)
        if any(dev.name == name for dev in self.config.devices):
            self.removed.add(name)
        self.save_state()
        if export is not None:
            self._close_drained(list(export.connections))
            self.loop.create_task(self._close_export(export))

    async def _close_export(self, export: Export, timeout: float = 30.0) -> None:
        deadline = self.loop.time() + timeout
        while any(c.inflight for c in export.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(export.connections):
            if conn.transport is not None:
                conn.transport.close()
        export.backing.close()

    # -- persistence -------------------------------------------------------------------------
    def current_state(self) -> persist.State:
        devices = self.running_state()
        names = {d.name for d in devices}
        devices += [d for n, d in self.unrestored.items() if n not in names]
        return persist.State(devices, sorted(self.removed))

    def running_state(self) -> list[persist.DeviceState]:
        """The running devices as the state file saves them (what a reload merges with)."""
        devices = []
        for name, dev in self.engine.devices.items():
            words = self.engine.table(name).split(" ")
            words[3] = dev.backing  # the path it was created with, not its display form
            policy = dev.dp.policy
            messages: tuple[str, ...] = ()
            if hasattr(policy, "token_set"):  # weight policies: what the user set, 0 = default
                words[9] = str(policy.token_set)
                if policy.carryover_set:
                    messages = (f"carryover {policy.carryover_set}",)
            direct, read_only, control = self.flags.get(name, (False, False, True))
            mountpoint, writeback, behind = self.mount_options.get(name, (None, False, True))
            allow, allow_ro = self.access.get(name, ((), ()))
            devices.append(persist.DeviceState(name, " ".join(words), messages, direct,
                                               read_only, control, mountpoint,
                                               writeback, behind, allow, allow_ro,
                                               dev.rules))  # fmt: skip
        return devices

    def save_state(self) -> None:
        path = self.config.state_file
        if not path:
            return
        try:
            persist.save(path, self.current_state())
        except OSError as err:
            log.error("cannot save the state file %s: %s", path, err)
            raise IobandError(
                f"The change was made but cannot be saved to {path}: {err.strerror or err}",
                errno_name="EIO",
            ) from None

    def _restore(self) -> None:
        """The configured devices, then the saved state over them (the state file wins)."""
        config = self.config
        saved = None
        if config.state_file:
            try:
                saved, problems = persist.load(config.state_file)
            except persist.StateError as err:
                raise ConfigError(config.source, "daemon.state_file", str(err)) from None
            for problem in problems:
                log.error("%s", problem)
        saved_names = {d.name for d in saved.devices} if saved else set()
        self.removed = set(saved.removed) if saved else set()
        errors: list[ConfigError] = []
        for i, dev in enumerate(config.devices):
            if dev.name in saved_names or dev.name in self.removed:
                continue
            try:
                self.add_from_file(dev, f"device[{i}].")
            except ConfigError as err:  # every device's error is reported, not the first only
                errors.append(err)
        if errors:
            raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
        for dev in saved.devices if saved else ():
            try:
                self.add_configured(dev)
            except IobandError as err:
                text = err.rule if isinstance(err, ConfigError) else err.describe()
                log.error("%s: device %r not restored: %s", config.state_file, dev.name, text)
                self.unrestored[dev.name] = dev
        if config.state_file:
            try:
                persist.save(config.state_file, self.current_state())
            except OSError as err:
                raise unusable_path(config.source, "daemon.state_file", config.state_file, err,
                                    "persisting nothing") from None  # fmt: skip

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = self.runtime.loop = asyncio.get_running_loop()
        self._t0 = self.loop.time()
        config = self.config
        try:
            self.hierarchy = self.runtime.hierarchy = find_hierarchy(config.cgroup_hierarchy)
        except IobandError as err:
            raise ConfigError(config.source, "daemon.cgroup_hierarchy", str(err)) from None
        if self.hierarchy is not None:
            self.cgroups = CgroupWatcher(self.hierarchy)
            self.cgroup_paths = self.runtime.cgroup_paths = CgroupPaths(self.hierarchy)
            self._cgroup_task = self.loop.create_task(self._watch_cgroups())
        self.pool = self.runtime.pool = IoPool(self.loop, config.io_threads, batch=self.driver)
        self.runtime.aio = self._start_aio()
        try:
            self._restore()
            self._start_cluster()
            await self.nbd.start(config.unix_socket, config.tcp)
            if config.control_socket:
                await self.control.start(config.control_socket)
            if config.metrics_listen:
                try:
                    await self.metrics.start(*config.metrics_listen)
                except OSError as err:
                    host, port = config.metrics_listen
                    raise ConfigError(config.source, "metrics.listen",
                                      f"cannot listen on {host}:{port}: {err.strerror or err}",
                                      ) from None  # fmt: skip
        except BaseException:
            await self.close()
            raise

    def _start_aio(self) -> Aio | None:
        """Linux AIO for the exports' O_DIRECT reads and writes (see ``ioband.aio``: no thread
        and no GIL hand-over per request, so what the window counts in flight is at the
        store). Without it (another architecture, ``fs.aio-max-nr`` used up) the threads do
        them, as they do every buffered request."""
        if not aio_available():
            return None
        try:
            return Aio(self.loop, AIO_DEPTH, batch=self.driver)
        except OSError as err:
            log.warning("Linux AIO unavailable (%s): O_DIRECT I/O goes through threads", err)
            return None

    def _io_depth(self) -> int:
        """What this daemon can keep in flight to the cluster-wide devices' stores: the AIO
        context's depth when they are all O_DIRECT (AIO does them), else the I/O threads."""
        cluster = [d for d in self.config.devices if d.cluster]
        if self.runtime.aio is not None and cluster and all(d.direct for d in cluster):
            return AIO_DEPTH
        return self.config.io_threads

    def _start_cluster(self) -> None:
        """``[cluster]``: exchange the cluster-wide devices' counters through Redis (a task of
        this loop; nothing on the request path waits on it). Changing ``[cluster]`` itself
        needs a restart; devices becoming cluster-wide on reload join at the next exchange."""
        settings = self.config.cluster
        if settings is None:
            return
        host = settings.host or f"{socket.gethostname()}-{os.getpid()}"
        self.cluster = ClusterAgent(
            ClusterSettings(settings.redis, settings.name, settings.interval, host,
                            settings.latency_target),
            self.engine,
            lambda: [d.name for d in self.config.devices if d.cluster],
            self.now,
            self.driver.pump,
            threads=self._io_depth(),
        )  # fmt: skip
        self.cluster.start()

    async def drain(self, timeout: float = 30.0) -> None:
        """Stop taking requests, release everything held, wait for what is in flight."""
        if self.cluster is not None:
            await self.cluster.stop()
        await self.control.stop()
        await self.metrics.stop()
        await self.nbd.stop()
        with self.driver:
            for name in list(self.engine.devices):
                self.engine.remove(name, self.now())  # held and waiting are issued now
        mounts = list(self.mounts.values())
        self.mounts.clear()
        await asyncio.gather(*(m.stop(timeout) for m in mounts), *self._unmounting,
                             return_exceptions=True)  # fmt: skip
        loop = self.loop
        deadline = loop.time() + timeout
        while any(c.inflight for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()

    async def close(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await self.cluster.stop()
        with contextlib.suppress(Exception):
            await self.control.stop()
        with contextlib.suppress(Exception):
            await self.nbd.stop()
        with contextlib.suppress(Exception):
            await self.metrics.stop()
        if self._cgroup_task is not None:
            self._cgroup_task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self.pool is not None:
            self.pool.close()
        if self.runtime.aio is not None:
            self.runtime.aio.close()
            self.runtime.aio = None
        for export in self.exports.values():
            export.backing.close()
        self.exports.clear()
        for mount in self.mounts.values():
            mount.stopping = True
            mount._kill()
        self.mounts.clear()

    # -- removed cgroups ---------------------------------------------------------------------
    CGROUP_POLL = 0.5  # seconds between looks for removed cgroups

    async def _watch_cgroups(self) -> None:
        while True:
            await asyncio.sleep(self.CGROUP_POLL)
            try:
                self.detach_removed_cgroups()
            except Exception:  # a bug must not stop the watcher
                log.exception("cgroup watcher")

    def detach_removed_cgroups(self) -> None:
        """Detach the groups of removed cgroups from every cgroup-type device (blkio §6.6)."""
        if self.cgroups is None:
            return
        gone = self.cgroups.gone(self.engine)
        with self.driver:
            for name, gid in gone:
                self.io_weight_defaults.pop(gid, None)  # type: ignore[call-overload]
                self.engine.message(name, ["detach", key_text(gid)], self.now())
                log.info("cgroup %s removed: detached from %s", key_text(gid), name)
        if gone:
            with contextlib.suppress(IobandError):
                self.save_state()

    def request_stop(self) -> None:
        if not self._stopped.is_set():
            sdnotify.stopping()
        self._stopped.set()

    # -- SIGHUP ------------------------------------------------------------------------------
    def on_sighup(self) -> None:
        path = self.config_path
        if path is None:
            log.warning("SIGHUP: no configuration file to re-read")
            return
        log.info("SIGHUP")
        self.reload_file()

    def reload_file(self) -> Outcome:
        """``ioband reload``: re-read the configuration file, as SIGHUP does; systemd is told
        (``RELOADING=1``, then ``READY=1`` with the outcome as its status)."""
        sdnotify.reloading()
        outcome = self._reload_file()
        sdnotify.ready(self.status_text() if outcome else f"reload refused: {outcome.refused}")
        return outcome

    def status_text(self) -> str:
        """What ``systemctl status`` shows: the exports and sockets served."""
        return (f"{len(self.engine.devices)} device(s); NBD on {self.config.unix_socket}"
                + (f", control on {self.control.path}" if self.control.path else ""))  # fmt: skip

    def _reload_file(self) -> Outcome:
        path = self.config_path
        if path is None:
            return Outcome(refused="no configuration file to re-read: the daemon was not"
                           " started with --config", errno_name="ENOENT")  # fmt: skip
        log.info("reload: re-reading %s", path)  # SIGHUP and ``ioband reload`` alike
        try:
            new = load_config(path, service_defaults=True)
        except IobandError as err:
            log.error("reload refused, the running state is kept: %s", err.describe())
            return Outcome(refused=err.message, errno_name=err.errno_name)
        return self.reload(new)

    def reload(self, new: Config) -> Outcome:
        """Take the running devices to ``new`` without closing connections: the three-way merge
        of the old file, the new file and the running state (``ioband.control.reload``) gives
        engine messages, applied here in one go on the loop (between two requests: no suspend
        is needed), and in-place option changes. Only what cannot change in place (the backing
        store, the length, the device-group id, ``direct``, a FUSE mount's options) re-creates
        its device, and the log says why. A file with a device that cannot be built, or a
        change that cannot be applied, is refused as a whole and nothing changes."""
        try:
            plan = plan_reload(self.config, new, self.running_state(), self.removed)
            self._probe_creates(new, [*plan.create, *plan.recreate])
            backings = self._open_writable(new, plan)
        except IobandError as err:
            log.error("reload refused, the running state is kept: %s", err.describe())
            return Outcome(refused=err.message, errno_name=err.errno_name)
        if self.config.state_file:
            log.info("reload: state file %s in use: settings the file does not change keep"
                     " their saved state (the state wins)", self.config.state_file)  # fmt: skip
        for line in plan.lines():
            warn = line.startswith(("re-create", "restart", "note"))
            log.log(logging.WARNING if warn else logging.INFO, "reload: %s", line)
        for name in (*plan.remove, *plan.recreate):
            if name in self.engine.devices:
                self.remove_device(name)
        with self.driver:
            for step in plan.steps:
                try:
                    self.engine.message(step.device, list(step.words), self.now())
                except IobandError as err:  # dry-run on a copy first: only a bug gets here
                    log.error("reload: %s refused: %s", step, err.describe())
        for change in plan.options:
            self.set_option(change.device, change.field, change.new, backings.get(change.device))
        want = {d.name: d for d in new.devices}
        gone = {d.name for d in self.config.devices} - set(want)
        self.config = dataclasses.replace(self.config, devices=new.devices,
                                          admin_group=new.admin_group)  # fmt: skip
        self.removed -= gone  # what the file no longer lists is not "removed"
        unmounting = list(self._unmounting)
        for name in (*plan.create, *plan.recreate):
            dev = want[name]
            if dev.mountpoint and unmounting:  # its mount point may still be in use
                self.loop.create_task(self._create_when_unmounted(dev, unmounting))
            else:
                self._create_reloaded(dev)
        self.save_state()
        return Outcome(plan=plan)

    def _probe_creates(self, new: Config, names: list[str]) -> None:
        """Every device the reload creates, created on a scratch daemon first (backing store
        opened, size checked): all or nothing."""
        probe = Daemon(dataclasses.replace(new, state_file=None))
        index = {d.name: i for i, d in enumerate(new.devices)}
        want = {d.name: d for d in new.devices}
        try:
            for name in names:
                probe.add_from_file(want[name], f"device[{index[name]}].")
        finally:
            for export in probe.exports.values():
                export.backing.close()

    def _open_writable(self, new: Config, plan: Plan) -> dict[str, Backing]:
        """Exports that stop being read-only need their backing store opened read-write:
        opened before anything changes, so that a refusal changes nothing."""
        out: dict[str, Backing] = {}
        index = {d.name: i for i, d in enumerate(new.devices)}
        try:
            for change in plan.options:
                export = self.exports.get(change.device)
                if change.field != "read_only" or change.new or export is None:
                    continue
                if not export.backing.read_only:
                    continue
                try:
                    out[change.device] = Backing.open(export.backing.path,
                                                      direct=export.backing.direct)  # fmt: skip
                except OSError as err:
                    raise ConfigError(new.source, f"device[{index[change.device]}].read_only",
                                      f"cannot open {export.backing.path!r} read-write:"
                                      f" {err.strerror}") from None  # fmt: skip
        except BaseException:
            for backing in out.values():
                backing.close()
            raise
        return out

    def set_option(self, name: str, field: str, value: object,
                   backing: Backing | None = None) -> None:  # fmt: skip
        """Change an in-place field (``reload.FIELD_RULES``) of a running export. ``read_only``
        on: new connections get a read-only export, and the connections already open (they
        negotiated read-write) are closed once their requests are answered, since a writer
        must not keep writing an export made read-only. ``read_only`` off: new connections may
        write (``backing``: the store opened read-write); read-only ones go on. ``control``:
        every request received from now on, existing connections' too, is scheduled or not
        (a request is either one or the other: nothing to drain). Another field is set on the
        export under its own name (read when a client connects)."""
        if field == "rules":  # an engine setting: exports and mounts alike
            self.engine.set_rules(name, tuple(value), self.now())  # type: ignore[arg-type]
            return
        if field == "cluster":  # the cluster agent reads it from self.config each exchange
            if value and self.cluster is None:
                log.warning("reload: %s is cluster-wide but the daemon started without "
                            "[cluster]: restart it to join the cluster", name)  # fmt: skip
            return
        export = self.exports.get(name)
        if export is None:
            log.warning("reload: %s is not an export: %s not changed", name, field)
            return
        if field == "read_only":
            export.info = dataclasses.replace(export.info, read_only=bool(value))
            if value:
                writers = [c for c in export.connections if not c.closed and c.writable]
                self._close_drained(writers)
                if writers:
                    log.warning("reload: %s is read-only now: %d read-write connection(s)"
                                " closed once drained", name, len(writers))  # fmt: skip
            elif backing is not None:
                old, export.backing = export.backing, backing
                self.loop.create_task(self._close_when_idle(export, old))
        elif field == "control":
            export.control = bool(value)
        elif field in ("allow", "allow_ro"):
            allow, allow_ro = self.access.get(name, ((), ()))
            texts = tuple(value) if isinstance(value, tuple | list) else ()
            rules = (texts, allow_ro) if field == "allow" else (allow, texts)
            self.access[name] = rules
            export.access = Access.parse(*rules)
            # A peer the new rules refuse, or allow read-only while it negotiated read-write,
            # must not keep its connection.
            stale = [c for c in export.connections if not c.closed and (
                (decision := export.access.decide(c.peer)) is None
                or (decision == "ro" and c.writable))]  # fmt: skip
            self._close_drained(stale)
            for conn in stale:
                log.warning("reload: %s: %s no longer allowed by %s: connection closed once"
                            " drained", name, conn.peer.describe(), field)  # fmt: skip
        elif hasattr(export, field):
            setattr(export, field, value)
        direct, read_only, control = self.flags.get(name, (False, False, True))
        if field == "read_only":
            read_only = bool(value)
        elif field == "control":
            control = bool(value)
        self.flags[name] = (direct, read_only, control)

    @staticmethod
    def _close_drained(connections: list[Connection]) -> None:
        """Read no more from these connections; close each once its requests are answered."""
        for conn in connections:
            conn.closing = True
            conn._update_reading()
            conn._maybe_close()

    async def _close_when_idle(self, export: Export, backing: Backing,
                               timeout: float = 30.0) -> None:  # fmt: skip
        """A replaced backing store is closed once the requests that may still use it are
        answered."""
        deadline = self.loop.time() + timeout
        while any(c.inflight for c in export.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        backing.close()

    def _create_reloaded(self, dev: DeviceConfig) -> None:
        try:
            self.add_configured(dev)
        except IobandError as err:  # checked before; the backing store may have changed
            log.error("reload: %s not created: %s", dev.name, err.describe())
            return
        self.driver.pump()
        self.device_created(dev.name)
        log.info("reload: created %s: %s", dev.name, dev.table)

    async def _create_when_unmounted(self, dev: DeviceConfig,
                                     unmounting: list[asyncio.Task[None]]) -> None:  # fmt: skip
        """A changed mount is created again once the old one's worker has unmounted."""
        await asyncio.gather(*unmounting, return_exceptions=True)
        self._create_reloaded(dev)

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then drain and close."""
        await self.start()
        loop = self.loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        where = ", ".join(
            x for x in (self.config.unix_socket,
                        f"tcp {self.config.tcp[0]}:{self.nbd.tcp_port}" if self.config.tcp else "")
            if x
        )  # fmt: skip
        log.info("ioband daemon: %d export(s) on %s", len(self.exports), where)
        if self.metrics.port is not None:
            log.info("metrics on http://%s:%d/metrics", self.config.metrics_listen[0],
                     self.metrics.port)  # fmt: skip
        if self.control.path:
            log.info("control socket %s, state file %s", self.control.path,
                     self.config.state_file or "(none)")  # fmt: skip
        sdnotify.ready(self.status_text())  # every socket is listening (Type=notify)
        try:
            await self._stopped.wait()
        finally:
            await self.drain()
            await self.close()


def run_daemon(config: Config, config_path: str | None = None) -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    daemon = Daemon(config)
    daemon.config_path = config_path
    try:
        loop.run_until_complete(daemon.serve())
    finally:
        loop.close()
