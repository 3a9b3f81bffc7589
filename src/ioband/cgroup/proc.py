"""A process's identity from /proc: pgrp, uid, gid and its cgroup id.

The cgroup id is the inode number of the cgroup's directory (the kernel's cgroup id on v2), in
the v1 ``blkio`` hierarchy when it is mounted, else in the v2 unified hierarchy (PRODUCT.md §3,
``cgroup_hierarchy = "auto"``).
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ioband.core.request import Submitter
from ioband.errors import InvalidArgument


@dataclass(frozen=True)
class Hierarchy:
    """A mounted cgroup hierarchy: where it is and how /proc/<pid>/cgroup names it."""

    version: int  # 1 or 2
    mount: Path
    controller: str = ""  # v1: the controller whose line to read ("blkio")


def _mounts() -> list[tuple[str, str, str]]:
    """(fstype, mount point, super options) from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            if len(fields) >= 5 and len(rfields) >= 3:
                out.append((rfields[0], fields[4], rfields[2]))
    return out


@lru_cache(maxsize=8)
def find_hierarchy(setting: str = "auto") -> Hierarchy | None:
    """``auto``: v1 blkio if mounted, else v2; ``v1``/``v2``; or a mount point."""
    mounts = _mounts()
    v1 = next((Path(m) for t, m, o in mounts if t == "cgroup" and "blkio" in o.split(",")), None)
    v2 = next((Path(m) for t, m, _ in mounts if t == "cgroup2"), None)
    if setting == "auto":
        if v1 is not None:
            return Hierarchy(1, v1, "blkio")
        return Hierarchy(2, v2) if v2 is not None else None
    if setting == "v1":
        return Hierarchy(1, v1, "blkio") if v1 is not None else None
    if setting == "v2":
        return Hierarchy(2, v2) if v2 is not None else None
    path = Path(setting)
    for t, m, o in mounts:
        if Path(m) == path:
            if t == "cgroup2":
                return Hierarchy(2, path)
            if t == "cgroup":
                return Hierarchy(1, path, "blkio" if "blkio" in o.split(",") else o.split(",")[-1])
    raise InvalidArgument(
        f"cgroup_hierarchy: {setting!r} is not auto, v1, v2 or a mounted cgroup hierarchy"
    )


def cgroup_path(pid: int, hierarchy: Hierarchy) -> str | None:
    """The process's cgroup path inside ``hierarchy`` (``/`` for the root), None if gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if hierarchy.version == 2 and controllers == "":
            return path
        if hierarchy.version == 1 and hierarchy.controller in controllers.split(","):
            return path
    return None


def cgroup_id(path: str, hierarchy: Hierarchy) -> int | None:
    """The id ioband uses for a cgroup: its directory's inode number."""
    try:
        return os.stat(hierarchy.mount / path.lstrip("/")).st_ino
    except OSError:
        return None


def process_group(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # pid (comm) state ppid pgrp ...: comm may contain spaces and parentheses
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[2])


_READ = "read"  # identity(): no cgroup path given, read it from /proc


def identity(
    pid: int,
    uid: int,
    gid: int,
    hierarchy: Hierarchy | None,
    *,
    client: int | None = None,
    path: str | None = _READ,
) -> Submitter:
    """Everything classification needs about process ``pid`` (credentials as the kernel gave
    them, e.g. SO_PEERCRED). ``path``: its cgroup path when the caller has read it already
    (None: unknown)."""
    pgrp = process_group(pid)
    cg = 0
    if hierarchy is not None:
        if path is _READ:
            path = cgroup_path(pid, hierarchy)
        if path is not None:
            cg = cgroup_id(path, hierarchy) or 0
    return Submitter(pid=pid, pgrp=pgrp if pgrp is not None else pid, uid=uid, gid=gid,
                     cgroup=cg, client=client, cgroup_path=relative(path))  # fmt: skip


def relative(path: str | None) -> str | None:
    """``/machine.slice/vm1.scope`` as /proc writes it -> ``machine.slice/vm1.scope``, the form
    group keys take (None for the root cgroup or an unknown one)."""
    return "/".join(p for p in path.split("/") if p) or None if path else None


_PEERCRED = struct.Struct("3i")
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5
_MAX_GROUPS = 65536


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected a unix socket, as the kernel saw it."""
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


def peer_groups(sock: socket.socket, pid: int) -> frozenset[int]:
    """The supplementary groups of a unix socket's peer at connect time (SO_PEERGROUPS), so a
    process that exits and has its pid reused cannot lend another process's groups; /proc on
    older kernels."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_GROUPS)
    except OSError:
        return frozenset(process_groups(pid))
    return frozenset(array.array("I", raw[: len(raw) // 4 * 4]))


def process_groups(pid: int) -> set[int]:
    """The supplementary groups of a live process (empty when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def peer_cgroup(sock: socket.socket, pid: int, hierarchy: Hierarchy | None) -> str | None:
    """The cgroup path of a unix socket's peer, or None when it cannot be known for sure.

    /proc/<pid>/cgroup is read while a pidfd of the peer (SO_PEERPIDFD, pinned at connect
    time) shows it alive: had it exited, its pid could name another process by now."""
    if hierarchy is None:
        return None
    try:
        pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        pidfd = -1
    try:
        path = cgroup_path(pid, hierarchy)
        if pidfd >= 0:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if poller.poll(0):  # readable: the process has exited
                return None
        return path
    finally:
        if pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(pidfd)
