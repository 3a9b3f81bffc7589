"""A directory device through the control plane: ``ioband create --mount``, ``ls``, ``remove``
(drains and unmounts), the state file across a restart, and refusals that leave nothing behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ioband.control.config import load_config
from ioband.control.embedded import EmbeddedDaemon
from tests.fuse_helpers import fuse_prerequisites, mounted, unmount


def is_mount(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0


def ioband(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ioband", *args], capture_output=True, text=True,
                          env={**os.environ, "IOBAND_SOCKET": sock}, timeout=60)  # fmt: skip


@pytest.fixture
def daemon(tmp_path: Path):
    fuse_prerequisites()
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "mnt").mkdir()
    config = load_config(
        f'[daemon]\ncontrol_socket = "{run}/control.sock"\nstate_file = "{run}/state.json"\n'
        f'[nbd]\nunix_socket = "{run}/nbd.sock"\n'
    )
    d = EmbeddedDaemon(config)
    d.start()
    try:
        yield d, str(run / "control.sock"), config
    finally:
        d.stop()
        unmount(tmp_path / "mnt")


def test_create_mount_ls_remove(daemon, tmp_path):
    _, sock, _ = daemon
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    (data / "hello").write_text("hi\n")
    table = f"0 0 ioband {data} 1 0 0 uid weight 0 :100"
    r = ioband(sock, "create", "files1", "--table", table, "--mount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert is_mount(mnt)
    assert (mnt / "hello").read_text() == "hi\n"
    r = ioband(sock, "ls")
    assert r.stdout.strip() == f"files1\t(fuse mount {mnt})"
    r = ioband(sock, "table", "files1")
    assert r.stdout.strip() == f"files1: 0 0 ioband {data} 1 4 0 uid weight 768 :100"
    r = ioband(sock, "status", "files1")
    reads = int(r.stdout.split()[6])
    assert reads >= 1  # the read above went through the core
    r = ioband(sock, "remove", "files1")
    assert r.returncode == 0, r.stderr
    for _ in range(100):
        if not is_mount(mnt):
            break
        subprocess.run(["sleep", "0.05"])
    assert not is_mount(mnt)
    assert (data / "hello").read_text() == "hi\n"


def test_refusals_leave_nothing_behind(daemon, tmp_path):
    _, sock, _ = daemon
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    table = f"0 0 ioband {data} 1 0 0 uid weight 0 :100"
    # a directory without a mount point
    r = ioband(sock, "create", "files1", "--table", table)
    assert r.returncode != 0 and "mountpoint" in r.stderr
    # a mount point that is not a directory
    r = ioband(sock, "create", "files1", "--table", table, "--mount", str(data / "nope"))
    assert r.returncode != 0 and "not a directory" in r.stderr
    # a file device with a mount point
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    r = ioband(sock, "create", "files1", "--table", f"0 2048 ioband {img} 1 0 0 none weight 0 :1",
               "--mount", str(mnt))  # fmt: skip
    assert r.returncode != 0 and "directory" in r.stderr
    assert ioband(sock, "ls").stdout.strip() == "No devices found"
    assert not is_mount(mnt)
    # the name is free again: a correct create works
    r = ioband(sock, "create", "files1", "--table", table, "--mount", str(mnt))
    assert r.returncode == 0, r.stderr
    # the same mount point twice is refused
    r = ioband(sock, "create", "files2", "--table", table, "--mount", str(mnt))
    assert r.returncode != 0 and ("already" in r.stderr), r.stderr


def test_state_restores_the_mount(daemon, tmp_path):
    d, sock, config = daemon
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    table = f"0 0 ioband {data} 1 0 0 uid weight 0 :100"
    assert ioband(sock, "create", "files1", "--table", table, "--mount", str(mnt)).returncode == 0
    assert ioband(sock, "message", "files1", "0", "attach", "1000").returncode == 0
    assert ioband(sock, "message", "files1", "0", "weight", "1000:40").returncode == 0
    before = ioband(sock, "table").stdout
    d.stop()
    assert not is_mount(mnt)  # shutdown unmounts
    again = EmbeddedDaemon(config)
    again.start()
    try:
        assert is_mount(mnt)
        assert ioband(sock, "table").stdout == before
    finally:
        again.stop()
    assert not is_mount(mnt)


def test_stale_mount_is_cleared_at_start(tmp_path):
    """A worker killed with SIGKILL (with its daemon) leaves a dead mount: the next start
    detaches it and mounts again."""
    fuse_prerequisites()
    data, mnt, run = tmp_path / "data", tmp_path / "mnt", tmp_path / "run"
    for p in (data, mnt, run):
        p.mkdir()
    (data / "f").write_text("x")
    config_text = (
        f'[daemon]\ncontrol_socket = "{run}/control.sock"\nstate_file = ""\n'
        f'[nbd]\nunix_socket = "{run}/nbd.sock"\n[[device]]\nname = "files1"\n'
        f'table = "0 0 ioband {data} 1 0 0 uid weight 0 :100"\nmountpoint = "{mnt}"\n'
    )
    cfg = tmp_path / "ioband.toml"
    cfg.write_text(config_text)
    proc = subprocess.Popen([sys.executable, "-m", "ioband", "daemon", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for _ in range(200):
            if is_mount(mnt):
                break
            subprocess.run(["sleep", "0.05"])
        assert is_mount(mnt)
        pattern = f"ioband.fuse.worker --name files1 --backing {data}"
        workers = subprocess.run(["pgrep", "-f", pattern], capture_output=True,
                                 text=True).stdout.split()  # fmt: skip
        assert workers
        for pid in workers:
            os.kill(int(pid), 9)
        proc.kill()
        proc.wait()
        with pytest.raises(OSError) as err:
            os.stat(mnt / "f")
        assert err.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)  # the dead mount
        again = EmbeddedDaemon(load_config(config_text))
        again.start()
        try:
            assert (mnt / "f").read_text() == "x"
        finally:
            again.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
        unmount(mnt)


def wait_until(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_a_crashed_worker_is_replaced(tmp_path):
    """SIGKILL to the FUSE worker: the daemon detaches the dead mount, starts a new worker, and
    the mount serves again; the dead worker's requests hold no slot of io_limit."""
    with mounted(tmp_path) as m:
        (m.mnt / "f").write_text("before")
        mount = m.daemon.call(lambda: m.daemon.daemon.mounts[m.name])
        old = mount.proc.pid
        os.kill(old, signal.SIGKILL)

        def serving() -> bool:
            try:
                return (m.mnt / "f").read_text() == "before"
            except OSError:
                return False

        assert wait_until(lambda: m.daemon.call(lambda: mount.proc.pid) != old)
        assert wait_until(serving)
        (m.mnt / "g").write_text("after")
        assert (m.backing / "g").read_text() == "after"
        assert wait_until(lambda: m.daemon.call(lambda: mount.device.inflight) == 0)


