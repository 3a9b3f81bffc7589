"""The control socket: requests from ``ioband`` commands, answered on the daemon's loop.

Reads (table, status, ls, targets, info) are open to every local user; changes (create, remove,
message, suspend, resume, reload) to root and members of the admin group, decided from the caller's
``SO_PEERCRED``. A malformed request gets an error reply; it never disturbs the daemon or other
clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import logging
import os
import socket
from collections import Counter
from typing import TYPE_CHECKING, Any

from ioband import TARGET_VERSION, __version__
from ioband.access import Confinement
from ioband.cgroup import blkio
from ioband.cgroup.proc import peer_credentials, process_groups, relative
from ioband.control import protocol
from ioband.control.config import ConfigError, unusable_path
from ioband.control.metrics import group_counters
from ioband.core.grammar import parse_table
from ioband.errors import AccessDenied, InvalidArgument, IobandError, NotFound
from ioband.logutil import LogLimiter

if TYPE_CHECKING:
    from ioband.control.daemon import Daemon

log = logging.getLogger("ioband.control")
#: Connections of callers other than root: per user, and in all. Root is never turned away,
#: and these bounds keep file descriptors in reserve for it (``nbd.max_connections`` leaves
#: the rest of the daemon's descriptor limit to the control socket, the backing stores and
#: the FUSE workers).
MAX_CLIENTS_PER_UID = 16
MAX_CLIENTS = 128


def may_change(pid: int, uid: int, gid: int, admin_group: str | None) -> bool:
    """Root always; members of ``admin_group`` (primary or supplementary group of the caller)."""
    if uid == 0:
        return True
    if not admin_group:
        return False
    try:
        admin_gid = grp.getgrnam(admin_group).gr_gid
    except KeyError:  # no such group: root only
        return False
    return gid == admin_gid or admin_gid in process_groups(pid)


class ControlServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.path: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._per_uid: Counter[int] = Counter()  # open connections of non-root callers
        self.limited = LogLimiter(log)
        self.cred = (0, -1, -1)  # the caller of the request being handled

    async def start(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as err:
            raise unusable_path(self.daemon.config.source, "daemon.control_socket", directory,
                                err) from None  # fmt: skip
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # a stale socket left by a daemon that died
            else:
                raise ConfigError(self.daemon.config.source, "daemon.control_socket",
                                  f"{path!r} is in use: another daemon is running")  # fmt: skip
            finally:
                probe.close()
        self._server = await asyncio.start_unix_server(
            self._client, path, limit=protocol.MAX_LINE + 1
        )
        os.chmod(path, 0o666)  # reads are open to everyone; changes are checked per request
        self.path = path

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            cred = peer_credentials(writer.get_extra_info("socket"))
        except OSError:
            cred = (0, -1, -1)  # unknown caller: reads only
        uid = cred[1]
        if uid != 0:
            if self._per_uid[uid] >= MAX_CLIENTS_PER_UID or self._per_uid.total() >= MAX_CLIENTS:
                self.limited.warn(uid, "control socket: refused a connection from uid %d: %d"
                                  " open (at most %d per user, %d in all besides root)", uid,
                                  self._per_uid[uid], MAX_CLIENTS_PER_UID, MAX_CLIENTS)  # fmt: skip
                writer.close()
                return
            self._per_uid[uid] += 1
        log.debug("control connection from pid %d uid %d", cred[0], uid)  # ioband daemon -v
        self._clients.add(writer)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as err:
                    if err.partial.strip():  # a last request without its newline
                        writer.write(self.handle(err.partial, cred))
                        await writer.drain()
                    break
                except asyncio.LimitOverrunError:
                    err = protocol.ProtocolError(
                        f"Request too long: more than {protocol.MAX_LINE} bytes"
                    )
                    writer.write(protocol.error(err))
                    await writer.drain()
                    break  # the rest of the line cannot be told from a new request
                writer.write(self.handle(line, cred))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(writer)
            if uid != 0:
                self._per_uid[uid] -= 1
                if not self._per_uid[uid]:
                    del self._per_uid[uid]
            writer.close()

    # -- requests ------------------------------------------------------------------------------
    def handle(self, line: bytes, cred: tuple[int, int, int]) -> bytes:
        """One request line → one reply line. Never raises."""
        try:
            req = protocol.decode_request(line)
            op = req["op"]
            cred = self._acting_as(req, cred)
            if op in protocol.CHANGES:
                pid, uid, gid = cred
                admin = self.daemon.config.admin_group
                if not may_change(pid, uid, gid, admin):
                    log.warning("refused %s from pid %d uid %d gid %d: not root or in the"
                                " admin group %r", op, pid, uid, gid, admin)  # fmt: skip
                    raise AccessDenied(
                        f"Permission denied: {op} needs root or membership of the admin group"
                        f" {admin!r}"
                    )
            self.cred = cred
            result = getattr(self, f"op_{op}")(req)
        except IobandError as err:
            return protocol.error(err)
        except Exception as err:  # a bug must not take the daemon down
            log.exception("control request failed")
            return protocol.error(IobandError(f"Internal error: {err}", errno_name="EINVAL"))
        return protocol.ok(result)

    @staticmethod
    def _acting_as(req: dict[str, Any], cred: tuple[int, int, int]) -> tuple[int, int, int]:
        """The credentials a request is judged by: the peer's, or those of its ``as`` field,
        which only a root peer may give (blkiofs acting for the process writing a file)."""
        given = req.get(protocol.AS_FIELD)
        if given is None:
            return cred
        if cred[1] != 0:
            log.warning("refused %s from pid %d uid %d: 'as' needs a root peer", req["op"],
                        cred[0], cred[1])  # fmt: skip
            raise AccessDenied(f"Permission denied: only root may act for another process"
                               f" (field {protocol.AS_FIELD!r})")  # fmt: skip
        return given["pid"], given["uid"], given["gid"]

    def _names(self, name: str | None) -> list[str]:
        engine = self.daemon.engine
        if name is None:
            return sorted(engine.devices)
        engine.device(name)  # ENODEV
        return [name]

    def op_create(self, req: dict[str, Any]) -> None:
        d = self.daemon
        config = d.config
        confine = None
        if self.cred[1] != 0:  # the admin group: only where the configuration allows
            confine = Confinement(config.allowed_backing, config.allowed_mounts)
        try:
            d.add_device(req["name"], req["table"], direct=req.get("direct", False),
                         read_only=req.get("read_only", False), mountpoint=req.get("mount"),
                         writeback_cache=req.get("writeback_cache", False),
                         write_behind=req.get("write_behind", True),
                         allow=tuple(req.get("allow", ())),
                         allow_ro=tuple(req.get("allow_ro", ())), confine=confine)  # fmt: skip
        except AccessDenied as err:
            log.warning("refused create %s from pid %d uid %d: %s", req["name"], self.cred[0],
                        self.cred[1], err)  # fmt: skip
            raise
        except ConfigError as err:  # the field the rule is about, as the CLI names it
            field = err.key.rpartition(".")[2]
            raise InvalidArgument(f"{field}: {err.rule}" if field else err.rule) from None
        d.driver.pump()
        d.device_created(req["name"])
        log.info("created %s: %s", req["name"], req["table"])

    def op_remove(self, req: dict[str, Any]) -> None:
        self.daemon.remove_device(req["name"])
        log.info("removed %s", req["name"])

    def op_message(self, req: dict[str, Any]) -> None:
        d = self.daemon
        words = req["words"]
        with d.driver:  # one pump for what the message releases
            d.engine.message(req["name"], words, d.now())
        d.save_state()
        log.info("message %s: %s", req["name"], " ".join(words))

    def op_suspend(self, req: dict[str, Any]) -> None:
        d = self.daemon
        with d.driver:
            d.engine.suspend(req["name"], d.now())

    def op_resume(self, req: dict[str, Any]) -> None:
        d = self.daemon
        with d.driver:
            d.engine.resume(req["name"], d.now())

    def op_reload(self, req: dict[str, Any]) -> dict[str, Any]:
        """``ioband reload``: re-read the configuration file as SIGHUP does; the answer says
        what was applied, or (an error) why the file was refused and nothing changed."""
        outcome = self.daemon.reload_file()
        if not outcome:
            raise IobandError(f"reload refused, nothing changed: {outcome.refused}",
                              errno_name=outcome.errno_name)  # fmt: skip
        return outcome.to_json()

    def op_table(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        """Each device's table line, and its fields by name (``--json``)."""
        engine = self.daemon.engine
        out = []
        for n in self._names(req.get("name")):
            line = engine.table(n)
            fields = dataclasses.asdict(parse_table(line))
            fields["device_group"] = fields.pop("group_name")
            out.append({"name": n, "table": line, **fields})
        return out

    def op_status(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        """Each device's status line (``status``), and the same counters by name: the device
        group and, per group, what the line's columns hold (``--json``)."""
        fmt = req.get("format", "legacy")
        if fmt not in ("legacy", "diskstats"):
            raise InvalidArgument(f"Invalid status format {fmt!r}: legacy or diskstats")
        engine = self.daemon.engine
        out = []
        for n in self._names(req.get("name")):
            dev = engine.device(n)
            groups = [group_counters(engine, g) for g in dev.all_groups()]
            out.append({"name": n, "status": engine.status(n, fmt), "start": dev.start,
                        "length": dev.length, "device_group": dev.dp.name,
                        "groups": groups})  # fmt: skip
        return out

    def op_ls(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        d = self.daemon
        out = []
        for name in sorted(d.engine.devices):
            dev = d.engine.devices[name]
            mount = d.mounts.get(name)
            out.append({"name": name, "device_group": dev.dp.name, "backing": dev.backing,
                        "suspended": bool(dev.suspended), "export": name in d.exports,
                        "mount": mount.mountpoint if mount else None})  # fmt: skip
        return out

    def op_targets(self, req: dict[str, Any]) -> list[dict[str, str]]:
        return [{"name": "ioband", "version": ".".join(map(str, TARGET_VERSION))}]

    def op_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        """Every device's knobs and every group's counters (``ioband top``)."""
        from ioband.control.metrics import snapshot

        return snapshot(self.daemon)

    def op_info(self, req: dict[str, Any]) -> dict[str, Any]:
        d = self.daemon
        return {
            "version": __version__,
            "target_version": ".".join(map(str, TARGET_VERSION)),
            "pid": os.getpid(),
            "devices": len(d.engine.devices),
            "control_socket": self.path,
            "nbd_socket": d.config.unix_socket,
            "state_file": d.config.state_file,
            "admin_group": d.config.admin_group,
            "cgroup_hierarchy": str(d.hierarchy.mount) if d.hierarchy is not None else None,
        }

    def op_cgroup(self, req: dict[str, Any]) -> str:
        """``blkio.<file>`` of a cgroup: read without ``value``, write with it. Writes to
        ``devices`` need root or the admin group; to ``settings``/``stats`` also the owner of
        the cgroup's directory (delegation)."""
        d = self.daemon
        what = req["file"]
        if what not in blkio.FILES:
            raise InvalidArgument(f"Unknown cgroup file {what!r} (one of {', '.join(blkio.FILES)})")
        directory, root = blkio.cgroup_dir(d.hierarchy, req.get("cgroup", "/"))
        cgid = blkio.cgroup_ino(directory)
        path = relative(req.get("cgroup", "/"))
        value = req.get("value")
        engine = d.engine
        if root and what in blkio.NOT_ON_ROOT:
            raise NotFound(f"{what}: not in the root cgroup (as in cgroup v2): the root's group"
                           " on each device is its default group (blkio.settings)")  # fmt: skip
        if value is None:
            if what == "io.weight":
                return blkio.read_io_weight(engine, cgid, path, d.io_weight_defaults.get(cgid))
            if what == "io.max":
                return blkio.read_io_max(engine, cgid, path)
            if what == "io.stat":
                return blkio.read_io_stat(engine, cgid, root, path)
            if what == "id":
                return blkio.read_id(cgid)
            if what == "devices":
                return blkio.read_devices(engine)
            if what == "settings":
                return blkio.read_settings(engine, cgid, root, path)
            return blkio.read_stats(engine, cgid, root, path)
        if what in ("id", "io.stat"):
            name = what if what.startswith("io.") else f"blkio.{what}"
            raise AccessDenied(f"{name} is read-only")
        pid, uid, gid = self.cred
        admin = may_change(pid, uid, gid, d.config.admin_group)
        if what == "devices" and not admin:
            group = d.config.admin_group
            raise AccessDenied("Permission denied: writing blkio.devices needs root or"
                               f" membership of the admin group {group!r}")  # fmt: skip
        if not admin:
            try:
                owner = os.stat(directory).st_uid
            except OSError:
                owner = -1
            if uid != owner:
                log.warning("refused cgroup %s write to %s from pid %d uid %d", what,
                            directory, pid, uid)  # fmt: skip
                shown = what if what.startswith("io.") else f"blkio.{what}"
                raise AccessDenied(f"Permission denied: writing {shown} of {directory} needs"
                                   " root, the admin group or the cgroup's owner")  # fmt: skip
        if what == "stats":
            blkio.write_stats(engine, cgid, root, value)
            return ""
        if what == "io.max":
            blkio.write_io_max(engine, cgid, path, value, d.now())
            name = "io.max"
            if d.cgroups is not None:
                d.cgroups.remember(cgid, directory)
        elif what == "io.weight":
            blkio.write_io_weight(engine, cgid, path, value, d.io_weight_defaults, d.now())
            name = "io.weight"
            if d.cgroups is not None:
                d.cgroups.remember(cgid, directory)
        elif what == "devices":
            name = blkio.write_devices(engine, root, value, d.now())
        else:
            name = blkio.write_settings(engine, cgid, root, value, d.now(), path)
            if not root and d.cgroups is not None:
                d.cgroups.remember(cgid, directory)
        d.driver.pump()
        d.save_state()
        log.info("cgroup %s %s: %s (%s)", what, directory, value, name)
        return ""
