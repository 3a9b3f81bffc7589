"""SIGHUP re-reads the configuration file of ``ioband daemon``: differences are applied, an
invalid file is refused as a whole and the running state kept."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ioband.control.client import Unreachable, call
from ioband.control.config import load_config
from ioband.control.embedded import EmbeddedDaemon
from ioband.errors import EXIT_STATUS
from tests.conftest import require_real
from tests.control_helpers import PYTHON, backing, sock_dir
from tests.test_control_permissions import as_user

SECTORS = 8192
FIO_SECTORS = 65536  # 32 MiB


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
    saved = {d["name"]: d["table"] for d in json.loads(Path(state).read_text())["devices"]}
    assert saved["ioband1"].endswith(" :60") and "ioband2" in saved  # the merge, persisted
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0


def status_writes(sock: str, name: str) -> dict[int, int]:
    """Writes done per group, from the legacy status line (id, reads, delayed reads, read
    sectors, writes, delayed writes, write sectors)."""
    words = call(sock, "status", name=name)[0]["status"].split()[4:]
    return {int(words[i]): int(words[i + 4]) for i in range(0, len(words), 7)}


def test_sighup_under_fio_drops_no_client(setup):
    """One weight changed in the file and SIGHUP while fio writes and verifies through the
    export: fio sees no error, the new weight is in the table, a weight set at run time on
    another group survives and the counters go on growing (nothing was re-created)."""
    require_real(shutil.which("fio") is not None, "fio is not installed")
    sockets, disks, start, tmp = setup
    config, sock = tmp / "ioband.toml", f"{sockets}/control.sock"
    disk = backing(tmp, "big", FIO_SECTORS)
    devices = [("ioband1", f"0 {FIO_SECTORS} ioband {disk} 1 0 0 user weight 0 :40 0:20 1000:10",
                []), ("ioband2", t(disks["d2"], 2, ":10"), [])]  # fmt: skip
    write_config(config, sockets, "", devices)
    proc = start(config)
    call(sock, "message", name="ioband1", words=["weight", "1000:55"])  # run time, not in the file
    fio = subprocess.Popen(
        ["fio", "--name=reload", "--ioengine=nbd",
         f"--uri=nbd+unix:///ioband1?socket={sockets}/nbd.sock", "--rw=randwrite", "--bs=4k",
         "--iodepth=8", "--size=24M", "--rate=,6m", "--verify=crc32c", "--do_verify=1",
         "--verify_state_save=0", "--output-format=json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = wait_for(lambda: (w := status_writes(sock, "ioband1"))[0] > 100 and w)
        devices[0] = ("ioband1", devices[0][1].replace(" 0:20 ", " 0:30 "), [])
        write_config(config, sockets, "", devices)
        proc.send_signal(signal.SIGHUP)
        table = wait_for(lambda: (tb := tables(sock)["ioband1"]).endswith(" 0:30 1000:55") and tb)
        assert fio.poll() is None, "fio ended before the reload: make it longer"
        out, err = fio.communicate(timeout=120)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    assert fio.returncode == 0, err
    job = json.loads(out[out.index("{") :])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] == 24 << 20
    assert ":40 0:30 1000:55" in table
    after = status_writes(sock, "ioband1")
    assert after[0] >= 6144 > first[0]  # every 4 KiB write counted, those before the reload too
    log = (tmp / "daemon.log").read_text()
    assert "reload: message ioband1: weight 0:30" in log and "re-create" not in log
    proc.terminate()
    assert proc.wait(30) == 0


def test_reload_command(setup):
    """``ioband reload``: what was applied, ``--json``; a refused file changes nothing and the
    error names the device and key; an unprivileged caller is refused (EACCES)."""
    sockets, disks, start, tmp = setup
    config, sock = tmp / "ioband.toml", f"{sockets}/control.sock"
    write_config(config, sockets, "", [
        ("ioband1", t(disks["d1"], 1, ":40 1000:20", "user"), []),
        ("ioband2", t(disks["d2"], 2, ":10"), []),
    ])  # fmt: skip
    proc = start(config)
    env = {**os.environ, "IOBAND_SOCKET": sock}

    def ioband(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "ioband", *argv], capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip

    run = ioband("reload")
    assert run.returncode == 0 and run.stdout == "nothing to change\n", run.stderr
    write_config(config, sockets, "", [
        ("ioband1", t(disks["d1"], 1, ":40 1000:25", "user"), []),
        ("ioband2", t(disks["d3"], 2, ":10"), []),
    ])  # fmt: skip
    run = ioband("reload", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["applied"] is True
    assert result["messages"] == [{"device": "ioband1", "message": "weight 1000:25",
                                   "why": "the file changed it: group 1000 20 -> 25"}]  # fmt: skip
    assert result["recreated"] == {"ioband2": [
        f"table: the backing store changed: {disks['d2']!r} -> {disks['d3']!r}"]}  # fmt: skip
    assert tables(sock)["ioband1"].endswith(":40 1000:25")
    # refused: nothing changes, the error names the device and the key
    before = tables(sock)
    write_config(config, sockets, "", [
        ("ioband1", t(disks["d1"], 1, ":99 1000:25", "user"), ["attach x"]),
    ])  # fmt: skip
    run = ioband("reload")
    assert run.returncode == EXIT_STATUS["EINVAL"]
    assert run.stderr.startswith("ioband reload: reload refused, nothing changed: ")
    assert "device[0].messages[0]" in run.stderr and run.stderr.rstrip().endswith("(EINVAL)")
    assert tables(sock) == before
    # an unprivileged caller (not root, not in the admin group) changes nothing
    run = as_user(sock, "reload")
    assert run.returncode == EXIT_STATUS["EACCES"], run.stderr
    assert run.stderr.startswith("ioband reload: Permission denied")
    assert tables(sock) == before
    proc.terminate()
    assert proc.wait(30) == 0


def test_read_only_changes_in_place(tmp_path):
    """``read_only`` off: the store is opened read-write and new connections may write, while a
    read-only connection reads on; ``read_only`` on: new connections are read-only and open
    read-write ones are closed once drained (a writer must not keep writing). The device is
    never re-created: its counters go on."""
    qemu_io = shutil.which("qemu-io")
    require_real(qemu_io is not None, "qemu-io is not installed")
    path = backing(tmp_path, "a.img", SECTORS)
    sockets = sock_dir()

    def config(read_only: bool):
        return load_config({
            "nbd": {"unix_socket": f"{sockets}/nbd.sock"},
            "device": [{"name": "ioband1", "table": t(path, 1, ":10"), "read_only": read_only}],
        })  # fmt: skip

    uri = f"nbd+unix:///ioband1?socket={sockets}/nbd.sock"

    def qemu(*commands: str, ro: bool = False) -> str:
        argv = [qemu_io, "-f", "raw", *(["-r"] if ro else []), uri]
        for c in commands:
            argv += ["-c", c]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout

    def client(ro: bool) -> subprocess.Popen[str]:
        return subprocess.Popen([qemu_io, "-f", "raw", *(["-r"] if ro else []), uri],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip

    def ask(proc: subprocess.Popen[str], command: str) -> str:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        lines = [proc.stdout.readline()]  # qemu-io: "read 4096/4096 bytes ..." then "4 KiB, ..."
        while "ops;" not in lines[-1] and lines[-1]:
            lines.append(proc.stdout.readline())
        return "".join(lines)

    try:
        with EmbeddedDaemon(config(True)) as d:
            reader = client(ro=True)
            assert "read 4096/4096 bytes" in ask(reader, "read 0 4k")
            assert "wrote" not in qemu("write -P 0x11 0 4k")  # read-only
            assert d.call(lambda: d.daemon.reload(config(False)))
            assert "wrote 4096/4096 bytes" in qemu("write -P 0x22 0 4k")
            assert "read 4096/4096 bytes" in ask(reader, "read -P 0x22 0 4k")  # reads on
            writer = client(ro=False)
            assert "wrote 4096/4096 bytes" in ask(writer, "write -P 0x33 0 4k")
            writes = d.call(lambda: d.daemon.engine.status("ioband1")).split()[8]
            outcome = d.call(lambda: d.daemon.reload(config(True)))
            assert [str(o) for o in outcome.plan.options] == ["ioband1: read_only False -> True"]
            writer.stdin.write("write -P 0x44 0 4k\nquit\n")
            writer.stdin.flush()
            assert "wrote" not in writer.communicate(timeout=30)[0]  # closed
            assert "wrote" not in qemu("write -P 0x55 0 4k")
            assert "read 4096/4096 bytes" in qemu("read -P 0x33 0 4k", ro=True)
            status = d.call(lambda: d.daemon.engine.status("ioband1")).split()
            assert int(status[8]) == int(writes) and int(status[5]) >= 3  # not reset
            reader.kill()
            reader.wait()
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    with open(path, "rb") as f:
        assert f.read(4096) == b"\x33" * 4096