def test_a_killed_daemon_leaves_no_mount(tmp_path):
    """SIGKILL to the daemon alone: its worker notices, unmounts and exits; the next start
    mounts again."""
    fuse_prerequisites()
    data, mnt, run = tmp_path / "data", tmp_path / "mnt", tmp_path / "run"
    for p in (data, mnt, run):
        p.mkdir()
    cfg = tmp_path / "ioband.toml"
    cfg.write_text(
        f'[daemon]\ncontrol_socket = ""\nstate_file = ""\n[nbd]\nunix_socket = "{run}/nbd.sock"\n'
        f'[[device]]\nname = "files1"\ntable = "0 0 ioband {data} 1 0 0 uid weight 0 :100"\n'
        f'mountpoint = "{mnt}"\n'
    )
    argv = [sys.executable, "-m", "ioband", "daemon", "--config", str(cfg)]
    try:
        for _ in range(2):
            proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
            assert wait_until(lambda: is_mount(mnt), 20)
            (mnt / "x").write_text("x")
            proc.kill()
            proc.wait()
            assert wait_until(lambda: not is_mount(mnt)), "the worker left its mount behind"
    finally:
        unmount(mnt)


def test_reload_recreates_a_changed_mount(tmp_path):
    """A reload that changes a mount's weight applies it in place (the same worker serves on);
    one that changes ``write_behind`` re-creates the mount: the old one goes (drained,
    unmounted), the new one comes at the same mount point once the old worker has let go."""
    fuse_prerequisites()
    data, mnt, run = tmp_path / "data", tmp_path / "mnt", tmp_path / "run"
    for p in (data, mnt, run):
        p.mkdir()
    (data / "f").write_text("x")

    def config(weight: int, write_behind: bool = True):
        return load_config(
            f'[daemon]\ncontrol_socket = ""\nstate_file = ""\n[nbd]\nunix_socket = "{run}/s"\n'
            f'[[device]]\nname = "files1"\nmountpoint = "{mnt}"\n'
            f"write_behind = {str(write_behind).lower()}\n"
            f'table = "0 0 ioband {data} 1 0 0 uid weight 0 :{weight}"\n'
        )

    d = EmbeddedDaemon(config(100))
    d.start()
    try:
        assert (mnt / "f").read_text() == "x"
        worker = d.daemon.mounts["files1"]
        assert d.call(lambda: d.daemon.reload(config(50)))

        def table() -> str:
            engine = d.daemon.engine
            return engine.table("files1") if "files1" in engine.devices else ""

        assert d.call(table).endswith(":50")
        assert d.daemon.mounts["files1"] is worker  # in place: not re-created
        outcome = d.call(lambda: d.daemon.reload(config(60, write_behind=False)))
        assert list(outcome.plan.recreate) == ["files1"]
        assert "write_behind changed" in outcome.plan.recreate["files1"][0]
        assert wait_until(lambda: d.call(table).endswith(":60"))
        assert wait_until(lambda: d.daemon.mounts.get("files1") not in (None, worker))
        assert is_mount(mnt)
        assert (mnt / "f").read_text() == "x"
    finally:
        d.stop()
        unmount(mnt)
