"""The NBD server against real third-party clients: nbdinfo, nbdcopy, qemu-img, qemu-io, fio.

These need the Debian packages that scripts/install.sh installs; under CI
(IOBAND_REQUIRE_REAL=1) a missing client is a failure, elsewhere a skip that says why.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ioband.control.config import load_config
from ioband.control.embedded import EmbeddedDaemon
from ioband.nbd.server import client_id_of
from tests.conftest import require_real

SIZE = 64 << 20  # 64 MiB exports


def need(tool: str) -> str:
    path = shutil.which(tool)
    require_real(path is not None, f"{tool} is not installed (scripts/install.sh installs it)")
    return path  # type: ignore[return-value]


def run(*argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def daemon(tmp_path: Path):
    """A daemon with two exports over files, on a unix socket."""
    for name in ("disk1", "disk2"):
        with open(tmp_path / f"{name}.img", "wb") as f:
            f.truncate(SIZE)
    sock = tmp_path / "nbd.sock"
    config = load_config(
        {
            "nbd": {"unix_socket": str(sock)},
            "device": [
                {"name": "ioband1",
                 "table": f"0 {SIZE // 512} ioband {tmp_path}/disk1.img 1 0 0 user weight 0 :40"},
                {"name": "ioband2",
                 "table": f"0 {SIZE // 512} ioband {tmp_path}/disk2.img 1 0 0 none weight 0 :10",
                 "direct": True},
            ],
        }
    )  # fmt: skip
    with EmbeddedDaemon(config) as d:
        d.sock = str(sock)
        yield d


def uri(d, export: str = "ioband1") -> str:
    return f"nbd+unix:///{export}?socket={d.sock}"


def test_nbdinfo_shows_size_and_flags(daemon):
    need("nbdinfo")
    info = json.loads(run("nbdinfo", "--json", uri(daemon)).stdout)
    export = info["exports"][0]
    assert export["export-name"] == "ioband1"
    assert export["export-size"] == SIZE
    assert export["is_read_only"] is False
    assert export["can_flush"] and export["can_fua"] and export["can_trim"]
    assert export["can_zero"] and export["can_multi_conn"]
    listing = run("nbdinfo", "--list", "--json", f"nbd+unix://?socket={daemon.sock}").stdout
    assert {e["export-name"] for e in json.loads(listing)["exports"]} == {"ioband1", "ioband2"}


@pytest.mark.parametrize("export", ["ioband1", "ioband2"])  # buffered and O_DIRECT
def test_qemu_img_convert_in_and_out(daemon, tmp_path, export):
    need("qemu-img")
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(8 << 20) + bytes(4 << 20) + os.urandom(3 << 20))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri(daemon, export))
    out = tmp_path / "out.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri(daemon, export), str(out))
    data = out.read_bytes()
    assert len(data) == SIZE
    assert data[: src.stat().st_size] == src.read_bytes()
    assert data[src.stat().st_size :] == bytes(SIZE - src.stat().st_size)


@pytest.mark.parametrize("export", ["ioband1", "ioband2"])  # buffered and O_DIRECT (by AIO)
def test_qemu_io_patterns_discard_and_zero(daemon, export):
    need("qemu-io")
    cmds = [
        "write -P 0xab 0 1M", "read -P 0xab 0 1M",
        "write -P 0x5c 1M 4k", "read -P 0x5c 1M 4k", "read -P 0xab 4k 1020k",
        "write -z 64k 64k", "read -P 0 64k 64k", "read -P 0xab 128k 64k",
        "write -z -u 256k 64k", "read -P 0 256k 64k",
        "discard 512k 256k",
        "write -f -P 0x11 2M 64k", "flush", "read -P 0x11 2M 64k",
        "aio_write -P 0x21 4M 64k", "aio_write -P 0x22 5M 64k", "aio_flush",
        "read -P 0x21 4M 64k", "read -P 0x22 5M 64k",
    ]  # fmt: skip
    argv = ["qemu-io", "-f", "raw"]
    for c in cmds:
        argv += ["-c", c]
    result = run(*argv, uri(daemon, export))
    assert "Pattern verification failed" not in result.stdout + result.stderr
    assert result.stdout.count("read ") >= 8


def test_nbdcopy_round_trip(daemon, tmp_path):
    need("nbdcopy")
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(SIZE))
    aio = daemon.daemon.runtime.aio
    require_real(aio is not None, "Linux AIO (x86_64, fs.aio-max-nr not used up)")
    before = aio.started
    run("nbdcopy", str(src), uri(daemon, "ioband2"))
    # the O_DIRECT export's writes went by AIO, not through the threads (64 MiB in <= 32 MiB)
    assert aio.started - before >= 2
    run("nbdcopy", uri(daemon, "ioband2"), uri(daemon, "ioband1"))
    out = tmp_path / "out.raw"
    run("nbdcopy", uri(daemon, "ioband1"), str(out))
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("export", ["ioband1", "ioband2"])  # buffered and O_DIRECT (by AIO)
def test_fio_nbd_engine_verifies(daemon, export):
    need("fio")
    result = run(
        "fio", "--name=verify", "--ioengine=nbd", f"--uri={uri(daemon, export)}", "--rw=randwrite",
        "--bs=4k", "--iodepth=16", "--size=16M", "--verify=crc32c", "--do_verify=1",
        "--verify_state_save=0",
        "--output-format=json", timeout=300,
    )  # fmt: skip
    job = json.loads(result.stdout[result.stdout.index("{") :])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] == 16 << 20


def kill_mid_flight(target: str, commands: list[str], after: float) -> None:
    """qemu-io running ``commands`` against ``target``, killed ``after`` seconds in: a client
    that disappears with requests in flight."""
    argv = ["qemu-io", "-f", "raw"]
    for c in commands:
        argv += ["-c", c]
    proc = subprocess.Popen([*argv, target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    proc.kill()
    proc.wait()


def assert_served_after(target: str, pattern: int) -> None:
    """The next client writes and reads back 1 MiB at 32 MiB."""
    result = run("qemu-io", "-f", "raw", "-c", f"write -P {pattern:#x} 32M 1M", "-c",
                 f"read -P {pattern:#x} 32M 1M", target)  # fmt: skip
    assert "Pattern verification failed" not in result.stdout + result.stderr


def test_garbage_and_abrupt_disconnects_do_not_hurt_other_clients(daemon):
    need("qemu-io")
    for payload in (b"", b"\x00" * 7, os.urandom(300), b"IHAVEOPT" * 40):
        s = socket.socket(socket.AF_UNIX)
        s.connect(daemon.sock)
        s.recv(18)  # the greeting
        if payload:
            s.sendall(payload)
        s.close()
    # a client that disappears with requests in flight
    kill_mid_flight(uri(daemon), ["write -P 0x33 0 32M"], after=0.2)
    assert_served_after(uri(daemon), 0x44)


def test_o_direct_export_survives_a_shrunk_file_and_a_client_killed_mid_flight(daemon, tmp_path):
    """The AIO path's faults: a read past the end of a backing file that shrank under the
    export comes back short from the kernel and is redone by a thread, which answers zeros
    (as the thread path always did); a client killed with AIO reads and writes in flight
    leaves the daemon serving the next one."""
    need("qemu-io")
    image = tmp_path / "disk2.img"
    run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 60M 1M", uri(daemon, "ioband2"))
    os.truncate(image, 60 << 20)  # the last 4 MiB are gone
    result = run("qemu-io", "-f", "raw", "-c", "read -P 0 60M 1M", "-c", "read -P 0 59M 4k",
                 uri(daemon, "ioband2"))  # fmt: skip
    assert "Pattern verification failed" not in result.stdout + result.stderr
    os.truncate(image, SIZE)
    kill_mid_flight(uri(daemon, "ioband2"), ["aio_write -P 0x66 0 16M", "aio_read 16M 16M"],
                    after=0.1)  # fmt: skip
    assert_served_after(uri(daemon, "ioband2"), 0x77)
    aio = daemon.daemon.runtime.aio
    if aio is not None:
        deadline = time.monotonic() + 10
        while aio.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert aio.in_flight == 0  # nothing left behind by the killed client


def test_status_counts_what_the_clients_did(daemon):
    need("qemu-io")
    run("qemu-io", "-f", "raw", "-c", "write 0 1M", "-c", "read 0 1M", uri(daemon))
    status = daemon.call(lambda: daemon.daemon.engine.status("ioband1"))
    fields = status.split()
    # '0 <len> ioband 1 -1 <reads> <delayed> <read sectors> <writes> <delayed> <write sectors>'
    assert fields[4] == "-1"
    assert int(fields[7]) >= 2048 and int(fields[10]) >= 2048


@pytest.fixture
def tcp_daemon(tmp_path: Path):
    """Exports over TCP: one of type client, one of type user (not resolvable on TCP)."""
    for name in ("disk1", "disk2"):
        with open(tmp_path / f"{name}.img", "wb") as f:
            f.truncate(SIZE)
    config = load_config(
        {
            "nbd": {"unix_socket": "", "tcp": "127.0.0.1:0"},
            "device": [
                {"name": "byclient", "table":
                 f"0 {SIZE // 512} ioband {tmp_path}/disk1.img 1 0 0 client weight 0 :10 "
                 f"{client_id_of('127.0.0.1')}:40"},
                {"name": "byuser",
                 "table": f"0 {SIZE // 512} ioband {tmp_path}/disk2.img 1 0 0 user weight 0 :10"},
            ],
        }
    )  # fmt: skip
    with EmbeddedDaemon(config) as d:
        d.port = d.daemon.nbd.tcp_port
        yield d


def test_tcp_clients_are_classified_by_address(tcp_daemon):
    need("qemu-io")
    url = f"nbd://127.0.0.1:{tcp_daemon.port}/byclient"
    run("qemu-io", "-f", "raw", "-c", "write 0 64k", "-c", "read 0 64k", url)
    status = tcp_daemon.call(lambda: tcp_daemon.daemon.engine.status("byclient")).split()
    # default group first, then the client group 127.0.0.1 = 2130706433
    assert status[4] == "-1" and status[5] == "0"
    assert status[11] == "2130706433" and int(status[12]) >= 1 and int(status[15]) >= 1


def test_tcp_client_refused_where_its_identity_cannot_be_resolved(tcp_daemon):
    need("qemu-io")
    url = f"nbd://127.0.0.1:{tcp_daemon.port}/byuser"
    result = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 4k", url],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0
    assert "Denied by server" in result.stderr
    assert "'user', which is unknown for a TCP client" in result.stderr
