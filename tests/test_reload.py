"""SIGHUP re-reads the configuration file of ``ioband daemon``: differences are applied, an
invalid file is refused as a whole and the running state kept."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ioband.control.client import Unreachable, call
from tests.control_helpers import PYTHON, backing, sock_dir

SECTORS = 8192


def write_config(path: Path, sockets: str, state: str, devices: list[tuple[str, str, list]]):
    lines = ["[daemon]", f'control_socket = "{sockets}/control.sock"', f'state_file = "{state}"',
             "[nbd]", f'unix_socket = "{sockets}/nbd.sock"']  # fmt: skip
    for name, table, messages in devices:
        lines += ["[[device]]", f'name = "{name}"', f'table = "{table}"',
                  "messages = [" + ", ".join(f'"{m}"' for m in messages) + "]"]  # fmt: skip
    tmp = path.with_suffix(".new")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file


def tables(sock: str) -> dict[str, str]:
    return {item["name"]: item["table"] for item in call(sock, "table")}


def tables_with(sock: str, name: str):
    return lambda: tb if name in (tb := tables(sock)) else None


def wait_for(fn, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
        except (Unreachable, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture
def setup(tmp_path: Path):
    sockets = sock_dir()
    disks = {n: backing(tmp_path, n, SECTORS) for n in ("d1", "d2", "d3")}
    procs = []

    def start(config: Path) -> subprocess.Popen:
        log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([PYTHON, "-m", "ioband", "daemon", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(proc)
        wait_for(lambda: call(f"{sockets}/control.sock", "info"))
        return proc

    yield sockets, disks, start, tmp_path
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    shutil.rmtree(sockets, ignore_errors=True)


def t(disk: str, dg: int, weight: str, gtype: str = "none") -> str:
    return f"0 {SECTORS} ioband {disk} {dg} 0 0 {gtype} weight 0 {weight}"


def test_sighup_applies_differences(setup):
    sockets, disks, start, tmp = setup
    config, sock = tmp / "ioband.toml", f"{sockets}/control.sock"
    write_config(config, sockets, "", [
        ("ioband1", t(disks["d1"], 1, ":40", "user"), ["attach 1000", "weight 1000:20"]),
        ("ioband2", t(disks["d2"], 2, ":10"), []),
    ])  # fmt: skip
    proc = start(config)
    before = tables(sock)
    assert set(before) == {"ioband1", "ioband2"}
    assert before["ioband1"].endswith(":40 1000:20")
    # changed, removed, added
    write_config(config, sockets, "", [
        ("ioband1", t(disks["d1"], 1, ":70", "user"), ["attach 1000", "weight 1000:30"]),
        ("ioband3", t(disks["d3"], 3, ":5"), []),
    ])  # fmt: skip
    proc.send_signal(signal.SIGHUP)
    after = wait_for(tables_with(sock, "ioband3"))
    assert set(after) == {"ioband1", "ioband3"}
    assert after["ioband1"].endswith(":70 1000:30")
    # an invalid file (TOML) and an invalid table: refused as a whole, nothing changes
    log = tmp / "daemon.log"
    config.write_text("[daemon\n")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log.read_text().count("reload refused") >= 1)
    write_config(config, sockets, "", [
        ("ioband1", t(disks["d1"], 1, ":99", "user"), []),
        ("ioband4", f"0 {SECTORS} ioband {disks['d2']} 4 0 0 none nosuchpolicy 0 :5", []),
    ])  # fmt: skip
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log.read_text().count("reload refused") >= 2)
    assert tables(sock) == after
    assert "device[1].table" in log.read_text()
    assert proc.poll() is None
    proc.terminate()
    assert proc.wait(30) == 0


def test_sighup_with_a_state_file_says_state_wins(setup):
    sockets, disks, start, tmp = setup
    config, sock = tmp / "ioband.toml", f"{sockets}/control.sock"
    state = str(tmp / "state.json")
    write_config(config, sockets, state, [("ioband1", t(disks["d1"], 1, ":40"), [])])
    proc = start(config)
    call(sock, "message", name="ioband1", words=["weight", "60"])  # a run-time change
    write_config(config, sockets, state, [
        ("ioband1", t(disks["d1"], 1, ":40"), []),
        ("ioband2", t(disks["d2"], 2, ":10"), []),
    ])  # fmt: skip
    proc.send_signal(signal.SIGHUP)
    after = wait_for(tables_with(sock, "ioband2"))
    assert after["ioband1"].endswith(" :60")  # unchanged in the file: the run-time state stays
    log = (tmp / "daemon.log").read_text()
    assert "the state wins" in log
    assert "ioband2" in Path(state).read_text()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
