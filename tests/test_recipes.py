"""docs/recipes.md, run as written where this machine allows: the QEMU ``-blockdev`` JSON and
dotted forms (qemu-img, qemu-io), the libvirt disk XML translated as libvirt does, a FUSE volume
bind-mounted into new mount and PID namespaces in its own cgroup, and the systemd slice's
``ioband cgroup settings`` commands on cgroups of those paths."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import require_real
from tests.control_helpers import backing, control_daemon
from tests.fuse_helpers import mounted
from tests.test_nbd_fairness import BLKIO, in_cgroup

RECIPES = (Path(__file__).resolve().parent.parent / "docs" / "recipes.md").read_text()
SOCKET = "/run/ioband/nbd.sock"
SECTORS = 2048 * 16  # 16 MiB


def tool(name: str) -> str:
    path = shutil.which(name)
    require_real(path is not None, f"{name} is not installed (scripts/install.sh installs it)")
    return path


@pytest.fixture
def nbd_device(tmp_path):
    """A daemon serving ``ioband1``; the recipes' socket path is replaced by its socket's."""
    with control_daemon() as ctl:
        disk = backing(tmp_path, "disk", SECTORS)
        ctl.ok("create", "ioband1", "--table", f"0 {SECTORS} ioband {disk} 1 0 0 user weight 0 :1")
        yield ctl, ctl.socket.replace("control.sock", "nbd.sock")


def test_qemu_blockdev_json_and_dotted(nbd_device):
    ctl, sock = nbd_device
    (text,) = re.findall(r"-blockdev '(\{.*?\})'", RECIPES)
    blockdev = json.loads(text.replace(SOCKET, sock))
    assert blockdev["driver"] == "nbd" and blockdev["export"] == "ioband1"
    del blockdev["node-name"]  # -blockdev's name for the node; qemu-img opens it unnamed
    info = subprocess.run([tool("qemu-img"), "info", "--output=json",
                           "json:" + json.dumps(blockdev)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["virtual-size"] == SECTORS * 512
    (dotted,) = re.findall(r"-blockdev\s+(driver=nbd[^`\s]+)", RECIPES)
    options = ",".join(o for o in dotted.replace(SOCKET, sock).split(",")
                       if not o.startswith("node-name="))  # fmt: skip
    io = subprocess.run([tool("qemu-io"), "--image-opts", options, "-c", "write -P 0x5a 0 64k",
                         "-c", "read -P 0x5a 0 64k"], capture_output=True, text=True,
                        timeout=60)  # fmt: skip
    assert io.returncode == 0 and "Pattern verification failed" not in io.stdout, io.stdout
    (status,) = json.loads(ctl.ok("status", "ioband1", "--json"))
    assert status["groups"][0]["write_sectors"] == 128  # the write went through ioband


def libvirt_to_blockdev(disk: ET.Element) -> dict:
    """What libvirt makes of a ``<disk type='network'>`` with an NBD source over a unix socket
    (qemuBlockStorageSourceGetNBDProps): driver nbd, server {type unix, path}, export."""
    source = disk.find("source")
    host = source.find("host")
    assert disk.get("type") == "network" and source.get("protocol") == "nbd"
    assert host.get("transport") == "unix"
    return {"driver": "nbd", "server": {"type": "unix", "path": host.get("socket")},
            "export": source.get("name")}  # fmt: skip


def test_libvirt_disk_xml(nbd_device):
    _, sock = nbd_device
    (xml,) = re.findall(r"```xml\n(.*?)```", RECIPES, re.S)
    disk = ET.fromstring(xml.replace(SOCKET, sock))
    assert disk.find("target").get("bus") == "virtio"
    assert disk.find("driver").get("type") == "raw"
    blockdev = libvirt_to_blockdev(disk)
    io = subprocess.run([tool("qemu-io"), "-c", "write -P 7 1M 4k", "-c", "read -P 7 1M 4k",
                         "json:" + json.dumps(blockdev)], capture_output=True, text=True,
                        timeout=60)  # fmt: skip
    assert io.returncode == 0 and "Pattern verification failed" not in io.stdout, io.stdout


@pytest.fixture
def tenant_cgroup():
    require_real(os.geteuid() == 0, "needs root (cgroups, namespaces)")
    require_real((BLKIO / "cgroup.procs").exists(), "the cgroup v1 blkio hierarchy is not mounted")
    cg = BLKIO / f"ioband-recipe-{os.getpid()}"
    cg.mkdir()
    try:
        yield cg
    finally:
        cg.rmdir()


def test_a_container_writes_to_its_fuse_volume_charged_to_its_cgroup(tmp_path, tenant_cgroup):
    unshare = tool("unshare")
    cgid = tenant_cgroup.stat().st_ino
    with mounted(tmp_path, policy=f"cgroup weight 0 :100 {cgid}:200") as m:
        root = tmp_path / "container-root"
        (root / "data").mkdir(parents=True)
        # a "container": new mount and PID namespaces, its own cgroup, the volume bound in
        script = (f"mount --bind {m.mnt} {root}/data && "
                  f"dd if=/dev/zero of={root}/data/f bs=64k count=16 conv=fsync status=none && "
                  f"cat /proc/self/mountinfo | grep -c ' {root}/data ' ")  # fmt: skip
        argv = [unshare, "--mount", "--pid", "--fork", "--propagation", "slave", "sh", "-c",
                script]  # fmt: skip
        res = subprocess.run(in_cgroup(tenant_cgroup, argv), capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "1"  # the bind exists inside the namespace only
        assert (m.backing / "f").stat().st_size == 16 * 65536

        def sectors() -> tuple[int, int]:
            dev = m.daemon.daemon.engine.devices[m.name]
            return dev.groups[cgid].sectors[1], dev.head.sectors[1]

        charged, default = m.daemon.call(sectors)
        assert charged == 16 * 65536 // 512 and default == 0


def test_systemd_slice_settings(tmp_path):
    from tests.test_blkio_cgroup import hierarchy

    h = hierarchy()
    commands = re.findall(r"^# (ioband cgroup settings (\S+) ioband1 (\d+))$", RECIPES, re.M)
    assert len(commands) == 2
    slice_dir = h.mount / "tenants.slice"
    require_real(not slice_dir.exists(), f"{slice_dir} exists already (a real slice?)")
    made = [slice_dir]
    try:
        slice_dir.mkdir()
        with control_daemon() as ctl:
            disk = backing(tmp_path, "disk", SECTORS)
            ctl.ok("create", "ioband1", "--table",
                   f"0 {SECTORS} ioband {disk} 1 0 0 cgroup weight 0 :100")  # fmt: skip
            expect = []
            for line, path, weight in commands:
                (h.mount / path.lstrip("/")).mkdir()
                made.append(h.mount / path.lstrip("/"))
                ctl.ok(*line.split()[1:])
                expect.append(f"{(h.mount / path.lstrip('/')).stat().st_ino}:{weight}")
            table = ctl.ok("table", "ioband1")
            assert all(f" {e}" in table for e in expect), table
    finally:
        for d in reversed(made):
            if d.exists():
                d.rmdir()
