"""A small NBD client that keeps ``depth`` random reads in flight: the demo's built-in load
generator when fio is not installed. ``python -m ioband.nbd.loadgen SOCKET EXPORT SECONDS``."""

from __future__ import annotations

import random
import socket
import struct
import sys
import time

from ioband.nbd.constants import (
    IHAVEOPT,
    NBDMAGIC,
    OPTION_REPLY_MAGIC,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    ClientFlag,
    Cmd,
    Opt,
    Rep,
)


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def connect(path: str, export: str) -> tuple[socket.socket, int]:
    """Fixed-newstyle handshake with NBD_OPT_GO; returns the socket and the export size."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    magic, opt, _flags = struct.unpack(">QQH", _recv(sock, 18))
    if magic != NBDMAGIC or opt != IHAVEOPT:
        raise ConnectionError("not an NBD server")
    sock.sendall(struct.pack(">I", ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES))
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    sock.sendall(struct.pack(">QII", IHAVEOPT, Opt.GO, len(data)) + data)
    size = None
    while True:
        magic, _opt, rep, length = struct.unpack(">QIII", _recv(sock, 20))
        body = _recv(sock, length)
        if magic != OPTION_REPLY_MAGIC:
            raise ConnectionError("bad option reply")
        if rep == Rep.ACK:
            break
        if rep == Rep.INFO and struct.unpack(">H", body[:2])[0] == 0:
            size = struct.unpack(">Q", body[2:10])[0]
        elif rep & 0x80000000:
            raise ConnectionError(f"export {export!r} refused: {body.decode(errors='replace')}")
    if size is None:
        raise ConnectionError("no export size")
    return sock, size


def run(path: str, export: str, seconds: float, depth: int = 32, block: int = 4096) -> int:
    """Random reads at queue depth ``depth`` for ``seconds``; returns the number completed."""
    sock, size = connect(path, export)
    blocks = max(1, size // block)
    rng = random.Random()
    header = struct.Struct(">IHHQQI")
    reply = struct.Struct(">IIQ")
    done = 0
    cookie = 0

    def send_one() -> None:
        nonlocal cookie
        cookie += 1
        offset = rng.randrange(blocks) * block
        sock.sendall(header.pack(REQUEST_MAGIC, 0, Cmd.READ, cookie, offset, block))

    for _ in range(depth):
        send_one()
    end = time.monotonic() + seconds
    outstanding = depth
    while outstanding:
        magic, error, _ = reply.unpack(_recv(sock, reply.size))
        if magic != SIMPLE_REPLY_MAGIC or error:
            raise ConnectionError(f"bad reply (magic {magic:#x}, error {error})")
        _recv(sock, block)
        done += 1
        outstanding -= 1
        if time.monotonic() < end:
            send_one()
            outstanding += 1
    sock.sendall(header.pack(REQUEST_MAGIC, 0, Cmd.DISC, 0, 0, 0))
    sock.close()
    return done


if __name__ == "__main__":
    print(run(sys.argv[1], sys.argv[2], float(sys.argv[3])))
