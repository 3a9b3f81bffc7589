"""A running daemon with one directory device mounted with FUSE, for the FUSE tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ioband.control.config import load_config
from ioband.control.embedded import EmbeddedDaemon
from tests.conftest import require_real


def fuse_prerequisites() -> None:
    require_real(os.geteuid() == 0, "needs root (FUSE mounts with allow_other)")
    require_real(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    require_real(shutil.which("fusermount3") is not None, "fusermount3 (Debian fuse3) is missing")
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        require_real(False, "pyfuse3 is not installed")


@dataclass
class Mounted:
    daemon: EmbeddedDaemon
    backing: Path
    mnt: Path
    name: str = "files1"


def unmount(path: Path) -> None:
    with contextlib.suppress(Exception):
        if subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0:
            subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)


@contextlib.contextmanager
def mounted(
    tmp_path: Path,
    *,
    policy: str = "pid weight 0 :100",
    extra: str = "",
    backing: Path | None = None,
    control_socket: bool = False,
) -> Iterator[Mounted]:
    """A daemon (in this process, on its own thread) serving ``backing`` at a fresh mount
    point. ``extra``: more TOML lines for the device (e.g. ``writeback_cache = true``)."""
    fuse_prerequisites()
    backing = backing or tmp_path / "backing"
    backing.mkdir(exist_ok=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    control = f'control_socket = "{run}/control.sock"\n' if control_socket else ""
    config = load_config(
        f'[daemon]\n{control}state_file = ""\n[nbd]\nunix_socket = "{run}/nbd.sock"\n'
        f'[[device]]\nname = "files1"\ntable = "0 0 ioband {backing} 1 0 0 {policy}"\n'
        f'mountpoint = "{mnt}"\n{extra}\n'
    )
    daemon = EmbeddedDaemon(config)
    try:
        daemon.start()
        yield Mounted(daemon, backing, mnt)
    finally:
        daemon.stop()
        unmount(mnt)
