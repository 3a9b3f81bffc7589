"""systemd's readiness protocol (``sd_notify``) for ``Type=notify`` units, without a library.

systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace) and reads
newline-separated ``KEY=VALUE`` datagrams from it: ``READY=1`` once the daemon serves,
``RELOADING=1`` with ``MONOTONIC_USEC`` when it starts re-reading its configuration (then
``READY=1`` again), ``STOPPING=1`` when it begins to stop, ``STATUS=`` free text for
``systemctl status``. Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("ioband.daemon")
ENV = "NOTIFY_SOCKET"


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ...) as one datagram; False when there is no socket to
    send to or the send failed (logged: readiness is advisory, the daemon runs on)."""
    path = os.environ.get(ENV)
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as err:
        log.warning("sd_notify to %s failed: %s", path, err)
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def reloading() -> bool:
    """``RELOADING=1`` with the time of the request on CLOCK_MONOTONIC (systemd 253 matches it
    with its own reload request; older ones ignore it)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")


def stopping() -> bool:
    return notify("STOPPING=1", "STATUS=draining: held requests released, in flight completing")
