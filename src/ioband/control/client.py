"""The CLI side of the control socket: one request, one reply."""

from __future__ import annotations

import os
import socket
from typing import Any

from ioband.control import protocol
from ioband.control.config import DEFAULT_CONTROL_SOCKET
from ioband.errors import IobandError

SOCKET_ENV = "IOBAND_SOCKET"


class Unreachable(Exception):
    """The daemon could not be reached (not running, wrong path, ...)."""


def socket_path(given: str | None = None) -> str:
    """``--socket`` if given, else ``$IOBAND_SOCKET``, else the default path."""
    return given or os.environ.get(SOCKET_ENV) or DEFAULT_CONTROL_SOCKET


def call(path: str, op: str, timeout: float = 30.0, **fields: Any) -> Any:
    """Send one request; its result, or the IobandError the daemon answered with."""
    request = {"op": op, **{k: v for k, v in fields.items() if v is not None}}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as err:
            raise Unreachable(
                f"cannot reach the ioband daemon at {path}: {err.strerror or err}"
                f" (is `ioband daemon` running? set --socket or ${SOCKET_ENV})"
            ) from None
        try:
            sock.sendall(protocol.encode(request))
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    break
        except OSError as err:
            raise Unreachable(f"lost the connection to the daemon at {path}: {err}") from None
    finally:
        sock.close()
    reply = b"".join(chunks)
    if not reply:
        raise Unreachable(f"the daemon at {path} closed the connection without a reply")
    return protocol.decode_reply(reply)


__all__ = ["IobandError", "Unreachable", "call", "socket_path"]
