"""The blkiofs file system: the real cgroup tree plus ``blkio.id/devices/settings/stats`` in
every directory (dm-ioband-interface.md §6), and cgroup v2's ``io.weight``, ``io.max`` (not in
the root, as in v2) and ``io.stat`` beside them, as pyfuse3 Operations. On a v2 hierarchy whose
io controller is enabled, ioband's io.* files stand in front of the kernel's.

User space cannot add files to cgroupfs, so blkiofs mirrors it. The four blkio files are served
by the daemon (the control socket's ``cgroup`` op); everything else is the real cgroup
directory: ``mkdir``/``rmdir`` make and remove real cgroups, ``tasks``/``cgroup.procs`` move real
processes. blkiofs runs as root and decides permissions itself (mounted without
``default_permissions``):

* blkio files: reads are open to everyone; a write goes to the daemon with the credentials of
  the process that opened the file (the ``as`` field), and the daemon decides (root or the
  admin group for ``blkio.devices``, also the cgroup directory's owner for ``settings`` and
  ``stats``). Each write() is one command, answered from write() itself (direct I/O), with the
  daemon's errno (EACCES, ENODEV, EINVAL, ...); a refused write changes nothing.
* real files and directories: the mode bits of the real file, checked as the kernel would for
  the caller's uid, gid and supplementary groups; then done as root. A cgroup made by a user
  other than root is given to that user, as cgroupfs does. Moving a process through ``tasks``
  or ``cgroup.procs`` also needs, for a caller other than root, the process's uid or saved uid
  (cgroup v1's rule).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from ioband.cgroup.proc import process_groups
from ioband.control.client import Unreachable
from ioband.errors import IobandError

log = logging.getLogger("ioband.blkiofs")

#: the files blkiofs adds to every cgroup directory -> the ``cgroup`` op's ``file``
VIRTUAL = {"blkio.id": "id", "blkio.devices": "devices", "blkio.settings": "settings",
           "blkio.stats": "stats", "io.weight": "io.weight", "io.max": "io.max",
           "io.stat": "io.stat"}  # fmt: skip
NOT_ON_ROOT = ("io.weight", "io.max")  # as in cgroup v2
READ_ONLY = ("id", "io.stat")
DELEGATED = ("settings", "stats", "io.weight", "io.max")  # owned by the cgroup's owner
PROCS_FILES = ("tasks", "cgroup.procs")
R, W, X = os.R_OK, os.W_OK, os.X_OK

Cred = tuple[int, int, int]  # pid, uid, gid of the calling process
Call = Callable[..., Any]  # ioband.control.client.call bound to the daemon's socket


@dataclass(frozen=True)
class Node:
    """What an inode number stands for: a path under the hierarchy ("" is its root), and for
    the blkio files the ``cgroup`` op file they are."""

    path: str
    virtual: str | None = None

    def child(self, name: str) -> str:
        return f"{self.path}/{name}" if self.path else name


@dataclass
class Handle:
    node: Node
    cred: Cred
    fd: int | None = None  # real files
    content: bytes | None = None  # blkio files: what the last read at offset 0 fetched
    entries: list[str] = field(default_factory=list)  # directories


def _cred(ctx: pyfuse3.RequestContext) -> Cred:
    return ctx.pid, ctx.uid, ctx.gid


def permitted(st: os.stat_result, cred: Cred, want: int) -> bool:
    """The kernel's mode-bit check (``generic_permission``) for the caller ``cred``."""
    pid, uid, gid = cred
    mode = st.st_mode
    if uid == 0:  # root passes, except execute when no x bit is set on a non-directory
        return not (want & X) or stat.S_ISDIR(mode) or bool(mode & 0o111)
    if uid == st.st_uid:
        bits = (mode >> 6) & 7
    elif gid == st.st_gid or st.st_gid in process_groups(pid):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & want == want


