"""``ioband blkiofs MOUNTPOINT``: the blkio-cgroup files in a FUSE mirror of the cgroup tree.

dm-ioband's blkio-cgroup put ``blkio.id``, ``blkio.devices``, ``blkio.settings`` and
``blkio.stats`` in every cgroup directory; user space cannot add files to cgroupfs, so blkiofs
mounts a mirror of the daemon's hierarchy that has them (see ``fs.py``). Without
``--foreground`` the command returns once the file system is mounted and serves it in the
background; ``fusermount3 -u MOUNTPOINT`` or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ioband.control.client import SOCKET_ENV, Unreachable, call, socket_path
from ioband.errors import IobandError

PROG = "ioband blkiofs"
log = logging.getLogger("ioband.blkiofs")


def add_blkiofs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "blkiofs", help="mount the cgroup tree with the blkio-cgroup files (FUSE)",
        description="Mount at MOUNTPOINT a mirror of the daemon's cgroup hierarchy in which every "
        "directory also has blkio.id, blkio.devices, blkio.settings and blkio.stats, served by "
        "the running daemon. mkdir, rmdir, tasks and cgroup.procs act on the real cgroups. "
        "Returns once mounted (unless --foreground); stop it with `fusermount3 -u MOUNTPOINT` "
        "or SIGTERM. Needs root.")  # fmt: skip
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--socket", metavar="PATH",
                   help=f"the daemon's control socket (default ${SOCKET_ENV}, else "
                   "/run/ioband/control.sock)")  # fmt: skip
    p.add_argument("--hierarchy", metavar="auto|v1|v2|PATH",
                   help="the cgroup hierarchy to mirror (default: the daemon's)")  # fmt: skip
    p.add_argument("--foreground", action="store_true", help="serve in the foreground")
    p.add_argument("-v", "--verbose", action="store_true", help="log every change")
    p.set_defaults(func=cmd_blkiofs)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def _hierarchy(args: argparse.Namespace, sock: str) -> Path:
    """The mount point to mirror: the daemon's hierarchy, which ``--hierarchy`` must match."""
    info = call(sock, "info")
    theirs = info.get("cgroup_hierarchy") if isinstance(info, dict) else None
    if args.hierarchy is None:
        if not theirs:
            raise IobandError("the daemon has no cgroup hierarchy (daemon.cgroup_hierarchy)")
        return Path(theirs)
    from ioband.cgroup.proc import find_hierarchy

    mine = find_hierarchy(args.hierarchy)
    if mine is None:
        raise IobandError(f"--hierarchy {args.hierarchy}: no such cgroup hierarchy is mounted")
    if theirs and Path(theirs) != mine.mount:
        raise IobandError(f"--hierarchy {args.hierarchy} is {mine.mount}, but the daemon uses"
                          f" {theirs}: cgroup paths would not match")  # fmt: skip
    return mine.mount


def cmd_blkiofs(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        return _fail("must run as root (it mounts with allow_other and acts for other users)")
    if not os.path.isdir(args.mountpoint):
        return _fail(f"{args.mountpoint}: not a directory")
    sock = socket_path(args.socket)
    try:
        root = _hierarchy(args, sock)
    except Unreachable as err:
        return _fail(str(err))
    except IobandError as err:
        return _fail(err.describe())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ioband blkiofs: %(message)s")  # fmt: skip
    if args.foreground:
        return serve(args.mountpoint, root, sock)
    return _background(args.mountpoint, root, sock)


def _background(mountpoint: str, root: Path, sock: str) -> int:
    """Fork; the child mounts and serves, the parent returns once the mount is there (or
    reports why it is not)."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wr)
        with os.fdopen(rd, "rb") as f:
            word = f.read().decode(errors="replace")
        if not word.startswith("ok"):
            os.waitpid(pid, 0)
            return _fail(word or "the server exited before mounting")
        print(f"{PROG}: {os.path.abspath(mountpoint)} mounted (pid {pid})")
        return 0
    os.close(rd)
    os.setsid()
    status = 1
    try:
        status = serve(mountpoint, root, sock, ready_fd=wr)
    finally:
        os._exit(status)


def serve(mountpoint: str, root: Path, sock: str, ready_fd: int | None = None) -> int:
    """Mount, serve until unmounted or SIGTERM/SIGINT, unmount. ``ready_fd`` is told ``ok``
    once mounted (and the reason otherwise), then stdio is detached."""
    import pyfuse3
    import trio

    from ioband.blkiofs.fs import BlkioFS

    ops = BlkioFS(root, lambda op, **fields: call(sock, op, **fields))
    options = set(pyfuse3.default_options) | {"allow_other", "fsname=blkiofs", "subtype=ioband"}
    options.discard("default_permissions")
    try:
        pyfuse3.init(ops, mountpoint, options)
    except Exception as err:
        text = f"cannot mount {mountpoint}: {err}"
        if ready_fd is None:
            return _fail(text)
        os.write(ready_fd, text.encode())
        os.close(ready_fd)
        return 1
    if ready_fd is not None:
        os.write(ready_fd, b"ok")
        os.close(ready_fd)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    stopped = False

    async def run() -> None:
        nonlocal stopped
        import signal

        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                nonlocal stopped
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        stopped = True
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    except BaseException:
        log.exception("blkiofs stopped")
        pyfuse3.close(unmount=True)
        return 1
    # unmounted from outside (fusermount3 -u): nothing left to unmount
    pyfuse3.close(unmount=stopped)
    return 0


__all__ = ["add_blkiofs", "cmd_blkiofs", "serve"]
