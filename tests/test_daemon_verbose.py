"""``ioband daemon -v`` ("log every connection") logs every NBD connection, its export and its
end, and every control connection; without ``-v`` none of them (a real daemon, real clients)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_real
from tests.control_helpers import sock_dir


def run_daemon(tmp_path: Path, *flags: str) -> str:
    """Start the daemon, connect twice over NBD (qemu-io) and once to the control socket, stop
    it; its log."""
    qemu_io = shutil.which("qemu-io")
    require_real(qemu_io is not None, "qemu-io is not installed (scripts/install.sh installs it)")
    sockets = sock_dir()
    nbd, control = f"{sockets}/nbd.sock", f"{sockets}/control.sock"
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    config = tmp_path / "ioband.toml"
    config.write_text(
        f'[daemon]\ncontrol_socket = "{control}"\nstate_file = ""\n'
        f'[nbd]\nunix_socket = "{nbd}"\n'
        f'[[device]]\nname = "ioband1"\ntable = "0 2048 ioband {disk} 1 0 0 none weight 0 :40"\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "ioband", "daemon", "--config", str(config),
                             *flags], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (Path(nbd).exists() and Path(control).exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"daemon did not start: {proc.stderr.read()}")
            time.sleep(0.05)
        for cmd in ("write -P 7 0 64k", "read -P 7 0 64k"):
            subprocess.run([qemu_io, "-f", "raw", "-c", cmd, f"nbd+unix:///ioband1?socket={nbd}"],
                           check=True, capture_output=True, timeout=60)  # fmt: skip
        subprocess.run([sys.executable, "-m", "ioband", "ls", "--socket", control], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        time.sleep(0.3)  # the close of the last connection reaches the loop
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return err


def test_verbose_logs_every_connection(tmp_path):
    log = run_daemon(tmp_path, "-v")
    opened = [ln for ln in log.splitlines() if "NBD connection from uid 0" in ln]
    assert sum(ln.endswith("export 'ioband1' (read-write)") for ln in opened) == 2, log
    assert sum("closed: " in ln for ln in opened) == 2, log
    assert sum(re.search(r"NBD connection from uid 0 \(pid \d+\)$", ln) is not None
               for ln in opened) == 2, log  # fmt: skip
    assert "control connection from pid" in log


def test_quiet_without_verbose(tmp_path):
    log = run_daemon(tmp_path)
    assert "NBD connection from" not in log and "control connection" not in log
    assert "export(s) on" in log  # the usual start-up lines are there