def _uids(pid: int) -> tuple[int, ...]:
    """(real, effective, saved, fs) uids of a process; ESRCH when there is none."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return tuple(int(u) for u in line.split()[1:])
    except (OSError, ValueError):
        pass
    raise pyfuse3.FUSEError(errno.ESRCH)


def _fail(err: OSError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(err.errno or errno.EIO)


class BlkioFS(pyfuse3.Operations):
    """The mirror of the cgroup hierarchy at ``root``; ``call(op, **fields)`` asks the daemon."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, root: Path, call: Call) -> None:
        super().__init__()
        self.root = root
        self.call = call
        self._nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node("")}
        self._inos: dict[Node, int] = {Node(""): pyfuse3.ROOT_INODE}
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1

    # -- inodes and attributes -----------------------------------------------------------------
    def _ino(self, node: Node) -> int:
        ino = self._inos.get(node)
        if ino is None:
            ino = self._inos[node] = self._next_ino
            self._nodes[ino] = node
            self._next_ino += 1
        return ino

    def _node(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _real(self, path: str) -> Path:
        return self.root / path if path else self.root

    def _stat(self, node: Node) -> os.stat_result:
        """The real file's stat; for a blkio file, its directory's."""
        try:
            return os.lstat(self._real(node.path))
        except OSError as err:
            raise _fail(err) from None

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        st = self._stat(node)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self._ino(node)
        attr.entry_timeout = attr.attr_timeout = 0  # the real tree changes under us
        if node.virtual is None:
            attr.st_mode, attr.st_nlink, attr.st_size = st.st_mode, st.st_nlink, st.st_size
            attr.st_uid, attr.st_gid, attr.st_rdev = st.st_uid, st.st_gid, st.st_rdev
        else:  # like cgroupfs: blkio.id read-only, devices root's, settings/stats delegated
            attr.st_mode = stat.S_IFREG | (0o444 if node.virtual in READ_ONLY else 0o644)
            attr.st_nlink, attr.st_size = 1, 0
            owned = node.virtual in DELEGATED
            attr.st_uid, attr.st_gid = (st.st_uid, st.st_gid) if owned else (0, 0)
        attr.st_blksize, attr.st_blocks = 4096, 0
        attr.st_atime_ns, attr.st_mtime_ns, attr.st_ctime_ns = (
            st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)  # fmt: skip
        return attr

    def _dir(self, ino: int, cred: Cred, want: int) -> tuple[Node, os.stat_result]:
        node = self._node(ino)
        st = self._stat(node)
        if node.virtual is not None or not stat.S_ISDIR(st.st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if not permitted(st, cred, want):
            raise pyfuse3.FUSEError(errno.EACCES)
        return node, st

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:  # fmt: skip
        parent, _ = self._dir(parent_inode, _cred(ctx), X)
        text = os.fsdecode(name)
        if text in VIRTUAL:
            if not parent.path and text in NOT_ON_ROOT:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(Node(parent.path, VIRTUAL[text]))
        return self._attr(Node(parent.child(text)))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # fmt: skip
        """Truncation is ignored (``echo > file`` opens with O_TRUNC, as on cgroupfs); chmod
        by the owner or root and chown by root reach the real file; blkio files keep theirs."""
        node = self._node(inode)
        _, uid, _ = _cred(ctx)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            if node.virtual is not None:
                raise pyfuse3.FUSEError(errno.EPERM)
            real = self._real(node.path)
            st = self._stat(node)
            try:
                if fields.update_uid or fields.update_gid:
                    if uid != 0:
                        raise pyfuse3.FUSEError(errno.EPERM)
                    os.lchown(real, attr.st_uid if fields.update_uid else -1,
                              attr.st_gid if fields.update_gid else -1)  # fmt: skip
                if fields.update_mode:
                    if uid not in (0, st.st_uid):
                        raise pyfuse3.FUSEError(errno.EPERM)
                    os.chmod(real, stat.S_IMODE(attr.st_mode))
            except OSError as err:
                raise _fail(err) from None
        return self._attr(node)

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        node = self._node(inode)
        if node.virtual is None:
            return permitted(self._stat(node), _cred(ctx), mode)
        return not (mode & X) and not (mode & W and node.virtual in READ_ONLY)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # -- directories: the real cgroups -------------------------------------------------------
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node, _ = self._dir(inode, _cred(ctx), R)
        try:
            names = sorted(os.listdir(self._real(node.path)))
        except OSError as err:
            raise _fail(err) from None
        virtual = [n for n in VIRTUAL if node.path or n not in NOT_ON_ROOT]
        names = [n for n in names if n not in VIRTUAL] + virtual
        return self._new_handle(Handle(node, _cred(ctx), entries=names))

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        h = self._handles[fh]
        for i in range(start_id, len(h.entries)):
            name = h.entries[i]
            node = Node(h.node.path, VIRTUAL[name]) if name in VIRTUAL else Node(
                h.node.child(name))  # fmt: skip
            try:
                attr = self._attr(node)
            except pyfuse3.FUSEError:
                continue  # removed since opendir
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # fmt: skip
        """A real cgroup; made by a user other than root, it is that user's (as cgroupfs's
        ``cgroup_kn_set_ugid`` does for the directory and its files)."""
        cred = _cred(ctx)
        parent, _ = self._dir(parent_inode, cred, W | X)
        text = os.fsdecode(name)
        if text in VIRTUAL:
            raise pyfuse3.FUSEError(errno.EEXIST)
        real = self._real(parent.child(text))
        try:
            os.mkdir(real, mode & ~ctx.umask & 0o7777)
            if cred[1] != 0:
                os.chown(real, cred[1], cred[2])
                for entry in os.scandir(real):
                    if entry.is_file(follow_symlinks=False):
                        os.chown(entry.path, cred[1], cred[2])
        except OSError as err:
            raise _fail(err) from None
        log.info("mkdir %s (uid %d)", real, cred[1])
        return self._attr(Node(parent.child(text)))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Removes the real cgroup; the daemon then detaches its groups (§6.6)."""
        cred = _cred(ctx)
        parent, _ = self._dir(parent_inode, cred, W | X)
        text = os.fsdecode(name)
        if text in VIRTUAL:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        try:
            os.rmdir(self._real(parent.child(text)))
        except OSError as err:
            raise _fail(err) from None
        log.info("rmdir %s (uid %d)", self._real(parent.child(text)), cred[1])

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rename(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:  # fmt: skip
        raise pyfuse3.FUSEError(errno.EACCES)  # cgroupfs has no way to create a file

    # -- files ---------------------------------------------------------------------------------
    def _new_handle(self, h: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        return fh

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:  # fmt: skip
        """Direct I/O on every file: each write() reaches us and answers with its errno, and
        reads are not cut short by the size-0 attributes."""
        node = self._node(inode)
        cred = _cred(ctx)
        acc = flags & os.O_ACCMODE
        want = {os.O_RDONLY: R, os.O_WRONLY: W}.get(acc, R | W)
        if node.virtual is not None:
            if want & W and node.virtual in READ_ONLY:
                raise pyfuse3.FUSEError(errno.EACCES)
            self._stat(node)  # ENOENT once the cgroup is gone
            h = Handle(node, cred)
        else:
            st = self._stat(node)
            if stat.S_ISDIR(st.st_mode):
                raise pyfuse3.FUSEError(errno.EISDIR)
            if not permitted(st, cred, want):
                raise pyfuse3.FUSEError(errno.EACCES)
            keep = os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK
            try:
                h = Handle(node, cred, fd=os.open(self._real(node.path), flags & keep))
            except OSError as err:
                raise _fail(err) from None
        return pyfuse3.FileInfo(fh=self._new_handle(h), direct_io=True, keep_cache=False)

    def _cgroup(self, node: Node) -> str:
        return "/" + node.path

    async def _ask(self, **fields: Any) -> Any:
        """One ``cgroup`` request to the daemon (in a thread: the socket is blocking)."""
        try:
            return await trio.to_thread.run_sync(lambda: self.call("cgroup", **fields))
        except IobandError as err:
            raise pyfuse3.FUSEError(getattr(errno, err.errno_name, errno.EINVAL)) from None
        except Unreachable as err:
            log.error("%s", err)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handles[fh]
        if h.fd is not None:
            try:
                return os.pread(h.fd, size, off)
            except OSError as err:
                raise _fail(err) from None
        if off == 0 or h.content is None:  # a fresh read: what the daemon says now
            text = await self._ask(file=h.node.virtual, cgroup=self._cgroup(h.node))
            h.content = str(text).encode()
        return h.content[off : off + size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles[fh]
        if h.fd is not None:
            data = buf
            if h.node.path.rpartition("/")[2] in PROCS_FILES:
                data = self._procs_write(h.cred, buf)
            try:
                os.write(h.fd, data)
            except OSError as err:
                raise _fail(err) from None
            return len(buf)
        try:
            value = buf.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        pid, uid, gid = h.cred
        await self._ask(file=h.node.virtual, cgroup=self._cgroup(h.node), value=value,
                        **{"as": {"pid": pid, "uid": uid, "gid": gid}})  # fmt: skip
        log.info("%s of %s: %r (uid %d)", h.node.virtual, self._cgroup(h.node), value, uid)
        return len(buf)

    @staticmethod
    def _procs_write(cred: Cred, buf: bytes) -> bytes:
        """A write to ``tasks``/``cgroup.procs`` as cgroupfs would take it from the caller:
        ``0`` is the caller itself (not blkiofs), and a caller other than root may move only
        processes whose real or saved uid is its own (cgroup v1's rule)."""
        words = buf.split()
        if len(words) != 1:
            raise pyfuse3.FUSEError(errno.EINVAL)
        try:
            pid = int(words[0])
        except ValueError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        if pid < 0:
            raise pyfuse3.FUSEError(errno.EINVAL)
        pid = pid or cred[0]
        if cred[1] != 0:
            uids = _uids(pid)
            if cred[1] not in (uids[0], uids[2]):
                raise pyfuse3.FUSEError(errno.EACCES)
        return b"%d\n" % pid

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is not None and h.fd is not None:
            os.close(h.fd)
