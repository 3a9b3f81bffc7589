"""A device created through the CLI is an NBD export at once; I/O through it shows in
``ioband status``; ``ioband remove`` takes the export away."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import require_real
from tests.control_helpers import backing, control_daemon


def tool(name: str) -> str:
    path = shutil.which(name)
    require_real(path is not None, f"{name} is not installed (scripts/install.sh installs it)")
    return path  # type: ignore[return-value]


def test_create_exports_and_remove_unexports(tmp_path):
    nbdinfo, qemu_io = tool("nbdinfo"), tool("qemu-io")
    path = backing(tmp_path, "a.img", 8192)
    with control_daemon() as ctl:
        nbd_sock = ctl.embedded.config.unix_socket
        uri = f"nbd+unix:///ioband1?socket={nbd_sock}"
        ctl.ok("create", "ioband1", "--table", f"0 8192 ioband {path} 1 0 0 none weight 0 :10")
        info = subprocess.run([nbdinfo, "--size", uri], capture_output=True, text=True, timeout=30)
        assert info.returncode == 0 and info.stdout.strip() == str(8192 * 512), info.stderr
        io = subprocess.run([qemu_io, "-f", "raw", "-c", "write -P 0x5a 0 64k", uri],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
        assert io.returncode == 0, io.stderr
        status = ctl.ok("status", "ioband1").split()
        # "ioband1: 0 8192 ioband 1 -1 reads delayed sectors writes delayed sectors"
        assert status[5] == "-1" and int(status[9]) >= 1 and status[11] == "128"  # 64 KiB
        ctl.ok("remove", "ioband1")
        gone = subprocess.run([nbdinfo, "--size", uri], capture_output=True, text=True, timeout=30)
        assert gone.returncode != 0
    with open(path, "rb") as f:
        assert f.read(65536) == b"\x5a" * 65536


def test_remove_closes_connected_clients(tmp_path):
    qemu_io = tool("qemu-io")
    path = backing(tmp_path, "a.img", 8192)
    with control_daemon() as ctl:
        uri = f"nbd+unix:///ioband1?socket={ctl.embedded.config.unix_socket}"
        ctl.ok("create", "ioband1", "--table", f"0 8192 ioband {path} 1 0 0 none weight 0 :10")
        pipe = subprocess.PIPE
        client = subprocess.Popen([qemu_io, "-f", "raw", uri], stdin=pipe, stdout=pipe,
                                  stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            client.stdin.write("write -P 0x11 0 4k\n")
            client.stdin.flush()
            assert "wrote 4096/4096 bytes" in client.stdout.readline()
            ctl.ok("remove", "ioband1")
            client.stdin.write("write -P 0x22 0 4k\nquit\n")
            client.stdin.flush()
            rest = client.communicate(timeout=30)[0]
        finally:
            client.kill()
        assert "wrote 4096/4096 bytes" not in rest  # the connection was closed
        assert ctl.ok("ls") == "No devices found\n"
    with open(path, "rb") as f:
        assert f.read(4096) == b"\x11" * 4096
