"""systemd readiness (``Type=notify``): a real daemon tells a test-side $NOTIFY_SOCKET
``READY=1`` once its sockets listen, ``RELOADING=1`` (with ``MONOTONIC_USEC``) then ``READY=1``
on SIGHUP, ``STOPPING=1`` on SIGTERM; ``notify`` itself with paths and abstract names."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ioband.control import sdnotify
from tests.control_helpers import sock_dir


def receiver(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    return sock


def fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_daemon_readiness_reload_and_stop(tmp_path):
    sockets = sock_dir()
    nbd, control = f"{sockets}/nbd.sock", f"{sockets}/control.sock"
    notify = receiver(f"{sockets}/notify.sock")
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    config = tmp_path / "ioband.toml"
    device = (
        f'[[device]]\nname = "ioband1"\ntable = "0 2048 ioband {disk} 1 0 0 none weight 0 :40"\n'
    )
    config.write_text(f'[daemon]\ncontrol_socket = "{control}"\nstate_file = ""\n'
                      f'[nbd]\nunix_socket = "{nbd}"\n{device}')  # fmt: skip
    env = {**os.environ, "NOTIFY_SOCKET": f"{sockets}/notify.sock"}
    proc = subprocess.Popen([sys.executable, "-m", "ioband", "daemon", "--config", str(config)],
                            env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        ready = fields(notify)
        assert ready["READY"] == "1", ready
        # ready means serving: both sockets are there when READY=1 arrives
        assert Path(nbd).exists() and Path(control).exists()
        assert "1 device(s)" in ready["STATUS"]
        config.write_text(config.read_text().replace(":40", ":30"))
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        reloading = fields(notify)
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"])
        assert int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        again = fields(notify)
        assert again["READY"] == "1" and "1 device(s)" in again["STATUS"]
        table = subprocess.run([sys.executable, "-m", "ioband", "table", "--socket", control],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert table.rstrip().endswith(":30")  # the reload was applied before READY=1
        # a file that is refused: RELOADING=1, then READY=1 saying so
        config.write_text(config.read_text() + "[nonsense]\n")
        proc.send_signal(signal.SIGHUP)
        assert fields(notify)["RELOADING"] == "1"
        refused = fields(notify)
        assert refused["READY"] == "1" and refused["STATUS"].startswith("reload refused")
        proc.send_signal(signal.SIGTERM)
        assert fields(notify)["STOPPING"] == "1"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        notify.close()


def test_notify_to_a_path_and_an_abstract_name(tmp_path, monkeypatch):
    path = str(tmp_path / "n.sock")
    sock = receiver(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.ready("up")
    assert fields(sock) == {"READY": "1", "STATUS": "up"}
    name = f"ioband-test-{os.getpid()}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind("\0" + name)
    abstract.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert sdnotify.stopping()
    assert fields(abstract)["STOPPING"] == "1"
    abstract.close()
    sock.close()


def test_notify_without_systemd_or_to_a_dead_socket(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("x") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.reloading() is False  # logged, not raised: the daemon runs on
    assert "sd_notify" in caplog.text


@pytest.fixture(autouse=True)
def _no_inherited_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
