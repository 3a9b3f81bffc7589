"""Requests per second through the sans-I/O NBD codec alone (no sockets, no disk).

Each request costs what the server pays the codec for it: ``receive_data`` of the bytes (the
request arrives with others, ``depth`` requests per received chunk, or in 64 KiB "socket reads"
that cut requests anywhere), ``next_event`` until NEED_DATA, and building the reply header
(``read_reply_header`` for READ, ``ok_reply`` for WRITE). 4 KiB requests, simple and
structured replies. CPU time of the process is measured.

Usage: python benchmarks/nbd_codec.py [--requests N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
import time
from pathlib import Path

from ioband.nbd.protocol import (
    NEED_DATA,
    Command,
    ExportChosen,
    ExportInfo,
    ServerConnection,
)

SIZE = 1 << 30
BLOCK = 4096
EXPORT = ExportInfo("bench", SIZE)
_REQ = struct.Struct(">IHHQQI")


def connect(structured: bool) -> ServerConnection:
    conn = ServerConnection({"bench": EXPORT}.get)
    conn.data_to_send()
    name = b"bench"
    go = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, 3)
    hello = struct.pack(">I", 3)
    if structured:
        hello += b"IHAVEOPT" + struct.pack(">II", 8, 0)
    hello += b"IHAVEOPT" + struct.pack(">II", 7, len(go)) + go
    conn.receive_data(hello)
    event = conn.next_event()
    assert isinstance(event, ExportChosen), event
    conn.data_to_send()
    return conn


def stream(kind: int, count: int) -> bytes:
    payload = b"\xab" * BLOCK if kind == 1 else b""
    out = bytearray()
    for i in range(count):
        offset = (i * BLOCK) % SIZE
        out += _REQ.pack(0x25609513, 0, kind, i, offset, BLOCK) + payload
    return bytes(out)


def chunks(data: bytes, kind: int, depth: int | None) -> list[bytes]:
    """``depth`` whole requests per chunk, or (None) 64 KiB pieces cut anywhere."""
    if depth is None:
        return [data[i : i + 65536] for i in range(0, len(data), 65536)]
    size = (28 + (BLOCK if kind == 1 else 0)) * depth
    return [data[i : i + size] for i in range(0, len(data), size)]


def run(kind: int, structured: bool, depth: int | None, requests: int) -> dict:
    pieces = chunks(stream(kind, requests), kind, depth)
    conn = connect(structured)
    receive = conn.receive_data
    next_event = conn.next_event
    header = conn.read_reply_header
    ok = conn.ok_reply
    done = 0
    t0 = time.process_time()
    for piece in pieces:
        receive(piece)
        while True:
            event = next_event()
            if event is NEED_DATA:
                break
            if kind == 0:
                header(event.cookie, event.offset, event.length)
            else:
                ok(event.cookie)
            done += 1
    seconds = time.process_time() - t0
    assert done == requests and isinstance(event, type(NEED_DATA)), done
    assert not isinstance(event, Command)
    return {
        "command": "READ" if kind == 0 else "WRITE",
        "replies": "structured" if structured else "simple",
        "arrival": "64 KiB reads" if depth is None else f"{depth} per chunk",
        "requests": requests,
        "seconds": seconds,
        "requests_per_s": requests / seconds,
        "us_per_request": seconds / requests * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    rows = []
    print(f"NBD codec throughput, 4 KiB requests, Python {platform.python_version()}")
    print(f"{'command':>8} {'replies':>11} {'arrival':>14} {'requests/s':>12} {'µs/request':>11}")
    for kind in (0, 1):
        for structured in (False, True):
            for depth in (1, 32, None):
                r = run(kind, structured, depth, args.requests)
                rows.append(r)
                print(
                    f"{r['command']:>8} {r['replies']:>11} {r['arrival']:>14}"
                    f" {r['requests_per_s']:>12,.0f} {r['us_per_request']:>11.2f}"
                )
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine()}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
