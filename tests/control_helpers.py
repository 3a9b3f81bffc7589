"""Shared set-up of the control-plane tests: a daemon with a control socket, and the CLI run
in-process against it (``ioband.cli.main``), or as a separate process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioband.cli import main
from ioband.control.config import Config, load_config
from ioband.control.daemon import Daemon
from ioband.control.embedded import EmbeddedDaemon
from ioband.errors import IobandError

PYTHON = sys.executable


def sock_dir() -> str:
    """A short, world-reachable directory for the sockets (unix socket paths are limited)."""
    path = tempfile.mkdtemp(dir="/tmp", prefix="ioband-ctl-")
    os.chmod(path, 0o755)
    return path


def backing(directory: Path, name: str, sectors: int) -> str:
    """A sparse backing file of ``sectors`` sectors."""
    path = directory / name
    with open(path, "wb") as f:
        f.truncate(sectors * 512)
    return str(path)


def config_data(sockets: str, state: str | None, **daemon: Any) -> dict[str, Any]:
    section = {"control_socket": f"{sockets}/control.sock", **daemon}
    if state is not None:
        section["state_file"] = state
    return {"daemon": section, "nbd": {"unix_socket": f"{sockets}/nbd.sock"}}


@dataclass
class Ctl:
    embedded: EmbeddedDaemon
    socket: str

    def run(self, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        """``ioband ARGV --socket ...`` in this process: (exit status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        old_stdin = sys.stdin
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main([argv[0], "--socket", self.socket, *argv[1:]])
                except SystemExit as exc:  # argparse
                    rc = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdin = old_stdin
        return rc, out.getvalue(), err.getvalue()

    def ok(self, *argv: str, stdin: str | None = None) -> str:
        rc, out, err = self.run(*argv, stdin=stdin)
        assert rc == 0, (argv, rc, err)
        assert err == ""
        return out


@contextlib.contextmanager
def control_daemon(state: str | None = None, **daemon: Any) -> Iterator[Ctl]:
    sockets = sock_dir()
    try:
        with EmbeddedDaemon(load_config(config_data(sockets, state, **daemon))) as embedded:
            yield Ctl(embedded, f"{sockets}/control.sock")
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def start_error(config: Config) -> IobandError:
    """The error a daemon with ``config`` refuses to start with (it must refuse)."""

    async def main() -> None:
        daemon = Daemon(config)
        try:
            await daemon.start()
        finally:
            await daemon.close()

    try:
        asyncio.run(main())
    except IobandError as err:
        return err
    raise AssertionError("the daemon started")
