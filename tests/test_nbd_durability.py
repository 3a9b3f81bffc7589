"""No acknowledged write is lost when a client or the server dies mid-stream.

A raw NBD client writes numbered 4 KiB blocks with several requests in flight and records each
write the server acknowledged. The daemon (a real process) is then killed with SIGKILL in the
middle of the stream, or the client is; after a restart every acknowledged block must read back
intact. (Acknowledged writes are in the kernel's page cache when acknowledged; FUA and FLUSH
make them durable on the device, which the qemu-io test exercises.)
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ioband.nbd.constants import REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, Cmd
from ioband.nbd.loadgen import connect

BLOCK = 4096
BLOCKS = 8192  # 32 MiB export
HEADER = struct.Struct(">IHHQQI")
REPLY = struct.Struct(">IIQ")


def pattern(n: int) -> bytes:
    return struct.pack(">Q", n) * (BLOCK // 8)


def start_daemon(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    image = tmp_path / "disk.img"
    if not image.exists():
        with open(image, "wb") as f:
            f.truncate(BLOCK * BLOCKS)
    sock = tmp_path / "nbd.sock"
    config = tmp_path / "ioband.toml"
    config.write_text(
        '[daemon]\ncontrol_socket = ""\nstate_file = ""\n'  # no control plane
        f'[nbd]\nunix_socket = "{sock}"\n[[device]]\nname = "d"\n'
        f'table = "0 {BLOCK * BLOCKS // 512} ioband {image} 1 0 0 none weight 0 :100"\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "ioband", "daemon", "--config", str(config)],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(200):
        try:
            connect(str(sock), "d")[0].close()
            return proc, str(sock)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("daemon did not start")


def writer(sock_path: str, acked: list[int], stop: threading.Event, depth: int = 8) -> None:
    """Write blocks 0, 1, 2, ... with ``depth`` in flight; append each acknowledged one."""
    try:
        sock, _ = connect(sock_path, "d")
        sent = 0
        outstanding = 0
        while not stop.is_set() and sent < BLOCKS:
            while outstanding < depth and sent < BLOCKS:
                sock.sendall(HEADER.pack(REQUEST_MAGIC, 0, Cmd.WRITE, sent, sent * BLOCK, BLOCK)
                             + pattern(sent))  # fmt: skip
                sent += 1
                outstanding += 1
            reply = b""
            while len(reply) < REPLY.size:
                chunk = sock.recv(REPLY.size - len(reply))
                if not chunk:
                    return
                reply += chunk
            magic, error, cookie = REPLY.unpack(reply)
            assert magic == SIMPLE_REPLY_MAGIC and error == 0
            acked.append(cookie)
            outstanding -= 1
    except OSError:
        return  # the server went away


def read_block(sock: socket.socket, n: int) -> bytes:
    sock.sendall(HEADER.pack(REQUEST_MAGIC, 0, Cmd.READ, n, n * BLOCK, BLOCK))
    data = b""
    while len(data) < REPLY.size + BLOCK:
        data += sock.recv(REPLY.size + BLOCK - len(data))
    return data[REPLY.size :]


@pytest.mark.parametrize("victim", ["server", "client"])
def test_no_acknowledged_write_is_lost(tmp_path, victim):
    daemon, sock_path = start_daemon(tmp_path)
    acked: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(target=writer, args=(sock_path, acked, stop))
    try:
        thread.start()
        while len(acked) < 500:
            time.sleep(0.01)
        if victim == "server":
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait()
        else:
            stop.set()  # the client stops with requests in flight and never reads the replies
        thread.join(timeout=30)
        if victim == "server":
            daemon, sock_path = start_daemon(tmp_path)
        sock, _ = connect(sock_path, "d")
        for n in acked:
            assert read_block(sock, n) == pattern(n), f"acknowledged block {n} lost"
        sock.close()
    finally:
        stop.set()
        daemon.terminate()
        daemon.wait(timeout=30)


def test_sigterm_drains_then_exits(tmp_path):
    """SIGTERM: the daemon stops listening, finishes what was sent, answers it, exits 0."""
    daemon, sock_path = start_daemon(tmp_path)
    sock, _ = connect(sock_path, "d")
    for n in range(64):  # a burst in flight when the signal comes
        sock.sendall(HEADER.pack(REQUEST_MAGIC, 0, Cmd.WRITE, n, n * BLOCK, BLOCK) + pattern(n))
    daemon.send_signal(signal.SIGTERM)
    replies = set()
    data = b""
    while len(replies) < 64:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        while len(data) >= REPLY.size:
            magic, error, cookie = REPLY.unpack(data[: REPLY.size])
            data = data[REPLY.size :]
            assert magic == SIMPLE_REPLY_MAGIC and error == 0
            replies.add(cookie)
    assert replies == set(range(64))
    assert daemon.wait(timeout=30) == 0
    assert not os.path.exists(sock_path)
